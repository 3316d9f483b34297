"""What `keystroke.status` reports: the server's own latency record next to
the engine's info and stats."""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

from keystroke.engine.api import CompletionResult


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class LatencyRecord:
    """Request-to-response times per feature and how requests ended.

    Thread-safe: the scheduler's worker and the event loop both write here.
    """

    def __init__(self, keep: int = 512) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._latency: dict[str, deque[float]] = {}
        self.outcomes: Counter[str] = Counter()
        self._prompt_tokens = 0
        self._reused_memory = 0
        self._reused_disk = 0
        self._typed_through = 0
        self._cache_hits = 0
        self._engine_calls = 0
        self._decode_ms = 0.0
        self._decode_tokens = 0
        self._decode_passes = 0
        self._last_context: list[dict] = []
        self._context_totals: dict[str, list[int]] = {}  # source -> [prompts it went into, tokens]

    def add_latency(self, feature: str, ms: float) -> None:
        with self._lock:
            self._latency.setdefault(feature, deque(maxlen=self._keep)).append(ms)

    def count(self, outcome: str) -> None:
        """outcome: served, empty, superseded, cancelled, stale, error, refused..."""
        with self._lock:
            self.outcomes[outcome] += 1

    def add_result(self, result: CompletionResult) -> None:
        t = result.timings
        with self._lock:
            self._engine_calls += 1
            self._prompt_tokens += t.prompt_tokens
            self._reused_memory += t.reused_memory_tokens
            self._reused_disk += t.reused_disk_tokens
            self._cache_hits += int(t.response_cache_hit)
            self._decode_ms += t.decode_ms
            self._decode_tokens += t.decode_tokens
            self._decode_passes += t.decode_passes

    def add_typed_through(self) -> None:
        """A request answered from the last suggestion, without the engine."""
        with self._lock:
            self._typed_through += 1

    def add_context(self, provenance: list[dict]) -> None:
        """The provenance of one prompt (`PromptParts.provenance`): which sources went in, how many tokens."""
        with self._lock:
            self._last_context = [dict(e) for e in provenance]
            for e in provenance:
                if e.get("tokens"):
                    total = self._context_totals.setdefault(e["source"], [0, 0])
                    total[0] += 1
                    total[1] += int(e["tokens"])

    def summary(self) -> dict[str, Any]:
        with self._lock:
            latency = {
                feature: {
                    "count": len(values),
                    "p50_ms": _round(percentile(list(values), 50)),
                    "p90_ms": _round(percentile(list(values), 90)),
                    "p99_ms": _round(percentile(list(values), 99)),
                }
                for feature, values in self._latency.items()
            }
            prompt = self._prompt_tokens
            calls = self._engine_calls
            return {
                "latency": latency,
                "outcomes": dict(self.outcomes),
                "reuse": {
                    "engine_calls": calls,
                    "prompt_tokens": prompt,
                    "reused_memory_ratio": _ratio(self._reused_memory, prompt),
                    "reused_disk_ratio": _ratio(self._reused_disk, prompt),
                    "reused_ratio": _ratio(self._reused_memory + self._reused_disk, prompt),
                    "typed_through": self._typed_through,
                    "typed_through_ratio": _ratio(self._typed_through, calls + self._typed_through),
                    "response_cache_hit_ratio": _ratio(self._cache_hits, calls),
                    # one decode step without drafted tokens, less with them (a lower bound of a step):
                    # the most a user request may wait behind speculation
                    "decode_ms_per_token": _round(self._decode_ms / self._decode_tokens)
                    if self._decode_tokens else None,
                    # above 1 where drafted tokens were taken without a pass of their own (engine/lookup.py)
                    "decode_tokens_per_pass": _round(self._decode_tokens / self._decode_passes)
                    if self._decode_passes else None,
                },
                "context": {
                    "last": [dict(e) for e in self._last_context],
                    "sources": {source: {"prompts": n, "mean_tokens": round(tokens / n, 1)}
                                for source, (n, tokens) in sorted(self._context_totals.items())},
                },
            }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else round(a / b, 3)


def status_report(
    *,
    state: str,
    model: str,
    enabled: bool,
    engine_info: dict | None,
    engine_stats: dict | None,
    record: LatencyRecord,
    error: str | None = None,
    acceptance: dict | None = None,
    speculation: dict | None = None,
    in_flight: dict | None = None,
    debounce: dict | None = None,
) -> dict[str, Any]:
    """The `keystroke.status` answer. engine_info is expected to hold
    model, device, dtype; engine_stats the cache sizes; both pass through."""
    info = dict(engine_info or {})
    return {
        "state": state,                  # loading | ready | failed | off
        "enabled": enabled,
        "model": info.get("model", model),
        "device": info.get("device"),
        "dtype": info.get("dtype") or info.get("quant"),
        "error": error,
        "engine": info,
        "engine_stats": dict(engine_stats or {}),
        "server": record.summary(),
        "acceptance": acceptance or {},   # server/acceptance.py: local counts only
        "speculation": speculation or {},  # server/speculation.py
        "in_flight": in_flight or {},      # server/inflight.py
        "debounce": debounce or {},        # server/debounce.py
    }
