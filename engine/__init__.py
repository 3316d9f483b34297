"""keystroke.engine: a complete code-completion library, no LSP inside.

    from keystroke.engine import Engine, CompletionRequest
    engine = Engine.load()                      # the default model, offline
    print(engine.complete(CompletionRequest(doc_id="x.py", prefix="def add(a, b):\\n")).text)

What a caller needs is here (and in `api` and `errors`): `Engine` (loaded on
first use, it imports torch), `EngineSettings` and `make_backend(settings)` (local or
remote), `registry` (named models: `list_models`, `pull`, `resolve`),
`DEFAULT_MODEL` and `cache_root()`. The parts: `loading/` (model files),
`cache/` (KV and response caches), `remote/` (a server over HTTP); `model`,
`generate`, `sampling`, `stops`, `healing`, `fim`, `tokenizer` and `threads` at the top.
"""
from .threads import configure_openmp

configure_openmp()   # how torch's threads wait: before torch is first imported (see threads.py)

from .api import (Backend, Candidate, CompletionRequest, CompletionResult, SamplingParams, StopPolicy,
                  Timings)
from .backends import EngineSettings, make_backend
from .errors import KeystrokeError, ModelError, PositionError
from .loading import registry
from .loading.registry import DEFAULT_MODEL
from .paths import cache_root


def __getattr__(name: str):
    # Engine pulls in torch and the loaders: import it only when asked for.
    if name == "Engine":
        from .engine import Engine
        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_MODEL", "Backend", "EngineSettings", "Candidate", "CompletionRequest", "CompletionResult", "Engine",
           "KeystrokeError", "ModelError", "PositionError", "SamplingParams", "StopPolicy", "Timings", "cache_root",
           "make_backend", "registry"]
