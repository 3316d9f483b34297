"""Acceptance statistics, local only: how often suggestions help.

Counts per language and stop mode (`python/line`): suggestions shown;
accepts in whole, by word and by line; suggestions typed through (the user
typed what was suggested instead of accepting it); and the share of the
accepted characters still in the document 30 s and 5 min after the accept.

Everything is inferred from `didChange`, which every client sends: after a
suggestion for the text `before|after` was shown, a document that reads
`before + s[:k] + after` has taken `k` characters of the suggestion `s`. A
step of one character is typing; a step of several at once is an accept,
counted as whole when it reaches the end of `s`, by line when it stops at a
line break, else by word. Any other document abandons the suggestion.

Accepted characters are followed through later edits as intervals of the
document: an edit that overwrites or deletes part of an interval takes those
characters out; edits elsewhere shift them. The share kept is sampled when
its delay has passed, lazily, before the next edit or status query, which
sees the document exactly as it was at that moment.

Clients that run an inline item's command after inserting it (LSP 3.18)
report their accepts too: `confirmed` counts those, beside the inferred ones.

Nothing is stored but counts and offsets (the suggestions themselves are
already held by the server to answer typing-through), and nothing leaves the
process: `summary()` goes into `keystroke.status`.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

KEPT_AFTER_S: tuple[float, ...] = (30.0, 300.0)
KEPT_NAMES = {30.0: "kept_30s", 300.0: "kept_5m"}
COUNTS = ("shown", "accepted", "accepted_whole", "accepted_word", "accepted_line", "typed_through",
          "accepted_chars", "confirmed")


@dataclass
class _Pending:
    """The suggestions last shown for a document and how far the document has taken them."""

    key: str
    before: str
    after: str
    texts: tuple[str, ...]
    progress: int = 0
    accepted: bool = False
    typed: bool = False


@dataclass
class _Span:
    """Accepted characters, as intervals [start, end) of the document as it is now."""

    key: str
    at: float
    chars: int
    intervals: list[list[int]]
    frozen: bool = False
    sampled: set[float] = field(default_factory=set)

    def kept(self) -> int:
        return sum(b - a for a, b in self.intervals)

    def edit(self, start: int, old_end: int, new_len: int) -> None:
        """The document's [start, old_end) was replaced by `new_len` characters."""
        shift = new_len - (old_end - start)
        out = []
        for a, b in self.intervals:
            if b <= start:                      # wholly before the edit
                out.append([a, b])
            elif a >= old_end:                  # wholly after: moves
                out.append([a + shift, b + shift])
            else:                               # overlaps: what the edit covered is gone
                if a < start:
                    out.append([a, start])
                if b > old_end:
                    out.append([start + new_len, b + shift])
        self.intervals = [iv for iv in out if iv[1] > iv[0]]


def edited_region(old: str, new: str) -> tuple[int, int, int]:
    """(start, old_end, new_len): the smallest region of `old` that `new` replaced.

    Binary search on slice equality: a few C-speed comparisons, not a Python
    loop over a large document."""
    n = min(len(old), len(new))
    lo, hi = 0, n                       # common prefix length in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old[lo:mid] == new[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    prefix = lo
    room = n - prefix
    lo, hi = 0, room                    # common suffix length, not overlapping the prefix
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old[len(old) - mid:len(old) - lo] == new[len(new) - mid:len(new) - lo]:
            lo = mid
        else:
            hi = mid - 1
    suffix = lo
    return prefix, len(old) - suffix, len(new) - suffix - prefix


def _kind(text: str, end: int) -> str:
    if end >= len(text):
        return "accepted_whole"
    if text[end - 1] == "\n" or text[end] == "\n":
        return "accepted_line"
    return "accepted_word"


