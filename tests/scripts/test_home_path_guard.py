"""CI's guard against absolute home-directory paths in tracked code (.ci/check_home_paths.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GUARD = Path(__file__).resolve().parents[2] / ".ci" / "check_home_paths.py"
ROOT_HOME = "/" + "root"          # spelled in pieces so this file does not trip the guard itself
USER_HOME = "/" + "home/alice"


def run_guard(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GUARD), str(repo)], capture_output=True, text=True)


def make_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    return tmp_path


@pytest.mark.parametrize("line", [
    f'MODEL = Path("{ROOT_HOME}/.cache/model.gguf")',
    f"open('{USER_HOME}/data.txt')",
    f"cd {ROOT_HOME}",
])
def test_a_tracked_home_path_fails(tmp_path, line):
    repo = make_repo(tmp_path, {"tests/conftest.py": f"x = 1\n{line}\n"})
    done = run_guard(repo)
    assert done.returncode == 1
    assert "tests/conftest.py:2:" in done.stdout


def test_clean_files_and_other_folders_pass(tmp_path):
    repo = make_repo(tmp_path, {
        "engine/a.py": 'p = Path.home() / ".cache"\nq = "/rootfs/x"  # not a home\nr = "a/home/b"\n',
        "docs/notes.md": f"{ROOT_HOME}/.cache is only an example here\n",   # docs are not checked
    })
    (repo / "server").mkdir()
    (repo / "server" / "untracked.py").write_text(f"{ROOT_HOME}/x\n")      # not tracked: not checked
    done = run_guard(repo)
    assert done.returncode == 0, done.stdout


def test_this_repository_is_clean():
    done = run_guard(GUARD.parents[1])
    assert done.returncode == 0, done.stdout
