"""Choose the engine from settings: the local torch `Engine`, or a remote server.

`make_backend(settings)` takes an `EngineSettings` (what the CLI and the
server build) or the editor's settings object (camelCase, as LSP
initializationOptions carry it: `model`, `quant`, `threads`, `device`,
`cacheDir`, `cacheSizeMb`). The engine choice lives under `engine` (nested,
or as dotted keys such as "engine.backend"):

    "engine": {"backend": "remote", "url": "https://gpu.example:8000/v1",
               "model": "Qwen/Qwen2.5-Coder-1.5B", "apiKeyEnv": "KEYSTROKE_REMOTE_KEY",
               "fallback": "local", "timeoutMs": 10000, "verifyTls": true, "fim": "auto"}

Without `engine.backend: "remote"` nothing is ever sent over the network.
The API key is read from the environment variable named by `apiKeyEnv` or
the file named by `apiKeyFile`, never from the settings (editor settings
files are plain text, often shared or synced).
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .api import Backend
from .errors import KeystrokeError

log = logging.getLogger("keystroke.engine")

ENGINE_KEYS = ("backend", "url", "model", "apiKeyEnv", "apiKeyFile", "fallback", "timeoutMs", "verifyTls",
               "fim", "cachePrompt", "retries", "failureThreshold", "cooldownMs")
SETTINGS_HELP = "see docs/remote.md"


@dataclass(frozen=True)
class EngineSettings:
    """Everything that decides which backend runs and how: one type for the CLI, the server and library users.

    `memory_budget_mb` is the KV-cache's memory budget (the editors'
    `cacheSizeMb`); entries evicted past it spill to disk, whose own budget is
    `disk_budget_mb`. `engine` is the editor's `engine` section (camelCase
    keys, see docs/remote.md): empty or `backend: "local"` for the local model.
    """

    model: str | None = None            # None: the default model
    quant: str = "auto"
    threads: int | None = None
    device: str = "cpu"                 # cpu | cuda | auto
    cache_dir: Path | None = None       # None: <cache root>/keystroke
    memory_budget_mb: int = 1024
    disk_budget_mb: int = 4096
    persist: bool = True                # keep KV entries on disk across restarts
    engine: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_editor(cls, settings: Mapping[str, Any] | None) -> "EngineSettings":
        """From an editor-style settings object: `model`, `quant`, `threads`, `device`, `cacheDir`,
        `cacheSizeMb`, and `engine` (nested, or as "engine.<key>" entries)."""
        settings = dict(settings or {})
        nested = settings.get("engine")
        if nested is not None and not isinstance(nested, dict):
            raise KeystrokeError(f"setting 'engine' must be an object, not {type(nested).__name__}", SETTINGS_HELP)
        eng = dict(nested or {})
        for key, value in settings.items():
            if isinstance(key, str) and key.startswith("engine."):
                eng[key[len("engine."):]] = value
        kwargs: dict[str, Any] = {k: settings[k] for k in ("model", "quant", "threads", "device")
                                  if settings.get(k) is not None}
        if settings.get("cacheDir"):
            kwargs["cache_dir"] = Path(str(settings["cacheDir"])).expanduser()
        if settings.get("cacheSizeMb") is not None:
            kwargs["memory_budget_mb"] = int(settings["cacheSizeMb"])
        return cls(engine=eng, **kwargs)


def make_backend(settings: EngineSettings | Mapping[str, Any] | None = None, *,
                 local_loader: Callable[[EngineSettings], Backend] | None = None) -> Backend:
    """The backend the settings ask for (raises KeystrokeError, with a hint, on a bad setting).

    `settings` is an `EngineSettings` or an editor-style object (see
    `EngineSettings.from_editor`). `local_loader` builds the local engine
    (default: `load_local`); it is also the remote backend's lazy fallback.
    """
    if not isinstance(settings, EngineSettings):
        settings = EngineSettings.from_editor(settings)
    eng = dict(settings.engine)
    loader = local_loader or load_local
    backend = eng.get("backend", "local")
    if backend == "local":
        return loader(settings)
    if backend != "remote":
        raise KeystrokeError(f"engine.backend must be \"local\" or \"remote\", not {backend!r}", SETTINGS_HELP)
    return make_remote(eng, fallback=lambda: loader(settings))


def make_remote(eng: dict, fallback: Callable[[], Backend] | None = None) -> Backend:
    from .remote import FIM_CHOICES, RemoteBackend, RemoteSettings

    if "apiKey" in eng:
        raise KeystrokeError("engine.apiKey is not read from settings (they are plain text files)",
                             "put the key in an environment variable named by engine.apiKeyEnv, "
                             "or in a file named by engine.apiKeyFile")
    for key in eng:
        if key not in ENGINE_KEYS:
            log.warning("unknown setting engine.%s ignored", key)
    url = eng.get("url")
    if not isinstance(url, str) or not url.strip():
        raise KeystrokeError("engine.backend is \"remote\" but engine.url is not set",
                             "set engine.url to the server, e.g. http://gpu-box:8000/v1")
    fallback_mode = eng.get("fallback", "none")
    if fallback_mode not in ("local", "none"):
        raise KeystrokeError(f"engine.fallback must be \"local\" or \"none\", not {fallback_mode!r}", SETTINGS_HELP)
    fim_choice = eng.get("fim", "auto")
    if fim_choice not in FIM_CHOICES:
        raise KeystrokeError(f"engine.fim must be one of {', '.join(FIM_CHOICES)}, not {fim_choice!r}",
                             SETTINGS_HELP)
    model = eng.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise KeystrokeError("engine.model must be the served model's name (a string)", SETTINGS_HELP)
    kwargs: dict[str, Any] = dict(
        url=url.strip(), model=model.strip() if model else None, api_key=read_api_key(eng),
        timeout_ms=_number(eng, "timeoutMs", 10_000, 100, 600_000),
        verify_tls=_flag(eng, "verifyTls", True), fim=fim_choice,
        cache_prompt=_flag(eng, "cachePrompt", True),
        retries=int(_number(eng, "retries", 2, 0, 10)),
        failure_threshold=int(_number(eng, "failureThreshold", 3, 1, 100)),
        cooldown_ms=_number(eng, "cooldownMs", 5_000, 0, 3_600_000))
    try:
        return RemoteBackend(RemoteSettings(**kwargs), fallback=fallback if fallback_mode == "local" else None)
    except ValueError as err:
        raise KeystrokeError(str(err), SETTINGS_HELP) from None


def read_api_key(eng: dict) -> str | None:
    """The key from $<apiKeyEnv> or the file <apiKeyFile>; None when neither is set."""
    env_name, file_name = eng.get("apiKeyEnv"), eng.get("apiKeyFile")
    if env_name is not None and file_name is not None:
        raise KeystrokeError("set engine.apiKeyEnv or engine.apiKeyFile, not both", SETTINGS_HELP)
    if env_name is not None:
        if not isinstance(env_name, str) or not env_name:
            raise KeystrokeError("engine.apiKeyEnv must name an environment variable", SETTINGS_HELP)
        key = os.environ.get(env_name, "").strip()
        if not key:
            raise KeystrokeError(f"the environment variable {env_name} (engine.apiKeyEnv) is not set or empty",
                                 "export it in the environment the editor starts keystroke from")
        return key
    if file_name is not None:
        if not isinstance(file_name, str) or not file_name:
            raise KeystrokeError("engine.apiKeyFile must be a file path", SETTINGS_HELP)
        path = Path(file_name).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as err:
            raise KeystrokeError(f"cannot read the API key file {path} (engine.apiKeyFile): "
                                 f"{getattr(err, 'strerror', None) or err}") from None
        if not key:
            raise KeystrokeError(f"the API key file {path} (engine.apiKeyFile) is empty")
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the API key file %s is readable by other users: chmod 600 it", path)
        return key
    return None


def load_local(settings: EngineSettings) -> Backend:
    """The local torch engine for the settings' model, weights, threads, device and caches."""
    from .engine import Engine

    device = settings.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Engine.load(settings.model, quant=settings.quant, threads=settings.threads, device=device,
                       cache_dir=settings.cache_dir, memory_budget_mb=settings.memory_budget_mb,
                       disk_budget_mb=settings.disk_budget_mb, persist=settings.persist)


def _number(eng: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = eng.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise KeystrokeError(f"engine.{key} must be a number from {lo:g} to {hi:g}, not {value!r}", SETTINGS_HELP)
    return float(value)


def _flag(eng: dict, key: str, default: bool) -> bool:
    value = eng.get(key, default)
    if not isinstance(value, bool):
        raise KeystrokeError(f"engine.{key} must be true or false, not {value!r}", SETTINGS_HELP)
    return value
