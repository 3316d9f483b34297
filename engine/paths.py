"""Where keystroke keeps its files on this machine: one answer, used by every cache."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The user cache directory of keystroke: $XDG_CACHE_HOME/keystroke, or ~/.cache/keystroke.

    Models (`models/`), built tokenizers (`tokenizers/`), what GGUF headers say (`headers/`),
    packed weights (`packed/`), the KV-cache (`kv/`) and the response cache (`responses/`)
    live below it. Read each time, so a changed
    environment (a test's) is seen.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keystroke"
