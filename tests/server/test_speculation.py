"""Speculation after a suggestion (server/speculation.py): the guess for the
state after an accept answers the next request, equal to a fresh request."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pygls.uris import to_fs_path

from keystroke.server import pipeline
from keystroke.server.config import Config
from keystroke.server.context import DocumentView
from keystroke.server.scheduler import Ticket
from keystroke.server.speculation import Guess, Guesses

from conftest import assert_clean_log, cursor_at_end


def guess(before: str = "ab", suggestion: str = "cd ef", after: str = "\nz") -> Guess:
    loop = asyncio.new_event_loop()
    try:
        return Guess(before, suggestion, after, Ticket("k"), loop.create_future())
    finally:
        loop.close()


def test_guess_lives_while_the_document_is_on_the_way_to_it() -> None:
    g = guess()
    assert g.text == "abcd ef\nz" and g.offset == len("abcd ef")
    for taken in ("", "c", "cd ", "cd ef"):
        assert g.on_the_way("ab" + taken + "\nz")
    for other in ("abx\nz", "abcd ef!\nz", "ab\ny", "b\nz"):
        assert not g.on_the_way(other)


def test_other_edits_cancel_the_guess() -> None:
    gs, g = Guesses(), guess()
    gs.add("u", g)
    gs.changed("u", "abcd\nz")
    assert gs.find("u", g.text, g.offset) is g and not g.ticket.is_cancelled()
    assert gs.find("u", g.text, g.offset - 1) is None
    gs.changed("u", "abX\nz")
    assert g.ticket.is_cancelled() and gs.find("u", g.text, g.offset) is None
    assert gs.counts["cancelled"] == 1


def test_a_guess_runs_only_when_its_prompt_extends_the_shown_one() -> None:
    from keystroke.engine.api import CompletionRequest
    from keystroke.server.speculation import extends
    shown = CompletionRequest(doc_id="d", header="# ctx\n", prefix="def f(x):\n    return ", suffix="\n")
    assert extends(shown, CompletionRequest(doc_id="d", header="# ctx\n", prefix=shown.prefix + "x + 1", suffix="\n"))
    for other in (dict(header="# other\n", prefix=shown.prefix + "x", suffix="\n"),     # the header moved
                  dict(header="# ctx\n", prefix=shown.prefix[4:] + "x", suffix="\n"),   # the window slid
                  dict(header="# ctx\n", prefix=shown.prefix + "x", suffix="\n\n")):   # the suffix changed
        assert not extends(shown, CompletionRequest(doc_id="d", **other))


def expected(backend, tmp_path: Path, uri: str, text: str, offset: int) -> list[str]:
    doc = DocumentView(uri, text, "python", Path(to_fs_path(uri)))
    return pipeline.complete(backend, doc, offset, [], Config(), workspace_root=tmp_path).suggestions


@pytest.mark.asyncio
async def test_the_request_after_an_accept_is_answered_from_the_guess(start_server, model, reference_backend,
                                                                     tmp_path):
    s = await start_server(model, init_options={"debounceMs": 0})
    uri = (tmp_path / "spec.py").as_uri()
    text = "def total(items):\n    return sum("
    s.open(uri, text)
    line, char = cursor_at_end(text)
    first = await s.inline(uri, line, char)
    assert first is not None, "the tiny model suggested nothing"
    item = first.items[0]
    # Accept: the client replaces the item's range (the line so far) with its text.
    s.change(uri, (line, 0), (line, char), item.insert_text)
    accepted = text[:text.rindex("\n") + 1] + item.insert_text
    line, char = cursor_at_end(accepted)
    after = await s.inline(uri, line, char)
    st = await s.status()
    spec = st["speculation"]
    assert st["server"]["outcomes"].get("speculated") == 1, st["server"]["outcomes"]
    assert spec["answered"] + spec["joined"] == 1 and spec["started"] >= 2
    # Greedy: the same answer a fresh request for the accepted text gets.
    want = expected(reference_backend, tmp_path, uri, accepted, len(accepted))
    got = [i.insert_text for i in after.items] if after else []
    prefix = accepted.split("\n")[-1]
    assert got, "the tiny model suggested nothing after the accept: the test would prove nothing"
    assert got == [prefix + w for w in want][:1]
    # A keystroke elsewhere cancels the new guess; the next request runs the model.
    s.change(uri, (0, 0), (0, 0), "#\n")
    again = await s.inline(uri, line + 1, char)
    st = await s.status()
    assert st["server"]["outcomes"].get("speculated") == 1
    dropped = st["speculation"]["cancelled"] + st["speculation"]["discarded"]
    assert dropped >= 1, "the keystroke did not drop the shown suggestion's guess"
    want = expected(reference_backend, tmp_path, uri, "#\n" + accepted, len(accepted) + 2)
    assert ([i.insert_text for i in again.items] if again else []) == [prefix + w for w in want][:1]
    assert_clean_log(s.log_text())


@pytest.mark.asyncio
async def test_speculation_can_be_turned_off(start_server, model, tmp_path):
    s = await start_server(model, init_options={"debounceMs": 0, "speculate": False})
    uri = (tmp_path / "nospec.py").as_uri()
    text = "def total(items):\n    return sum("
    s.open(uri, text)
    line, char = cursor_at_end(text)
    first = await s.inline(uri, line, char)
    assert first is not None
    s.change(uri, (line, 0), (line, char), first.items[0].insert_text)
    await s.inline(uri, *cursor_at_end(text[:text.rindex("\n") + 1] + first.items[0].insert_text))
    st = await s.status()
    assert st["speculation"]["started"] == 0 and "speculated" not in st["server"]["outcomes"]
