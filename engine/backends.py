"""Choose the engine from settings: the local torch `Engine`, or a remote server.

`make_backend(settings)` takes the editor's settings object (camelCase, as
LSP initializationOptions carry it). Local keys: `model`, `quant`, `threads`,
`device`, `cacheDir`, `cacheSizeMb`. The engine choice lives under `engine`
(nested, or as dotted keys such as "engine.backend"):

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
from pathlib import Path
from typing import Any, Callable

from .api import Backend
from .errors import KeystrokeError

log = logging.getLogger("keystroke.engine")

ENGINE_KEYS = ("backend", "url", "model", "apiKeyEnv", "apiKeyFile", "fallback", "timeoutMs", "verifyTls",
               "fim", "cachePrompt", "retries", "failureThreshold", "cooldownMs")
SETTINGS_HELP = "see docs/remote.md"


def engine_settings(settings: dict) -> dict:
    """The `engine` section, from a nested object and/or "engine.<key>" entries."""
    nested = settings.get("engine")
    if nested is not None and not isinstance(nested, dict):
        raise KeystrokeError(f"setting 'engine' must be an object, not {type(nested).__name__}", SETTINGS_HELP)
    out = dict(nested or {})
    for key, value in settings.items():
        if isinstance(key, str) and key.startswith("engine."):
            out[key[len("engine."):]] = value
    return out


def make_backend(settings: dict | None = None, *,
                 local_loader: Callable[[dict], Backend] | None = None) -> Backend:
    """The backend the settings ask for (raises KeystrokeError, with a hint, on a bad setting).

    `local_loader` builds the local engine from the settings (default:
    `load_local`); it is also the remote backend's lazy fallback.
    """
    settings = dict(settings or {})
    eng = engine_settings(settings)
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


def load_local(settings: dict) -> Backend:
    """The local torch engine for the settings' model, quant, threads, device and cache keys."""
    from .engine import Engine

    kwargs: dict[str, Any] = {}
    for key, name in (("quant", "quant"), ("threads", "threads"), ("device", "device")):
        if settings.get(key) is not None:
            kwargs[name] = settings[key]
    cache_dir = settings.get("cacheDir", settings.get("cache_dir"))
    if cache_dir:
        kwargs["cache_dir"] = Path(str(cache_dir)).expanduser()
    size = settings.get("cacheSizeMb", settings.get("cache_size_mb"))
    if size is not None:
        kwargs["memory_budget_mb"] = int(size)
    return Engine.load(settings.get("model"), **kwargs)


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
