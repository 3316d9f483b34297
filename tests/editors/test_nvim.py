"""Neovim 0.12, headless, with editors/nvim loaded the way a user would
(runtimepath + require('keystroke').setup): keystroke's ghost text appears,
accept-word, accept-line and accept-all (<Tab>) change the buffer by exactly
the part of the suggestion they should.

The Lua side (editors/nvim/tests/driver.lua) types, waits and presses keys,
recording what was on screen and what the server answered; the assertions
are here. Model outputs are unknown in advance, so every check compares the
buffer with the ghost text that was shown and with the server's answer.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.editors.editor_support import (DEFAULT_MODEL, EDITORS, RETURN_LINE, SAMPLE, editor_env, editor_files, require_tool,
                                          server_command, server_log_tail)

pytestmark = pytest.mark.real_model

PLUGIN = EDITORS / "nvim"
DRIVER = PLUGIN / "tests" / "driver.lua"

# Mirrors of the plugin's Lua patterns (%w is ASCII; %s includes newlines).
_WORD = re.compile(r"[ \t\n\r\f\v]*[A-Za-z0-9_]+|[ \t\n\r\f\v]*[^A-Za-z0-9_ \t\n\r\f\v]+")


def next_word(rest: str) -> str:
    m = _WORD.match(rest)
    return m.group(0) if m else rest


def next_line(rest: str) -> str:
    if rest.startswith("\n"):
        return "\n" + rest[1:].split("\n", 1)[0]
    return rest.split("\n", 1)[0]


def apply_edit(lines: list[str], rng: dict, text: str) -> list[str]:
    """`lines` with the LSP range replaced by `text` (ASCII: bytes == UTF-16 units)."""
    s, e = rng["start"], rng["end"]
    head = lines[s["line"]][: s["character"]]
    tail = lines[e["line"]][e["character"]:]
    return lines[: s["line"]] + (head + text + tail).split("\n") + lines[e["line"] + 1:]


def insert_at(lines: list[str], row: int, col: int, text: str) -> list[str]:
    return apply_edit(lines, {"start": {"line": row, "character": col}, "end": {"line": row, "character": col}}, text)


def rest_of(item: dict, before: dict) -> str:
    """What the server's item adds after the cursor (it replaces line start..cursor)."""
    rng = item["range"]
    assert rng["end"] == {"line": before["row"], "character": before["col"]}, "the item's range must end at the cursor"
    typed = before["lines"][before["row"]][rng["start"]["character"]: before["col"]]
    assert item["insertText"].startswith(typed), (item, typed)
    rest = item["insertText"][len(typed):]
    assert rest.strip(), "the server sent a blank suggestion"
    return rest


def check_shown_is_served(step: dict, index: int = 0) -> str:
    """The ghost text is the server's item `index` minus what is already typed; returns it."""
    items, before, ghost = step["items"], step["before"], step["ghost"]
    assert items, f"{step['name']}: ghost text without a server answer"
    rest = rest_of(items[index], before)
    assert ghost["text"] == rest, f"{step['name']}: shown {ghost['text']!r}, served {rest!r}"
    assert (ghost["row"], ghost["col"]) == (before["row"], before["col"]), "ghost text not at the cursor"
    return rest


