"""VS Code (code-server 4.139.1 on Node 24, driven through Debian's Chromium by
playwright-core) with the keystroke .vsix installed offline: open a Python
file, type, keystroke's ghost text appears, Tab accepts it, the saved file
holds exactly the typed text plus the ghost text shown; the status bar went
from loading to ready and shows a latency and the accept; "keystroke: Show stats" works and
shows the acceptance counts.

The browser side is editors/vscode/test/e2e.mjs. Screenshots land in
artifacts/vscode/ (gitignored).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.editors.editor_support import (ARTIFACTS, CODE_SERVER, EDITORS, NODE_BIN, RETURN_LINE, SAMPLE,
                                          editor_files, require_tool, server_log_tail)

pytestmark = pytest.mark.real_model

EXTENSION = EDITORS / "vscode"
VSIX = EXTENSION / "keystroke.vsix"


def test_vscode_ghost_text_accepted_with_tab(tmp_path: Path) -> None:
    node = require_tool("node 24", NODE_BIN / "node")
    code_server = require_tool("code-server", CODE_SERVER)
    chromium = require_tool("chromium", "/usr/bin/chromium")
    if not (EXTENSION / "node_modules" / "playwright-core").is_dir() or not VSIX.is_file():
        pytest.fail("editors/vscode is not built (node_modules, keystroke.vsix): run scripts/install_editors.sh",
                    pytrace=False)
    stale = [p for p in (EXTENSION / "src").iterdir() if p.stat().st_mtime > VSIX.stat().st_mtime]
    assert not stale, f"keystroke.vsix is older than {stale}: run scripts/install_editors.sh"

    workspace, sample, log_file, out = editor_files(tmp_path, "ws", git_root=False)
    artifacts = ARTIFACTS / "vscode"
    shutil.rmtree(artifacts, ignore_errors=True)
    env = dict(os.environ) | {
        "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KS_OUT": str(out), "KS_ARTIFACTS": str(artifacts), "KS_HOME": str(tmp_path / "home"),
        "KS_WORKSPACE": str(workspace), "KS_FILE": sample.name, "KS_LINE": str(RETURN_LINE), "KS_TYPE": "m",
        "KS_CODE_SERVER": code_server, "KS_VSIX": str(VSIX), "KS_CHROMIUM": chromium,
        "KS_SERVER_COMMAND": sys.executable,
        "KS_SERVER_ARGS": json.dumps(["-m", "keystroke.server.cli", "serve", "--log-file", str(log_file)]),
        "KS_DEADLINE": "270",
    }
    proc = subprocess.run([node, str(EXTENSION / "test" / "e2e.mjs")], cwd=EXTENSION, env=env,
                          capture_output=True, text=True, timeout=300)
    assert out.exists(), f"driver wrote nothing (rc {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    r = json.loads(out.read_text())
    assert r["error"] is None, (f"{r['error']}\n{proc.stdout[-1500:]}\nscreenshots: {artifacts}\n"
                                f"--- server log:\n{server_log_tail(log_file)}")

    assert r["installed"] == ["keystroke.keystroke-0.1.0"], "the .vsix did not install"
    assert log_file.exists(), "the extension did not start the configured server (keystroke.server.command)"
    assert "keystroke" in r["status_ready"] and not re.search("loading|stopped|failed", r["status_ready"])

    # The saved file: the typed "m" and then exactly the ghost text shown.
    ghost = r["ghost"]
    assert ghost["first"].strip(), "empty ghost text"
    inserted = "\n".join([ghost["first"], *ghost["more"]])
    lines = SAMPLE.split("\n")
    i = RETURN_LINE - 1
    expected = "\n".join(lines[:i] + (lines[i] + "m" + inserted).split("\n") + lines[i + 1:])
    assert sample.read_text() == expected
    assert r["ghost_after_tab"] == 0, "ghost text still shown after Tab"

    # The status bar shows the last latency; "Show stats" printed the server's status.
    # After the Tab, the status item counts the accept (server/acceptance.py) next to the latency.
    m = re.fullmatch(r"keystroke \d+ ms, (\d+)/(\d+) accepted", r["status_after"])
    assert m and 1 <= int(m.group(1)) <= int(m.group(2)), (r["status_after"], r["stats_lines"])
    assert any("keystroke: ready (on)" in line for line in r["stats_lines"]), r["stats_lines"]
    acceptance = [line for line in r["stats_lines"] if line.startswith("acceptance: ")]
    assert acceptance, r["stats_lines"]
    # (the output panel wraps the line: its start is enough)
    m = re.match(r"acceptance: (\d+) of (\d+) suggestions \(\d+%\); whole (\d+), word \d+, line \d+; ",
                 acceptance[-1])
    assert m and int(m.group(1)) >= 1 and int(m.group(3)) >= 1, acceptance[-1]
    for shot in ("vscode-ghost-text.png", "vscode-accepted.png", "vscode-stats.png"):
        data = (artifacts / shot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, shot
