"""Reading a streamed answer: server events to text pieces, one `StreamRow` per candidate.

Both APIs are read: OpenAI-compatible `/v1/completions` events (`choices`,
`usage`) and llama.cpp's native `/infill` ones (`content`, `stop`,
`timings`). A `Watcher` thread closes the stream when the request is
cancelled or out of time, so a read blocked on a silent server returns.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from ..api import StopReason, Timings
from ..stops import StopChecker
from .http import EventStream
from .prompt import unheal

WATCH_INTERVAL_S = 0.02


@dataclass
class StreamRow:
    """One candidate being streamed."""

    checker: StopChecker
    held: str = ""      # whitespace left out of the prompt, expected first
    raw: str = ""       # what the server sent
    text: str = ""      # the completion at the cursor so far
    chunks: int = 0
    reason: StopReason | None = None
    cut: int | None = None

    @property
    def final_text(self) -> str:
        return self.text if self.cut is None else self.text[:self.cut]

    def add(self, piece: str, finish: str | None, sent_stops: bool, max_tokens: int) -> None:
        """Take one streamed piece and the server's finish reason, when it came with it."""
        if self.reason is not None:
            return
        if piece:
            self.raw += piece
            self.chunks += 1
            text = unheal(self.raw, self.held)
            if text is not None:
                self.text = text
                hit = self.checker.check(text)
                if hit is not None:
                    self.reason, self.cut = hit.reason, hit.cut
                    return
        if finish:
            self.reason = finish_reason(finish, sent_stops)
            hit = self.checker.finish() if self.reason == "eos" else None   # the last line's suffix rules
            if hit is not None:
                self.reason, self.cut = hit.reason, hit.cut
        elif self.chunks >= max_tokens:
            self.reason = "max_tokens"


class Watcher:
    """Closes a stream from another thread when the request is cancelled or its deadline passes,
    so a read blocked on a silent server (a long prefill) returns within WATCH_INTERVAL_S."""

    def __init__(self, stream: EventStream, is_cancelled: Callable[[], bool], deadline: float | None) -> None:
        self.reason: StopReason | None = None
        self._stream = stream
        self._is_cancelled = is_cancelled
        self._deadline = deadline
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keystroke-remote-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            try:
                cancelled = self._is_cancelled()
            except Exception:  # noqa: BLE001
                cancelled = False
            if cancelled or (self._deadline is not None and time.perf_counter() >= self._deadline):
                self.reason = "cancelled" if cancelled else "deadline"
                self._stream.abort()
                return

    def stop(self) -> None:
        self._done.set()


def pieces(event: dict) -> Iterator[tuple[int, str, str | None]]:
    """(candidate index, new text, finish reason or None) from one event of either API."""
    choices = event.get("choices")
    if isinstance(choices, list):
        for c in choices:
            if isinstance(c, dict):
                yield int(c.get("index") or 0), str(c.get("text") or ""), c.get("finish_reason")
        return
    if "content" in event:     # llama.cpp's native /infill and /completion
        finish = (event.get("stop_type") or "eos") if event.get("stop") else None
        yield 0, str(event.get("content") or ""), finish


def finish_reason(finish: str, sent_stops: bool) -> StopReason:
    if finish in ("length", "limit"):
        return "max_tokens"
    if finish == "word" or (finish == "stop" and sent_stops):
        return "stop_string"     # with stop strings sent, "stop" may be either; say the likelier
    return "eos"


def read_usage(event: dict, timings: Timings) -> None:
    usage = event.get("usage")
    if isinstance(usage, dict):
        timings.prompt_tokens = int(usage.get("prompt_tokens") or timings.prompt_tokens)
        timings.decode_tokens = int(usage.get("completion_tokens") or timings.decode_tokens)
    t = event.get("timings")      # llama.cpp: how much of the prompt its KV-cache already held
    if isinstance(t, dict) and "prompt_n" in t:
        cached, computed = int(t.get("cache_n") or 0), int(t.get("prompt_n") or 0)
        timings.reused_memory_tokens, timings.computed_tokens = cached, computed
        timings.prompt_tokens = timings.prompt_tokens or cached + computed


def error_text(err: object) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    return str(err)[:300]
