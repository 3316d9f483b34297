"""Emacs 28 + eglot 1.9 in batch mode with editors/emacs/keystroke.el:
completion-at-point inserts the server's suggestion, the overlay preview is
accepted by its keys (M-f one word, TAB the rest), eglot's code-action picker
applies "Implement function", keystroke's own command writes a docstring.

The Emacs side (editors/emacs/tests/driver.el) records buffers and the
server's answers; the assertions are here, structural only (the model's
words are not known in advance).
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.editors.editor_support import (DEFAULT_MODEL, EDITORS, RETURN_LINE, STUB_LINE, editor_env,
                                          editor_files, require_tool, server_command, server_log_tail)

pytestmark = pytest.mark.real_model

LISP = EDITORS / "emacs"
DRIVER = LISP / "tests" / "driver.el"
_WORD = re.compile(r"[ \t\n]*(?:[A-Za-z0-9_]+|[^A-Za-z0-9_ \t\n]+)")   # keystroke-next-word


def lsp_offset(text: str, pos: dict) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[: pos["line"]]) + pos["character"]


def function_node(source: str, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name)


def test_emacs_eglot_completion_preview_and_actions(tmp_path: Path) -> None:
    emacs = require_tool("emacs")
    version = subprocess.run([emacs, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert re.match(r"GNU Emacs (2[89]|[3-9]\d)", version), version[:40]
    has_eglot = subprocess.run([emacs, "--batch", "--eval", "(progn (require 'eglot) (princ \"ok\"))"],
                               capture_output=True, text=True, timeout=60)
    if "ok" not in has_eglot.stdout:
        pytest.fail("eglot is not installed (apt-get install elpa-eglot): run scripts/install_editors.sh",
                    pytrace=False)

    project, sample, log_file, out = editor_files(tmp_path)
    env = editor_env(tmp_path / "home") | {
        "HOME": str(tmp_path / "home"),   # no ~/.emacs.d of the developer
        "KS_FILE": str(sample), "KS_OUT": str(out), "KS_LISP": str(LISP),
        "KS_SERVER": json.dumps(server_command(log_file)),
        "KS_RETURN_LINE": str(RETURN_LINE), "KS_STUB_LINE": str(STUB_LINE),
        "KS_DEADLINE": "240",
    }
    proc = subprocess.run([emacs, "--batch", "-l", str(DRIVER)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert out.exists(), f"driver wrote nothing (rc {proc.returncode})\n{proc.stderr[-3000:]}\n{server_log_tail(log_file)}"
    r = json.loads(out.read_text())
    assert r["error"] is None, f"{r['error']}\n{proc.stderr[-2000:]}\n--- server log:\n{server_log_tail(log_file)}"
    assert r["major_mode"] == "python-mode"
    assert r["server_class"] == "keystroke-server" and r["keystroke_mode"] is True
    assert r["completion_provider"], "eglot has no ghost text: the server must offer completion items"

    # completion-at-point: the buffer changed by exactly the server's textEdit.
    capf = r["capf"]
    assert capf["answers"], "completion-at-point sent no request"
    items = capf["answers"][-1]["items"]
    assert len(items) == 1
    edit = items[0]["textEdit"]
    before = capf["before"]["text"]
    start, end = lsp_offset(before, edit["range"]["start"]), lsp_offset(before, edit["range"]["end"])
    assert before[start:end] == "m", "the edit must replace the word typed"
    assert edit["newText"].startswith("m") and len(edit["newText"].strip()) > 1
    assert capf["after"]["text"] == before[:start] + edit["newText"] + before[end:]

    # Preview: shown as an overlay after point, M-f takes one word, TAB the rest.
    p = r["preview"]
    shown = p["shown"]
    assert shown.strip() and p["overlay"] == shown
    b = p["before"]
    word = _WORD.match(shown).group(0)
    assert p["after_word"]["text"] == b["text"][: b["point"]] + word + b["text"][b["point"]:]
    assert p["after_word"]["point"] == b["point"] + len(word)
    assert p["left_after_word"] == shown[len(word):]
    assert p["after_tab"]["text"] == b["text"][: b["point"]] + shown + b["text"][b["point"]:]
    assert p["overlay_after_tab"] is None and p["keys_mode_after_tab"] is None

    # "Implement function" through eglot's picker: the stub is replaced by a body that parses.
    a = r["action"]
    assert any(t.startswith("Implement function is_even") for t in a["offered"]), a["offered"]
    assert "edit" in (r.get("confirm_prompt") or "")
    after = a["after"]["text"]
    assert after != a["before"]["text"], "the action changed nothing"
    body = function_node(after, "is_even")
    assert ast.get_docstring(body) == "Return True when the integer n is even, False otherwise."
    assert not any(isinstance(s, ast.Raise) for s in body.body), "the stub is still there"
    assert len(body.body) >= 2, "no body was written"
    # Nothing outside the function changed.
    head, tail = a["before"]["text"].split("def is_even(n):")
    assert after.startswith(head) and after.endswith(tail.split("raise NotImplementedError\n", 1)[1])

    # keystroke-write-docstring: a docstring appears, the rest is unchanged.
    d = r["docstring"]
    assert d["title"].startswith("Write docstring")
    square = function_node(d["after"]["text"], "square_area")
    assert (ast.get_docstring(square) or "").strip(), "no docstring written"
    assert ast.unparse(square.body[-1]) == "return side * side"
    assert r["final_text"] == d["after"]["text"]

    assert "keystroke: ready (on)" in r["status_text"] and DEFAULT_MODEL in r["status_text"]
    # The accepts above (a completion item; a word, then the rest) are counted from eglot's didChange
    # alone. eglot sends the changes of M-f and TAB in one didChange (it waits for idle time or the next
    # request), so the server sees the second accept whole.
    m = re.search(r"^acceptance: (\d+) of (\d+) suggestions \(\d+%\); whole (\d+), word (\d+), line (\d+); "
                  r"typed through \d+; kept - at 30 s, - at 5 min$", r["status_text"], re.M)
    assert m, r["status_text"]
    accepted, shown, whole, word, line = map(int, m.groups())
    assert 2 <= accepted <= shown and whole >= 1 and whole + word + line >= 2, r["status_text"]
