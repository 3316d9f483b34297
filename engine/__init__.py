"""keystroke.engine: a complete code-completion library, no LSP inside.

    from keystroke.engine import Engine, CompletionRequest
    engine = Engine.load()                      # the default model, offline
    print(engine.complete(CompletionRequest(doc_id="x.py", prefix="def add(a, b):\\n")).text)
"""
import os

# OpenMP threads that spin while waiting collapse when the machine is busy
# (an editor, a build, tests): measured on 2 cores under load, Gemma decode
# fell from 54 to 1.3 tok/s with spinning threads. Passive waiting costs
# little on an idle machine. Only effective before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
