"""The next suggestion, computed before it is asked for.

When a suggestion `s` is shown for `before|after`, the likeliest next
request is at the end of `s` in `before + s + after`: the user accepts it.
`Guesses` keeps, per document, that one state and the speculative work that
computes its suggestion (queued on the scheduler at the lowest priority).
The request that finds the document in exactly that state is answered from
it, at once when the work is done, else as soon as it is.

A guess is made only when it is cheap: when its prompt is the shown
request's with the suggestion added to the prefix (same header, same
suffix), else it gives up before the engine runs (`extends`): a guess
that needs a long prefill would rarely be done before the accept. Either
way it never holds up a user's request for long: cancellation stops the
engine within one decode step, or one layer of a prefill.

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
from typing import Any, NamedTuple

from keystroke.engine.api import CompletionRequest, CompletionResult
from keystroke.server.scheduler import Ticket


class Answer(NamedTuple):
    """What the worker computed for one cursor."""

    result: CompletionResult
    texts: list[str]
    mode: str
    request: CompletionRequest


def extends(shown: CompletionRequest, guess: CompletionRequest) -> bool:
    """True when the guess's prompt is the shown request's with text added to the prefix only
    (same header, same suffix): its prefill is then about the suggestion's tokens, which the
    engine's per-document cache lacks at most."""
    return (guess.header == shown.header and guess.suffix == shown.suffix
            and guess.prefix.startswith(shown.prefix))


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
        # cancelled: dropped before it finished (queued, delayed or running); discarded: finished, unused
        # skipped: gave up before the engine ran, its prompt being more than the suggestion added
        self.counts = {"started": 0, "answered": 0, "joined": 0, "cancelled": 0, "discarded": 0, "skipped": 0}
        # what the speculative engine calls cost, whether used or not
        self.cost = {"finished": 0, "computed_tokens": 0, "decode_tokens": 0, "engine_ms": 0.0}

    def add(self, uri: str, guess: Guess) -> None:
        self.drop(uri)
        self._by_uri[uri] = guess
        self.counts["started"] += 1
        guess.future.add_done_callback(self._count_cost)

    def _count_cost(self, fut: "asyncio.Future[Any]") -> None:
        if fut.cancelled() or fut.exception() is not None or fut.result() is None:
            return
        (value,) = fut.result()
        if value is None:
            self.counts["skipped"] += 1
            return
        t = value.result.timings
        self.cost["finished"] += 1
        self.cost["computed_tokens"] += t.computed_tokens
        self.cost["decode_tokens"] += t.decode_tokens
        self.cost["engine_ms"] += t.total_ms

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
        finished = self.cost["finished"]
        cost = {"finished": finished}
        if finished:
            cost.update(mean_computed_tokens=round(self.cost["computed_tokens"] / finished, 1),
                        mean_decode_tokens=round(self.cost["decode_tokens"] / finished, 1),
                        mean_engine_ms=round(self.cost["engine_ms"] / finished, 1))
        return dict(self.counts, live=len(self._by_uri), cost=cost,
                    preempt_wait_p50_ms=_round(percentile(waits, 50)),
                    preempt_wait_max_ms=_round(waits[-1] if waits else None),
                    preempted_requests=len(waits))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
