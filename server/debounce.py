"""How long an Automatic request waits before the model runs, from the user's own typing.

A request that fires between two keystrokes of a burst is wasted work, and
waiting too long is latency the user feels. The right pause depends on the
person: `TypingPace` keeps their last intervals between document changes
(pauses over `PAUSE_S` are not typing) and waits a little longer than most
of them (their 75th percentile), within the configured bounds. Until it has
seen a few intervals it waits `START_MS`. A configured `debounceMs` replaces
all of this with a fixed value.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from keystroke.server.metrics import percentile

PAUSE_S = 1.5          # a longer gap is a pause, not a typing interval
MIN_INTERVALS = 4      # intervals seen before the pace is trusted
START_MS = 50.0        # the wait until then
QUANTILE = 75          # wait longer than this share of the user's intervals


class TypingPace:
    """The user's recent typing intervals (all documents: a pace is a person's). Thread-safe."""

    def __init__(self, window: int = 16, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._intervals: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self._lock = threading.Lock()

    def keystroke(self) -> None:
        """A document changed (one didChange)."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last <= PAUSE_S:
                self._intervals.append((now - self._last) * 1000)
            self._last = now

    def debounce_ms(self, lo: float, hi: float) -> float:
        """The wait before an Automatic request runs, within [lo, hi]."""
        with self._lock:
            intervals = list(self._intervals)
        wait = START_MS if len(intervals) < MIN_INTERVALS else percentile(intervals, QUANTILE)
        return float(min(hi, max(lo, wait)))

    def intervals(self) -> int:
        with self._lock:
            return len(self._intervals)
