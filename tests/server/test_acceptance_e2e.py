"""End to end, with the real default model through `keystroke serve`: the
client applies the suggestions it is given (whole, one word), as an editor's
accept does, and `keystroke.status` counts them."""
from __future__ import annotations

import re

import pytest
from lsprotocol import types

from conftest import assert_clean_log, cursor_at_end

pytestmark = [pytest.mark.asyncio, pytest.mark.real_model]

TEXT = ("import math\n\n\ndef circle_area(radius):\n    \"\"\"Return the area of a circle.\"\"\"\n"
        "    return math.pi * radius ** 2\n\n\ndef circle_circumference(radius):\n"
        "    \"\"\"Return the circumference of a circle.\"\"\"\n    return ")


def apply(text: str, rng: types.Range, new: str) -> str:
    """An item's edit on `text` (ASCII: LSP columns are characters here)."""
    lines = text.split("\n")
    start = sum(len(x) + 1 for x in lines[:rng.start.line]) + rng.start.character
    end = sum(len(x) + 1 for x in lines[:rng.end.line]) + rng.end.character
    return text[:start] + new + text[end:]


async def test_accepts_appear_in_status(start_server, real_model, tmp_path):
    s = await start_server(real_model, init_options={"debounceMs": 0})
    uri = (tmp_path / "geometry.py").as_uri()
    s.open(uri, TEXT)
    text = TEXT

    # 1. Accept the whole suggestion: the client replaces the item's range with its text.
    line, char = cursor_at_end(text)
    got = await s.inline(uri, line, char)
    assert got is not None and got.items, "the model suggested nothing"
    item = got.items[0]
    whole = item.insert_text[len("    return "):]
    assert whole.strip()
    s.change(uri, (item.range.start.line, item.range.start.character),
             (item.range.end.line, item.range.end.character), item.insert_text)
    text = apply(text, item.range, item.insert_text)
    # LSP 3.18: the client runs the item's command after inserting it.
    assert item.command is not None and item.command.command == "keystroke.accepted"
    assert await s.client.workspace_execute_command_async(types.ExecuteCommandParams(
        command=item.command.command, arguments=item.command.arguments)) is True

    # 2. On a new line, accept one word of the next suggestion.
    line, char = cursor_at_end(text)
    s.change(uri, (line, char), (line, char), "\n    print(")
    text += "\n    print("
    line, char = cursor_at_end(text)
    got = await s.inline(uri, line, char)
    assert got is not None and got.items, "the model suggested nothing after print("
    rest = got.items[0].insert_text[len("    print("):]
    word = re.match(r"\s*\w+|\s*\W", rest).group(0)
    accepted_word = len(word) > 1 and word != rest
    s.change(uri, (line, char), (line, char), word)
    text += word

    st = await s.status()
    acc = st["acceptance"]
    t = acc["total"]
    assert t["shown"] >= 2 and t["confirmed"] == 1
    assert t["accepted_whole"] >= 1 and t["accepted"] >= 1
    if accepted_word:
        assert t["accepted_word"] == 1
    assert t["accepted_chars"] >= len(whole) + (len(word) if accepted_word else 0)
    assert "python/line" in acc["by_language_mode"] or any(k.startswith("python/") for k in acc["by_language_mode"])
    assert 0 < t["acceptance_rate"] <= 1
    assert t["kept_30s"] is None and acc["kept_pending"] >= 1, "kept shares are sampled after 30 s"
    # Only counts: none of the document's text is in the answer.
    assert "circle" not in repr(acc) and whole.strip() not in repr(acc)
    assert_clean_log(s.log_text())
