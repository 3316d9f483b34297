"""keystroke.engine: a complete code-completion library, no LSP inside.

    from keystroke.engine import Engine, CompletionRequest
    engine = Engine.load()                      # the default model, offline
    print(engine.complete(CompletionRequest(doc_id="x.py", prefix="def add(a, b):\\n")).text)
"""
from .api import (Backend, Candidate, CompletionRequest, CompletionResult, SamplingParams, StopPolicy,
                  Timings)
from .errors import KeystrokeError, ModelError, PositionError


def __getattr__(name: str):
    # Engine pulls in torch and the loaders: import it only when asked for.
    if name == "Engine":
        from .engine import Engine
        return Engine
    raise AttributeError(name)


__all__ = ["Backend", "Candidate", "CompletionRequest", "CompletionResult", "Engine", "KeystrokeError",
           "ModelError", "PositionError", "SamplingParams", "StopPolicy", "Timings"]
