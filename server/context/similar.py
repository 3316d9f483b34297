"""Snippets of other documents that look like the code around the cursor.

Each document is cut into overlapping windows of lines; a window's identity
is the set of identifiers in it, and windows are ranked by Jaccard similarity
to the identifiers just above the cursor.
"""
from __future__ import annotations

import functools
import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words too common to say that two pieces of code are alike.
_COMMON = frozenset(
    "self this def return if else elif for while in is not and or None True False import from as class "
    "function const let var new null true false int str void public private static final func fn pub "
    "use mut let struct impl package include std string bool char unsigned long float double auto the a "
    "of to with try except finally catch throw raise pass break continue export default async await".split()
)


def identifiers(text: str) -> frozenset[str]:
    return frozenset(w for w in _IDENT.findall(text) if w not in _COMMON and len(w) > 1)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


@functools.lru_cache(maxsize=256)
def windows(text: str, size: int) -> tuple[tuple[int, int, frozenset[str]], ...]:
    """(start line, end line exclusive, identifiers) for windows of `size` lines, half overlapping."""
    lines = text.split("\n")
    step = max(1, size // 2)
    out = []
    for start in range(0, max(1, len(lines) - step), step):
        end = min(len(lines), start + size)
        ids = identifiers("\n".join(lines[start:end]))
        if ids:
            out.append((start, end, ids))
    return tuple(out)


def best_windows(query: frozenset[str], text: str, size: int, min_score: float) -> list[tuple[float, int, int]]:
    """(score, start, end) of the windows of `text` at least `min_score` alike to `query`, best first."""
    n = len(query)
    scored = []
    for s, e, ids in windows(text, size):
        m = len(ids)
        if min(n, m) < min_score * max(n, m):  # even full overlap could not reach min_score
            continue
        score = jaccard(query, ids)
        if score >= min_score:
            scored.append((score, s, e))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return scored
