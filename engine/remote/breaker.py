"""A circuit breaker: stop calling a server that is down, and notice when it is back.

States, as `stats()` shows them:

- "up": requests go through. Each failure (after its retries) counts; a
  success resets the count. `threshold` failures in a row turn it "down".
- "down": requests are refused at once, without touching the network,
  until `cooldown_s` has passed; then the next request is let through as a
  probe and the state is "probing".
- "probing": exactly one request is in flight to test the server; others
  are refused. Its success makes the breaker "up" again; its failure makes
  it "down" with the cool-down doubled (up to `max_cooldown_s`), so a server
  that stays down costs one attempt per cool-down, not one per keystroke.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Literal

State = Literal["up", "down", "probing"]


class CircuitBreaker:
    def __init__(self, threshold: int = 3, cooldown_s: float = 5.0, max_cooldown_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max(max_cooldown_s, cooldown_s)
        self.clock = clock
        self.state: State = "up"
        self.failures = 0            # consecutive
        self.last_error: str | None = None
        self.cooldown_s = cooldown_s
        self.retry_at = 0.0          # clock time when a "down" breaker lets a probe through
        self.times_opened = 0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether a request may go to the server now (a True in "down" starts a probe)."""
        with self._lock:
            if self.state == "up":
                return True
            if self.state == "down" and self.clock() >= self.retry_at:
                self.state = "probing"
                return True
            return False

    def success(self) -> bool:
        """Record a success; True when this brought the server back."""
        with self._lock:
            recovered = self.state != "up"
            self.state, self.failures, self.cooldown_s = "up", 0, self.base_cooldown_s
            return recovered

    def failure(self, error: str) -> bool:
        """Record a failure; True when this turned the breaker "down"."""
        with self._lock:
            self.failures += 1
            self.last_error = error
            if self.state == "probing":
                self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
                self._open()
                return False   # it was already down: nothing new to tell the user
            if self.state == "up" and self.failures >= self.threshold:
                self.cooldown_s = self.base_cooldown_s
                self._open()
                self.times_opened += 1
                return True
            return False

    def release(self) -> None:
        """A probe that ended without a verdict (cancelled): let the next request probe."""
        with self._lock:
            if self.state == "probing":
                self.state, self.retry_at = "down", self.clock()

    def seconds_until_probe(self) -> float:
        with self._lock:
            return max(0.0, self.retry_at - self.clock()) if self.state == "down" else 0.0

    def _open(self) -> None:
        self.state = "down"
        self.retry_at = self.clock() + self.cooldown_s