class AcceptanceStats:
    """The counts of one server session. Thread-safe; call `changed` after each didChange."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 kept_after: tuple[float, ...] = KEPT_AFTER_S) -> None:
        self._clock = clock
        self._kept_after = tuple(kept_after)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._last_key: dict[str, str] = {}     # uri -> language/mode of the last suggestion shown
        self._spans: dict[str, list[_Span]] = defaultdict(list)
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
        # key -> delay -> [characters kept, characters accepted]
        self._kept: dict[str, dict[float, list[int]]] = defaultdict(lambda: {d: [0, 0] for d in self._kept_after})

    def shown(self, uri: str, text: str, offset: int, suggestions: list[str], *, language_id: str,
              mode: str) -> None:
        """The model's suggestions for `text` at `offset` reached the client (replaces any earlier ones)."""
        texts = tuple(t for t in suggestions if t)
        if not texts:
            return
        key = f"{language_id or 'plaintext'}/{mode}"
        with self._lock:
            self._pending[uri] = _Pending(key, text[:offset], text[offset:], texts)
            self._last_key[uri] = key
            self._counts[key]["shown"] += 1

    def changed(self, uri: str, old: str, new: str) -> None:
        """The document at `uri` went from `old` to `new` (one didChange)."""
        if old == new:
            return
        with self._lock:
            self._sample(self._clock())
            start, old_end, new_len = edited_region(old, new)
            for span in self._spans.get(uri, ()):
                if not span.frozen:
                    span.edit(start, old_end, new_len)
            pending = self._pending.get(uri)
            if pending is not None:
                self._follow(uri, pending, new)

    def closed(self, uri: str) -> None:
        """The document closed: its accepted characters stay as they were last seen."""
        with self._lock:
            self._pending.pop(uri, None)
            self._last_key.pop(uri, None)
            for span in self._spans.get(uri, ()):
                span.frozen = True

    def confirmed(self, uri: str) -> bool:
        """The client ran an item's command after inserting it (LSP 3.18 `InlineCompletionItem.command`):
        an accept it reports itself, counted apart from the ones inferred from its edits. False when
        nothing was shown for `uri`."""
        with self._lock:
            key = self._last_key.get(uri)
            if key is None:
                return False
            self._counts[key]["confirmed"] += 1
            return True

    def forget_pending(self, uri: str) -> None:
        with self._lock:
            self._pending.pop(uri, None)

    def _follow(self, uri: str, p: _Pending, new: str) -> None:
        base, tail = len(p.before), len(p.after)
        taken = len(new) - base - tail
        best = None
        if taken >= 0 and new.startswith(p.before) and new.endswith(p.after):
            middle = new[base:base + taken]
            best = next((t for t in p.texts if t.startswith(middle)), None)
        if best is None:
            del self._pending[uri]          # the user went elsewhere
            return
        step = taken - p.progress
        counts = self._counts[p.key]
        if step == 1:
            if not p.typed:
                counts["typed_through"] += 1
                p.typed = True
        elif step > 1:
            counts[_kind(best, taken)] += 1
            counts["accepted_chars"] += step
            if not p.accepted:
                counts["accepted"] += 1
                p.accepted = True
            self._spans[uri].append(_Span(p.key, self._clock(), step, [[base + p.progress, base + taken]]))
        p.progress = taken
        p.texts = (best,)
        if taken == len(best):
            del self._pending[uri]

    def _sample(self, now: float) -> None:
        """Record the share kept of every span whose delay has passed (under the lock)."""
        for uri, spans in list(self._spans.items()):
            for span in spans:
                for delay in self._kept_after:
                    if delay not in span.sampled and now - span.at >= delay:
                        span.sampled.add(delay)
                        kept = self._kept[span.key][delay]
                        kept[0] += span.kept()
                        kept[1] += span.chars
            left = [s for s in spans if len(s.sampled) < len(self._kept_after)]
            if left:
                self._spans[uri] = left
            else:
                del self._spans[uri]

    def summary(self) -> dict:
        """Counts per `language/mode` and in total; kept shares are None until one is sampled."""
        with self._lock:
            self._sample(self._clock())
            keys = sorted(set(self._counts) | set(self._kept))
            per = {k: self._row(dict(self._counts[k]) if k in self._counts else dict.fromkeys(COUNTS, 0),
                                self._kept.get(k, {})) for k in keys}
            total_counts = {c: sum(self._counts[k][c] for k in self._counts) for c in COUNTS}
            total_kept = {d: [sum(self._kept[k][d][i] for k in self._kept) for i in (0, 1)]
                          for d in self._kept_after}
            pending_kept = sum(1 for spans in self._spans.values() for _ in spans)
        return {"total": self._row(total_counts, total_kept), "by_language_mode": per,
                "kept_pending": pending_kept}

    def _row(self, counts: dict[str, int], kept: dict[float, list[int]]) -> dict:
        row: dict = dict(counts)
        row["acceptance_rate"] = round(counts["accepted"] / counts["shown"], 3) if counts["shown"] else None
        for delay in self._kept_after:
            name = KEPT_NAMES.get(delay, f"kept_{delay:g}s")
            k = kept.get(delay, [0, 0])
            row[name] = round(k[0] / k[1], 3) if k[1] else None
        return row