def test_nvim_ghost_text_accept_word_line_and_all(tmp_path: Path) -> None:
    nvim = require_tool("nvim")
    version = subprocess.run([nvim, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"NVIM v0\.(1[2-9])", version), f"Neovim 0.12+ needed for ghost text, got: {version[:40]!r}"

    workspace, sample, log_file, out = editor_files(tmp_path)
    init = tmp_path / "init.lua"
    # What a user's init.lua holds (plus the test driver).
    init.write_text(
        f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\n"
        f"require('keystroke').setup({{ cmd = {lua_list(server_command(log_file))} }})\n"
        f"dofile({json.dumps(str(DRIVER))})\n")
    env = editor_env(tmp_path / "home") | {
        "KS_OUT": str(out), "KS_FILE": str(sample), "KS_LINE": str(RETURN_LINE),
        "KS_TYPE": "m",                     # "    return m|"
        "KS_TYPE2": "    print(",   # a new line below: open-ended, so cycling has candidates
        "KS_DEADLINE": "240",
    }
    proc = subprocess.run([nvim, "--headless", "-i", "NONE", "-u", str(init)], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)
    assert out.exists(), f"driver wrote nothing (rc {proc.returncode})\n{proc.stderr[-2000:]}\n{server_log_tail(log_file)}"
    result = json.loads(out.read_text())
    assert result.get("error") is None, f"{result.get('error')}\n--- server log:\n{server_log_tail(log_file)}"

    assert result["filetype"] == "python"
    assert result["inline_capability"], "the server did not announce inlineCompletionProvider"
    steps = {s["name"]: s for s in result["steps"]}
    assert list(steps) == ["accept_word", "accept_line", "cycle_request", "accept_all"]

    # Accept one word: exactly the next word of the shown suggestion, at the cursor.
    s = steps["accept_word"]
    rest = check_shown_is_served(s)
    word = next_word(rest)
    assert word.strip() and len(word) <= len(rest)
    assert s["after"]["lines"] == insert_at(s["before"]["lines"], s["before"]["row"], s["before"]["col"], word)
    if "\n" not in word:
        assert s["after"]["col"] == s["before"]["col"] + len(word), "cursor not after the accepted word"
    assert s["after"]["mode"] == "i"

    # Accept one line of the next suggestion (which Neovim asked for by itself).
    s = steps["accept_line"]
    rest = check_shown_is_served(s)
    line = next_line(rest)
    assert line.strip()
    assert s["after"]["lines"] == insert_at(s["before"]["lines"], s["before"]["row"], s["before"]["col"], line)

    # Cycling: <M-]> over one automatic suggestion asks for several (Invoked),
    # the next <M-]> shows the second of them.
    check_shown_is_served(steps["cycle_request"])
    cycle, before = result["cycle"], steps["cycle_request"]["before"]
    items = cycle["invoked_items"]
    # (the driver records the Invoked request's own answer; a confident model may give back only the
    # automatic suggestion, since several sampled candidates can all be the same text)
    assert items, "no invoked answer"
    rests = [rest_of(item, before) for item in items]
    assert len(set(rests)) == len(rests), "the candidates must be distinct"
    assert cycle["first"]["text"] == rests[0]
    shown = 1 if len(items) > 1 else 0
    assert cycle["second"]["text"] == rests[shown]
    if len(items) > 1:
        assert cycle["second"]["hint"] == f" (2/{len(items)})"

    # <Tab>: the candidate shown replaces the item's range, whole.
    s = steps["accept_all"]
    check_shown_is_served(s, shown)
    item = s["items"][shown]
    expected = apply_edit(s["before"]["lines"], item["range"], item["insertText"])
    assert s["after"]["lines"] == expected
    assert result["final_lines"] == expected

    # The rest of the file is untouched, and :KeystrokeStatus reported the model.
    final = "\n".join(result["final_lines"])
    assert final.startswith(SAMPLE.split("    return \n")[0])
    assert final.endswith(SAMPLE.split("    return \n")[1].rstrip("\n"))
    status = result["status_after"]
    assert status["state"] == "ready" and status["model"] == DEFAULT_MODEL
    assert status["server"]["outcomes"].get("served", 0) >= 3
    assert any(m.startswith(f"keystroke: ready (on)\nmodel: {DEFAULT_MODEL}") for m in result["notified"])

    # The server counted the three accepts from the edits alone; :KeystrokeStatus showed them.
    # (A line accept that takes the rest of a one-line suggestion counts as whole.)
    total = status["acceptance"]["total"]
    assert total["accepted_word"] >= 1 and total["accepted_whole"] >= 1, total
    assert total["accepted_word"] + total["accepted_line"] + total["accepted_whole"] == 3, total
    assert total["accepted"] >= 2 and total["shown"] >= total["accepted"]
    # vim.lsp.inline_completion.get() (the <Tab>) ran the item's command (LSP 3.18): Neovim confirmed it.
    assert total["confirmed"] >= 1, total
    line = (f"acceptance: {total['accepted']} of {total['shown']} suggestions "
            f"({round(100 * total['acceptance_rate'])}%); whole {total['accepted_whole']}, "
            f"word {total['accepted_word']}, line {total['accepted_line']}; typed through {total['typed_through']}; "
            "kept - at 30 s, - at 5 min")
    assert any(line in m.split("\n") for m in result["notified"]), (line, result["notified"])


def lua_list(items: list[str]) -> str:
    return "{ " + ", ".join(json.dumps(x) for x in items) + " }"
