"""Answers to identical requests, kept for a while: same prompt ids, same sampling, same candidates.

Only deterministic requests are cached (greedy, or sampled with a seed): a
request that draws fresh randomness each time must get fresh candidates. A
result cut short by time or cancellation depends on the moment, not the
request, so it is not stored either.

Entries live in an in-memory LRU and, when a directory is given, in diskcache
with an expiry (`expire=`), stored as JSON (no pickle).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..api import Candidate, SamplingParams, StopPolicy

log = logging.getLogger("keystroke.response_cache")

# Stop reasons that say more about the moment than about the request.
UNSTABLE_REASONS = frozenset({"deadline", "cancelled", "error"})


def is_deterministic(sampling: SamplingParams) -> bool:
    """Greedy decoding, or sampling from a fixed seed."""
    return sampling.temperature <= 0 or sampling.seed is not None


def make_key(model_fingerprint: str, prompt_tokens: list[int], sampling: SamplingParams,
             stop: StopPolicy, n: int, *, extra: str = "") -> str | None:
    """The cache key of a request, or None when its answer may not be reused.

    `deadline_ms` is left out: it only matters when it cut the answer short,
    and such answers are never stored.
    """
    if not is_deterministic(sampling):
        return None
    stop_fields = dataclasses.asdict(stop)
    stop_fields.pop("deadline_ms", None)
    header = json.dumps({"model": model_fingerprint, "sampling": dataclasses.asdict(sampling),
                         "stop": stop_fields, "n": n, "extra": extra}, sort_keys=True, default=list)
    h = hashlib.sha256(header.encode())
    h.update(b"\0")
    h.update(np.asarray(prompt_tokens, dtype="<i8").tobytes())
    return h.hexdigest()


class ResponseCache:
    """Thread-safe LRU of candidates with a time-to-live, optionally backed by disk."""

    def __init__(self, dir: Path | None = None, ttl_s: float = 600, max_entries: int = 256,
                 disk_budget_mb: float = 64) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._mem: OrderedDict[str, tuple[float, list[tuple[str, str, int]]]] = OrderedDict()
        self._counters = {"hits": 0, "misses": 0, "stores": 0, "skipped": 0}
        self._disk = None
        if dir is not None:
            try:
                import diskcache

                self._disk = diskcache.Cache(str(dir), size_limit=int(disk_budget_mb * 2 ** 20),
                                             eviction_policy="least-recently-used")
            except Exception as exc:  # noqa: BLE001
                log.warning("response cache directory %s cannot be used (%s); memory only", dir, exc)

    make_key = staticmethod(make_key)

    def get(self, key: str | None) -> list[Candidate] | None:
        if key is None:
            return None
        with self._lock:
            rows = self._get_memory(key)
            if rows is None and self._disk is not None:
                rows = self._get_disk(key)
            if rows is None:
                self._counters["misses"] += 1
                return None
            self._counters["hits"] += 1
            return [Candidate(text=t, stop_reason=r, tokens=k) for t, r, k in rows]

    def put(self, key: str | None, candidates: list[Candidate]) -> bool:
        """Store an answer; False when it may not be reused (no key, or cut short)."""
        if key is None or any(c.stop_reason in UNSTABLE_REASONS for c in candidates):
            with self._lock:
                self._counters["skipped"] += 1
            return False
        rows = [(c.text, c.stop_reason, c.tokens) for c in candidates]
        with self._lock:
            self._remember(key, rows, time.monotonic() + self.ttl_s)
            self._counters["stores"] += 1
            if self._disk is not None:
                try:
                    self._disk.set(key, json.dumps(rows).encode(), expire=self.ttl_s)
                except Exception as exc:  # noqa: BLE001
                    log.warning("response cache write failed: %s", exc)
        return True

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            if self._disk is not None:
                try:
                    self._disk.clear()
                except Exception as exc:  # noqa: BLE001
                    log.warning("response cache clear failed: %s", exc)

    def stats(self) -> dict:
        with self._lock:
            return {**self._counters, "entries": len(self._mem)}

    def _remember(self, key: str, rows: list, expires: float) -> None:
        self._mem[key] = (expires, rows)
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_entries:
            self._mem.popitem(last=False)

    def _get_memory(self, key: str) -> list | None:
        item = self._mem.get(key)
        if item is None:
            return None
        expires, rows = item
        if time.monotonic() >= expires:
            del self._mem[key]
            return None
        self._mem.move_to_end(key)
        return rows

    def _get_disk(self, key: str) -> list | None:
        try:
            raw, expire_at = self._disk.get(key, expire_time=True)
            if raw is None:
                return None
            rows = [(str(t), str(r), int(k)) for t, r, k in json.loads(raw)]
        except Exception as exc:  # noqa: BLE001 - a corrupt row is a miss
            log.warning("ignoring unreadable response cache entry: %s", exc)
            self._disk.delete(key)
            return None
        remaining = (expire_at - time.time()) if expire_at else self.ttl_s
        self._remember(key, rows, time.monotonic() + max(0.0, remaining))
        return rows
