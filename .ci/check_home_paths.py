#!/usr/bin/env python3
"""Fail when a tracked file of the code or its tests holds an absolute path into a home directory.

Such a path (root's home, or a user's under /home) works only on the machine
where it was written: a test that reads a model from it passes there and
fails on every fresh machine. Models and caches are found through the
registry and $XDG_CACHE_HOME instead.

    python3 .ci/check_home_paths.py [REPO]      # exit 1 and list the lines found
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

FOLDERS = ("tests", "scripts", "server", "engine")
# "/root" or "/home/<name>" as a path component, not inside a longer word ("/rootfs", "x/home/").
HOME_PATH = re.compile(r"(?<![\w.~-])/(?:root|home/[\w.-]+)(?=/|\b)")


def tracked_files(repo: Path) -> list[Path]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--", *FOLDERS],
                         check=True, capture_output=True).stdout
    return [repo / name for name in out.decode().split("\0") if name]


def home_paths(repo: Path) -> list[str]:
    found = []
    for path in tracked_files(repo):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):   # binary or unreadable: not code
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if HOME_PATH.search(line):
                found.append(f"{path.relative_to(repo)}:{number}: {line.strip()[:160]}")
    return found


def main(argv: list[str]) -> int:
    repo = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[1])
    found = home_paths(repo)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} line(s) hold an absolute path into a home directory: find models through "
              "the registry and caches through $XDG_CACHE_HOME instead", file=sys.stderr)
        return 1
    print(f"no home-directory paths in tracked files under {', '.join(FOLDERS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
