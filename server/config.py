"""Server configuration: from `initializationOptions` and
`workspace/didChangeConfiguration`.

`parse_config` is pure: it never raises, whatever the editor sends. A key
with an invalid value falls back to its default and yields a warning naming
the key; an unknown key yields a warning and is ignored; a key that is absent
keeps its previous value.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

from keystroke.engine import DEFAULT_MODEL, EngineSettings


@dataclass(frozen=True)
class Config:
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    threads: int | None = None          # None: let the engine choose
    max_tokens: int = 128               # line mode ends at the line anyway: this bounds blocks
    temperature: float = 0.0            # 0: greedy (Automatic triggers)
    candidates: int = 3                 # items on an Invoked trigger
    debounce_ms: int | None = None      # a fixed wait before an Automatic request runs; None: adaptive
    debounce_min_ms: int = 20           # the adaptive wait's bounds (server/debounce.py)
    debounce_max_ms: int = 300
    speculate: bool = True              # compute the suggestion after an accept ahead (server/speculation.py)
    reuse_in_flight: bool = True        # a keystroke typed into the running generation waits for it (server/inflight.py)
    context_budget: int = 1024          # prompt tokens
    enabled_languages: tuple[str, ...] | None = None   # None: every language
    cache_dir: str | None = None        # None: the engine's default
    cache_size_mb: int = 1024          # the KV-cache's memory budget (it spills to disk past it)
    max_document_bytes: int = 1_000_000
    completion_items: str = "auto"      # "auto" | "on" | "off"
    enabled: bool = True
    engine: dict | None = None          # the `engine` section (remote backend), checked when it loads

    def engine_settings(self, *, quant: str = "auto") -> EngineSettings:
        """What the engine is built from: the one settings type the CLI uses too."""
        return EngineSettings(model=self.model, quant=quant, threads=self.threads, device=self.device,
                              cache_dir=Path(self.cache_dir).expanduser() if self.cache_dir else None,
                              memory_budget_mb=self.cache_size_mb, engine=copy.deepcopy(self.engine or {}))

    def language_enabled(self, language_id: str | None) -> bool:
        if self.enabled_languages is None:
            return True
        return (language_id or "") in self.enabled_languages


# What the editor calls each field (camelCase, as LSP settings usually are).
CLIENT_KEYS: dict[str, str] = {
    "model": "model",
    "device": "device",
    "threads": "threads",
    "maxTokens": "max_tokens",
    "temperature": "temperature",
    "candidates": "candidates",
    "debounceMs": "debounce_ms",
    "debounceMinMs": "debounce_min_ms",
    "debounceMaxMs": "debounce_max_ms",
    "speculate": "speculate",
    "reuseInFlight": "reuse_in_flight",
    "contextBudget": "context_budget",
    "enabledLanguages": "enabled_languages",
    "cacheDir": "cache_dir",
    "cacheSizeMb": "cache_size_mb",
    "maxDocumentBytes": "max_document_bytes",
    "completionItems": "completion_items",
    "enabled": "enabled",
    "engine": "engine",
}

# Keys the server consumes elsewhere (the TCP token) or that editors send
# about the section itself; they are not configuration and draw no warning.
IGNORED_KEYS = frozenset({"token"})

DEVICES = ("cpu", "cuda", "auto")
COMPLETION_ITEMS = ("auto", "on", "off")


class _Invalid(Exception):
    """A value of the wrong type or out of range; the message says what is expected."""


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise _Invalid(f"expected an integer from {lo} to {hi}")
        v = int(v)
        if not lo <= v <= hi:
            raise _Invalid(f"expected an integer from {lo} to {hi}")
        return v
    return check


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise _Invalid(f"expected a number from {lo} to {hi}")
        return float(v)
    return check


def _nonempty_str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or "\x00" in v:
        raise _Invalid("expected a non-empty string")
    return v.strip()


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in options:
            raise _Invalid("expected one of " + ", ".join(repr(o) for o in options))
        return v.lower()
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid("expected true or false")
    return v


def _engine_section(v: Any) -> dict | None:
    """The remote-engine settings (checked in full by keystroke.engine.backends when they load)."""
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _Invalid('expected an object such as {"backend": "remote", "url": "http://host:8000/v1"}')
    return copy.deepcopy(v)


def _languages(v: Any) -> tuple[str, ...] | None:
    if v is None or v == "*":
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise _Invalid('expected a list of language ids, or "*" for all')
    return None if "*" in v else tuple(v)


CHECKS: dict[str, Callable[[Any], Any]] = {
    "model": _nonempty_str,
    "device": _choice(DEVICES),
    "threads": _optional(_int(1, 256)),
    "max_tokens": _int(1, 2048),
    "temperature": _float(0.0, 2.0),
    "candidates": _int(1, 10),
    "debounce_ms": _optional(_int(0, 5000)),
    "debounce_min_ms": _int(0, 5000),
    "debounce_max_ms": _int(0, 5000),
    "speculate": _bool,
    "reuse_in_flight": _bool,
    "context_budget": _int(64, 131072),
    "enabled_languages": _languages,
    "cache_dir": _optional(_nonempty_str),
    "cache_size_mb": _int(0, 1_000_000),
    "max_document_bytes": _int(1, 1 << 31),
    "completion_items": _choice(COMPLETION_ITEMS),
    "enabled": _bool,
    "engine": _engine_section,
}

assert set(CHECKS) == {f.name for f in fields(Config)} == set(CLIENT_KEYS.values())

_DEFAULTS = Config()


def unwrap_section(raw: object) -> object:
    """Editors send either the settings themselves or `{"keystroke": {...}}`.

    An empty list counts as an empty object: Lua's empty table (Neovim)
    serializes as `[]`.
    """
    if raw == []:
        return {}
    if isinstance(raw, dict) and set(raw) == {"keystroke"} and (isinstance(raw["keystroke"], dict)
                                                                  or raw["keystroke"] == []):
        return raw["keystroke"] or {}
    return raw


def parse_config(raw: object, previous: Config) -> tuple[Config, list[str]]:
    """Merge the editor's settings `raw` over `previous`.

    Returns the new configuration and one warning per rejected key.
    """
    raw = unwrap_section(raw)
    if raw is None:
        return previous, []
    if not isinstance(raw, dict):
        return previous, [f"keystroke settings: expected an object, got {type(raw).__name__}; settings unchanged"]
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        name = CLIENT_KEYS.get(key) if isinstance(key, str) else None
        if name is None:
            if key not in IGNORED_KEYS:
                warnings.append(f"keystroke settings: unknown key {str(key)[:80]!r} ignored")
            continue
        try:
            changes[name] = CHECKS[name](value)
        except _Invalid as e:
            default = getattr(_DEFAULTS, name)
            warnings.append(f"keystroke settings: invalid {key}={_short(value)}: {e}; using the default {default!r}")
            changes[name] = default
    return replace(previous, **changes), warnings


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Fields whose change means the model must be loaded again.
ENGINE_FIELDS = ("model", "device", "threads", "cache_dir", "cache_size_mb", "engine")


def engine_changed(old: Config, new: Config) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in ENGINE_FIELDS)
