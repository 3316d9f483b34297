"""Answers to identical requests, kept for a while: same prompt ids, same sampling, same candidates.

Only deterministic requests are cached (greedy, or sampled with a seed): a
request that draws fresh randomness each time must get fresh candidates. A
result cut short by time or cancellation depends on the moment, not the
request, so it is not stored either.

Entries live in an in-memory LRU and, when a directory is given, in diskcache
with an expiry (`expire=`), stored as JSON (no pickle).

The disk is only a cache: nothing read from it may break or empty a
completion. A row is used only when it has exactly the shape `put` writes
(anything else is a miss, and dropped), and a database that sqlite finds
corrupt is set aside as `cache.db.corrupt-<time>` and replaced by an empty one
(`open_disk_cache`, `recover_disk_cache`, shared with the KV store).
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
from .disk import is_corruption, open_disk_cache, recover_disk_cache

log = logging.getLogger("keystroke.response_cache")

# Stop reasons that say more about the moment than about the request.
UNSTABLE_REASONS = frozenset({"deadline", "cancelled", "error"})


def _parse_rows(raw: object) -> list[tuple[str, str, int]] | None:
    """The rows of a disk entry, when it is exactly what `put` writes; None for anything else.

    `put` writes the JSON bytes of a non-empty list of [text, stop_reason, tokens].
    A row of `{}` used to come back as a hit with no candidates: an empty completion.
    """
    if not isinstance(raw, bytes):
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, list) or not data:
        return None
    rows = []
    for row in data:
        if not (isinstance(row, list) and len(row) == 3):
            return None
        text, reason, tokens = row
        if not (isinstance(text, str) and isinstance(reason, str) and reason and reason not in UNSTABLE_REASONS
                and type(tokens) is int and tokens >= 0):
            return None
        rows.append((text, reason, tokens))
    return rows


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
        self._counters = {"hits": 0, "misses": 0, "stores": 0, "skipped": 0, "malformed": 0}
        self._settings = {"size_limit": int(disk_budget_mb * 2 ** 20), "eviction_policy": "least-recently-used"}
        self._disk = open_disk_cache(dir, "response cache", log, **self._settings) if dir is not None else None

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
        """Store an answer; False when it may not be reused (no key, cut short, or no candidates)."""
        if key is None or not candidates or any(c.stop_reason in UNSTABLE_REASONS for c in candidates):
            with self._lock:
                self._counters["skipped"] += 1
            return False
        rows = [(c.text, c.stop_reason, c.tokens) for c in candidates]
        with self._lock:
            self._remember(key, rows, time.monotonic() + self.ttl_s)
            self._counters["stores"] += 1
            data = json.dumps(rows).encode()
            self._disk_call("write", lambda disk: disk.set(key, data, expire=self.ttl_s))
        return True

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            self._disk_call("clear", lambda disk: disk.clear())

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

    def _disk_call(self, what: str, op):
        """op(disk), or None when there is no disk or it failed (logged).

        A corrupt database is replaced by an empty one on the spot, so one bad
        file costs one warning, not a failure per request.
        """
        if self._disk is None:
            return None
        try:
            return op(self._disk)
        except Exception as exc:  # noqa: BLE001 - the cache must never fail a request
            if is_corruption(exc):
                self._disk = recover_disk_cache(self._disk, "response cache", exc, log, **self._settings)
            else:
                log.warning("response cache %s failed: %s", what, exc)
            return None

    def _get_disk(self, key: str) -> list | None:
        found = self._disk_call("read", lambda disk: disk.get(key, expire_time=True))
        if found is None:
            return None
        raw, expire_at = found
        if raw is None and not self._disk_call("read", lambda disk: key in disk):
            return None   # absent (a refused value, such as a pickle, reads as None but is there)
        rows = _parse_rows(raw)
        if rows is None:  # a miss, and dropped so that the next answer can take its place
            self._counters["malformed"] += 1
            level = logging.WARNING if self._counters["malformed"] == 1 else logging.DEBUG
            log.log(level, "ignoring an unreadable response cache entry %s… (not what put writes); dropped it",
                    key[:12])
            self._disk_call("delete", lambda disk: disk.delete(key))
            return None
        remaining = (expire_at - time.time()) if expire_at else self.ttl_s
        self._remember(key, rows, time.monotonic() + max(0.0, remaining))
        return rows
