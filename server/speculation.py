"""The next suggestion, computed before it is asked for.

When a suggestion `s` is shown for `before|after`, the likeliest next
request is at the end of `s` in `before + s + after`: the user accepts it.
`Guesses` keeps, per document, that one state and the speculative work that
computes its suggestion (queued on the scheduler at the lowest priority).
The request that finds the document in exactly that state is answered from
it, at once when the work is done, else as soon as it is.

A guess stays alive while the document is on the way to it (the user
typed, or accepted by word or line, a prefix of `s`: typing-through answers
those requests); any other change cancels it, and so does any user request
that needs the model (the scheduler preempts speculation). Greedy decoding
makes the guess the answer a fresh request would get for the same text;
the context from other open documents is the one of the moment the guess
was made.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from keystroke.server.scheduler import Ticket


@dataclass
class Guess:
    """The document after accepting `suggestion`, and the work that suggests what follows."""

    before: str
    suggestion: str
    after: str
    ticket: Ticket
    future: "asyncio.Future[Any]"

    @property
    def text(self) -> str:
        return self.before + self.suggestion + self.after

    @property
    def offset(self) -> int:
        return len(self.before) + len(self.suggestion)

    def on_the_way(self, text: str) -> bool:
        """True when `text` is the document with a prefix of the suggestion taken (or all of it)."""
        taken = len(text) - len(self.before) - len(self.after)
        return (0 <= taken <= len(self.suggestion) and text.startswith(self.before) and text.endswith(self.after)
                and self.suggestion.startswith(text[len(self.before):len(self.before) + taken]))


class Guesses:
    """At most one guess per document. Call on the event loop thread."""

    def __init__(self) -> None:
        self._by_uri: dict[str, Guess] = {}
        # answered: from a finished guess; joined: waited for a running one;
        # cancelled: dropped while running; discarded: dropped when finished, unused
        self.counts = {"started": 0, "answered": 0, "joined": 0, "cancelled": 0, "discarded": 0}

    def add(self, uri: str, guess: Guess) -> None:
        self.drop(uri)
        self._by_uri[uri] = guess
        self.counts["started"] += 1

    def find(self, uri: str, text: str, offset: int) -> Guess | None:
        """The live guess for exactly this document and cursor, or None."""
        guess = self._by_uri.get(uri)
        if guess is None or guess.ticket.is_cancelled() or offset != guess.offset or text != guess.text:
            return None
        return guess

    def changed(self, uri: str, text: str) -> None:
        """The document changed: keep the guess only while the document is on the way to it."""
        guess = self._by_uri.get(uri)
        if guess is not None and not guess.on_the_way(text):
            self.drop(uri)

    def drop(self, uri: str | None = None) -> None:
        """Cancel the guess for `uri` (all guesses when None)."""
        for key in ([uri] if uri is not None else list(self._by_uri)):
            guess = self._by_uri.pop(key, None)
            if guess is None:
                continue
            if guess.future.done():
                self.counts["discarded"] += 1
            else:
                guess.ticket.cancel("dropped")
                self.counts["cancelled"] += 1

    def summary(self, preempt_waits_ms: list[float]) -> dict:
        from keystroke.server.metrics import percentile
        waits = sorted(preempt_waits_ms)
        return dict(self.counts, live=len(self._by_uri),
                    preempt_wait_p50_ms=_round(percentile(waits, 50)),
                    preempt_wait_max_ms=_round(waits[-1] if waits else None),
                    preempted_requests=len(waits))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
