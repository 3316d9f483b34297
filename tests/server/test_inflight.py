"""Reuse of a generation in flight (server/inflight.py): a request typed into
the running generation waits for it and gets the rest of its suggestion."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pygls.uris import to_fs_path

from keystroke.engine.api import Candidate, CompletionRequest, CompletionResult
from keystroke.server import pipeline
from keystroke.server.config import Config
from keystroke.server.context import DocumentView
from keystroke.server.inflight import Flight, Flights, rest_after
from keystroke.server.scheduler import Ticket
from keystroke.server.speculation import Answer

from conftest import LocalServer, cursor_at_end


def flight(loop: asyncio.AbstractEventLoop, before: str = "x = f", after: str = "\ny") -> Flight:
    return Flight(before, after, Ticket("k"), loop)


def answer(text: str, reason: str = "line", mode: str = "line") -> Answer:
    return Answer(CompletionResult([Candidate(text, reason)]), [text], mode, CompletionRequest(doc_id="d", prefix=""))


@pytest.mark.asyncio
async def test_what_was_typed_is_read_between_the_generations_before_and_after() -> None:
    f = flight(asyncio.get_running_loop())
    assert f.typed_since("x = foo\ny", len("x = foo")) == "oo"
    assert f.typed_since("x = foo\ny", len("x = fo")) is None        # the cursor is not after what was typed
    assert f.typed_since("x = g\ny", len("x = g")) is None           # the start changed
    assert f.typed_since("x = foo\nz", len("x = foo")) is None       # the rest changed
    assert f.typed_since("x = \ny", len("x = ")) is None             # deleted back over the cursor


@pytest.mark.asyncio
async def test_only_a_state_that_agrees_with_what_was_written_joins() -> None:
    loop = asyncio.get_running_loop()
    flights, f = Flights(), flight(loop)
    flights.start("k", f)
    f.update("oo(1)")
    assert flights.joinable("k", "x = foo\ny", len("x = foo")) == (f, "oo")
    assert flights.joinable("k", "x = foo(1) + 2\ny", len("x = foo(1) + 2")) == (f, "oo(1) + 2")  # may still come
    assert flights.joinable("k", "x = fa\ny", len("x = fa")) is None
    assert flights.joinable("k", "x = f\ny", len("x = f")) == (f, "")  # the same state asked again
    flights.finish("k", f, None)
    assert flights.joinable("k", "x = foo\ny", len("x = foo")) is None and flights.summary()["live"] == 0


@pytest.mark.asyncio
async def test_the_generation_is_cut_once_it_leaves_what_was_typed() -> None:
    f = flight(asyncio.get_running_loop())
    f.typed = "oo(2"
    f.update("oo(")
    await asyncio.sleep(0)
    assert not f.ticket.is_cancelled()
    f.update("oo(1")
    await asyncio.sleep(0)
    assert f.ticket.is_cancelled() and f.ticket.reason == "diverged"


def test_the_rest_is_given_only_for_a_finished_suggestion_that_starts_with_what_was_typed() -> None:
    assert rest_after(answer("oo(1)"), "oo", "line") == ["(1)"]
    assert rest_after(answer("oo(1)"), "oa", "line") is None
    assert rest_after(answer("oo(1)"), "oo(1)", "line") is None                  # nothing more
    assert rest_after(answer("oo(1)"), "", "line") == ["oo(1)"]                  # the same state
    assert rest_after(answer("oo(1)", reason="max_tokens"), "oo", "line") is None  # a fresh one writes on
    assert rest_after(answer("oo(1)", reason="cancelled"), "oo", "line") is None
    assert rest_after(answer("oo(1)"), "oo", "block") is None                    # planned otherwise now
    assert rest_after(None, "oo", "line") is None


class SlowEngine:
    """The real engine with 40 ms added before each written token reaches the server, as on a slower
    machine: the tiny test model is too fast for a keystroke to arrive while it writes. Nothing else changes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def complete(self, req: CompletionRequest) -> CompletionResult:
        inner = req.on_text

        def on_text(text: str) -> None:
            time.sleep(0.04)
            if inner is not None:
                inner(text)
        return self.engine.complete(replace(req, on_text=on_text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


async def served(model: str, tmp_path: Path, **options: Any) -> LocalServer:
    from keystroke.engine.engine import Engine
    local = LocalServer(loader=lambda config: SlowEngine(Engine.load(model, cache_dir=tmp_path / "cache",
                                                                      persist=False)))
    await local.call("initialize", {"processId": None, "rootUri": tmp_path.as_uri(), "capabilities": {},
                                    "initializationOptions": {"debounceMs": 0, "speculate": False, **options}},
                     "init")
    local.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    for _ in range(600):
        if local.server.engine_state == "ready":
            return local
        await asyncio.sleep(0.05)
    raise AssertionError(f"the engine did not load: {local.server.engine_state} {local.server.engine_error}")


def inline_params(uri: str, text: str) -> dict:
    line, char = cursor_at_end(text)
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": char},
            "context": {"triggerKind": 2}}


async def written(local: LocalServer, at_least: int) -> Flight:
    """The generation in flight, once it has written `at_least` characters."""
    for _ in range(400):
        live = list(local.server.flights._by_key.values())
        if live and len(live[0].text) >= at_least:
            return live[0]
        await asyncio.sleep(0.005)
    raise AssertionError("no generation in flight")


async def response(local: LocalServer, msg_id: str) -> dict:
    for _ in range(2000):
        if (r := local.response(msg_id)) is not None:
            return r
        await asyncio.sleep(0.01)
    raise AssertionError(f"no response to {msg_id}")


def open_and_ask(local: LocalServer, uri: str, text: str) -> None:
    """Open `text` and ask at its end (request id "first"), without waiting for the answer."""
    local.open(uri, text)
    local.send({"jsonrpc": "2.0", "id": "first", "method": "textDocument/inlineCompletion",
                "params": inline_params(uri, text)})


async def type_and_ask(local: LocalServer, uri: str, text: str, typed: str) -> dict:
    """Type `typed` at the end of `text` (version 2) and ask there (id "second"); its response."""
    line, char = cursor_at_end(text)
    local.change(uri, 2, [{"range": {"start": {"line": line, "character": char},
                                     "end": {"line": line, "character": char}}, "text": typed}])
    local.send({"jsonrpc": "2.0", "id": "second", "method": "textDocument/inlineCompletion",
                "params": inline_params(uri, text + typed)})
    return await response(local, "second")


def expected(backend: Any, tmp_path: Path, uri: str, text: str) -> list[str]:
    doc = DocumentView(uri, text, "python", Path(to_fs_path(uri)))
    return pipeline.complete(backend, doc, len(text), [], Config(), workspace_root=tmp_path).suggestions


@pytest.mark.asyncio
@pytest.mark.parametrize("reuse", [True, False])
async def test_a_keystroke_into_the_running_generation_is_answered_from_it(model, reference_backend, tmp_path, reuse):
    local = await served(model, tmp_path, reuseInFlight=reuse)
    uri = (tmp_path / "flight.py").as_uri()
    text = "def total(items):\n    return sum("
    whole = expected(reference_backend, tmp_path, uri, text)
    assert whole and len(whole[0]) >= 2, f"the tiny model wrote too little to type into: {whole}"
    open_and_ask(local, uri, text)
    f = await written(local, 1)
    typed = f.text[:1]
    assert whole[0].startswith(typed)          # the server writes what a fresh request writes
    second = await type_and_ask(local, uri, text, typed)
    first = await response(local, "first")
    assert first["result"] is None             # its document moved on: stale
    counts = local.server.flights.summary()
    if not reuse:   # `reuseInFlight: false`: the keystroke cancels it and runs the model, as before
        assert counts["joined"] == 0 and f.ticket.reason == "superseded", counts
        return
    items = second["result"]["items"]
    # The rest of the generation: what typing-through gives once it is done ...
    assert items[0]["insertText"] == "    return sum(" + whole[0]
    # ... and here what a fresh greedy request for the typed state gives too (not always so with
    # int8 weights: decode steps round activations more coarsely than a prefill, see inflight.py).
    fresh = expected(reference_backend, tmp_path, uri, text + typed)
    assert items[0]["insertText"] == "    return sum(" + typed + fresh[0]
    assert counts["joined"] == 1 and counts["reused"] == 1 and counts["declined"] == 0, counts
    assert local.server.record.summary()["outcomes"].get("in_flight") == 1


@pytest.mark.asyncio
async def test_a_keystroke_the_generation_does_not_write_cuts_it_and_runs_the_model(model, reference_backend,
                                                                                  tmp_path):
    local = await served(model, tmp_path)
    uri = (tmp_path / "diverge.py").as_uri()
    text = "def total(items):\n    return sum("
    whole = expected(reference_backend, tmp_path, uri, text)
    assert whole and whole[0]
    typed = "\u00a7" * 3 if not whole[0].startswith("\u00a7") else "\u00b6" * 3   # never its first characters
    open_and_ask(local, uri, text)
    f = await written(local, 0)
    assert f.text == "", "the first token arrived before the keystroke: the test would prove nothing"
    second = await type_and_ask(local, uri, text, typed)
    await response(local, "first")
    assert f.ticket.is_cancelled() and f.ticket.reason == "diverged"
    counts = local.server.flights.summary()
    assert counts["joined"] == 1 and counts["declined"] == 1 and counts["reused"] == 0, counts
    want = expected(reference_backend, tmp_path, uri, text + typed)
    got = [i["insertText"] for i in second["result"]["items"]] if second["result"] else []
    assert got == ["    return sum(" + typed + w for w in want][:1]
