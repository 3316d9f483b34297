"""Reuse of a generation in flight.

While the worker writes the suggestion for `before|after`, the user may go
on typing: the next request is for `before + typed|after` (or, with
`typed` empty, the same state asked again). When `typed` is
what the generation has written so far (or what it has written is the start
of `typed`), that request joins the running generation instead of
cancelling it and starting over, and is answered with the rest of its
suggestion after `typed` once it is done. It is the answer typing-through
gives (pipeline.TypedThrough) had the generation finished a moment earlier.
The generation is cut within one token as soon as what it writes leaves
what was typed, and the joined request then runs the model as before.

A joined request is answered from the generation only when a fresh one would
have been planned alike (the same stop mode) and the generation ended on its
own stop rule (not its token budget, a deadline or a cancellation, which a
fresh request would not share). Any request that needs the model for
another state supersedes the generation as before.

Greedy, the rest equals a fresh request's answer when the engine's decode
steps compute what a prefill of the same tokens would. With int8 weights
they do not quite: a decode step quantizes its activations to one int8
row, a prompt to two (engine/quantize.py), so near-ties can go the other
way. `scripts/eval_typed_rest.py` (the default model, 12 cursors in
textwrap.py): the rest equals a fresh request's answer for 90 of 136 typed
prefixes and differs for 46; typing-through has the same property.


`Flight.update` runs on the worker thread (the engine's `on_text`);
everything else on the event loop thread.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Hashable

from keystroke.server.scheduler import Ticket
from keystroke.server.speculation import Answer

# A generation that stopped on one of these did not finish its suggestion: a fresh request
# for a later state would write on (token budget, deadline) or was never answered (cancelled).
UNFINISHED = frozenset({"max_tokens", "deadline", "cancelled", "error"})


@dataclass
class Flight:
    """The running generation for the cursor between `before` and `after`."""

    before: str
    after: str
    ticket: Ticket
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Any]" = field(init=False)   # (Answer | None,) once done, None when it never ran
    text: str = ""                  # what it has written so far (set from the worker thread)
    typed: str | None = None        # what the request that joined it last had typed

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()

    def typed_since(self, text: str, offset: int) -> str | None:
        """The text typed at the generation's cursor, when `text` is `before + typed + after`
        with the cursor after `typed`; else None."""
        b, a = self.before, self.after
        if offset != len(text) - len(a) or offset < len(b) or not text.startswith(b) or not text.endswith(a):
            return None
        return text[len(b):offset]

    def agrees(self, typed: str) -> bool:
        """What was written so far and what was typed are one the start of the other."""
        written = self.text
        return written.startswith(typed) or typed.startswith(written)

    def update(self, text: str) -> None:
        """The engine wrote on (worker thread): cut it as soon as it leaves what a joined request typed."""
        self.text = text
        typed = self.typed
        if typed is not None and not self.agrees(typed):
            try:
                self.loop.call_soon_threadsafe(self.ticket.cancel, "diverged")
            except RuntimeError:   # the loop is closed
                pass


def rest_after(answer: Answer | None, typed: str, mode: str) -> list[str] | None:
    """The suggestion for the state with `typed` added, from the finished generation; None when
    it has none to give (it wrote something else, nothing more, or did not finish)."""
    if answer is None or answer.result.error or not answer.texts or not answer.result.candidates:
        return None
    if answer.result.candidates[0].stop_reason in UNFINISHED or mode != answer.mode:
        return None
    text = answer.texts[0]
    if not text.startswith(typed) or len(text) == len(typed):
        return None
    return [text[len(typed):]]


class Flights:
    """At most one generation in flight per scheduler key. Call on the event loop thread."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, Flight] = {}
        # joined: a request waited on a running generation; reused: it was answered from it;
        # declined: it ended elsewhere (diverged, unfinished, other mode) and the request ran the model
        self.counts = {"joined": 0, "reused": 0, "declined": 0}

    def start(self, key: Hashable, flight: Flight) -> Flight:
        self.drop(key)
        self._by_key[key] = flight
        return flight

    def finish(self, key: Hashable, flight: Flight, answer: Answer | None) -> None:
        """The request that started `flight` has its outcome: hand it to whoever joined."""
        if not flight.future.done():
            flight.future.set_result((answer,) if answer is not None else None)
        if self._by_key.get(key) is flight:
            del self._by_key[key]

    def joinable(self, key: Hashable, text: str, offset: int) -> tuple[Flight, str] | None:
        """The running generation this state can wait on, and what was typed since it started."""
        flight = self._by_key.get(key)
        if flight is None or flight.future.done() or flight.ticket.is_cancelled():
            return None
        typed = flight.typed_since(text, offset)   # "" for the same state asked again
        if typed is None or not flight.agrees(typed):
            return None
        return flight, typed

    def drop(self, key: Hashable | None = None) -> None:
        """Cancel the generation kept for `key` (all when None): its answer is of no use any more."""
        for k in ([key] if key is not None else list(self._by_key)):
            flight = self._by_key.pop(k, None)
            if flight is not None:
                flight.ticket.cancel("superseded")

    def summary(self) -> dict:
        return dict(self.counts, live=len(self._by_key))
