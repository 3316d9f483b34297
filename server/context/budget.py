"""Render the header as comments, and fit header, prefix and suffix to their token budgets.

Prefix and suffix are cut at line boundaries that move in steps of
`snap` lines, so the first token of the prompt's prefix stays put while the
user types and the KV-cache behind it survives.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from keystroke.engine import languages

from .types import Snippet

CountTokens = Callable[[str], int]

SECTION_ORDER = ("imports", "signatures", "siblings", "similar")


def comment_marks(language: str) -> tuple[str, str]:
    """(start, end) of a one-line comment in `language`; C-style `//` unless known otherwise."""
    return languages.language(language).comment


def comment_out(text: str, language: str) -> str:
    """Every line of `text` as a comment line, each ending in a newline."""
    start, end = comment_marks(language)
    out = []
    for line in text.split("\n"):
        line = line.rstrip()
        out.append(f"{start} {line}{end}\n" if line else f"{start}{end}\n")
    return "".join(out)


def render_key(s: Snippet) -> tuple:
    """Where a snippet goes in the header: sections in a fixed order, then its stable order."""
    return (SECTION_ORDER.index(s.source) if s.source in SECTION_ORDER else 99, s.order)


def render_header(snippets: list[Snippet], language: str, path_line: str | None = None) -> str:
    """The header text: sections in a fixed order, snippets in their stable order, one heading per group."""
    ordered = sorted(snippets, key=render_key)
    parts: list[str] = []
    last_title = None
    for s in ordered:
        if s.title != last_title:
            parts.append(comment_out(s.title + ":", language))
            last_title = s.title
        parts.append(comment_out(s.text, language))
    if path_line:
        parts.append(comment_out(path_line, language))
    return "".join(parts)


def fit_header(snippets: list[Snippet], budget: int, count_tokens: CountTokens, language: str,
               path_line: str | None = None, priority: tuple[str, ...] = SECTION_ORDER,
               post: Callable[[str], str] = lambda h: h) -> tuple[str, list[Snippet]]:
    """The best header within `budget` tokens, and the snippets in it.

    Snippets are taken greedily by source priority then rank; what does not
    fit is skipped (a smaller one later may still fit). The rendered header is
    counted again at the end (after `post`, e.g. secret redaction) and
    trimmed until it truly fits.
    """
    if budget <= 0:
        return "", []
    ranked = sorted(snippets, key=lambda s: (priority.index(s.source) if s.source in priority else 99, -s.rank, s.order))
    used = line_tokens(comment_out(path_line, language), count_tokens) if path_line else 0
    if used > budget:
        path_line, used = None, 0
    chosen: list[Snippet] = []
    titles: set[str] = set()
    for s in ranked:
        cost = line_tokens(comment_out(s.text, language), count_tokens)
        if s.title not in titles:
            cost += line_tokens(comment_out(s.title + ":", language), count_tokens)
        if used + cost <= budget:
            chosen.append(s)
            titles.add(s.title)
            used += cost
    header = post(render_header(chosen, language, path_line))
    while chosen and count_tokens(header) > budget:
        chosen.pop()
        header = post(render_header(chosen, language, path_line))
    if count_tokens(header) > budget:
        header = ""
        chosen = []
    return header, chosen


_line_counts: "OrderedDict[tuple[CountTokens, str], int]" = OrderedDict()
_text_counts: "OrderedDict[tuple[CountTokens, str], int]" = OrderedDict()


def _counted(memo: "OrderedDict[tuple[CountTokens, str], int]", limit: int, text: str,
             count_tokens: CountTokens) -> int:
    """count_tokens(text) through `memo`, which keeps the `limit` newest counts."""
    key = (count_tokens, text)
    n = memo.get(key)
    if n is None:
        n = memo[key] = count_tokens(text)
        if len(memo) > limit:
            memo.popitem(last=False)
    return n


def line_tokens(line: str, count_tokens: CountTokens) -> int:
    """count_tokens(line) through a cache: between keystrokes only the edited line is new."""
    return _counted(_line_counts, 50_000, line, count_tokens)


def text_tokens(text: str, count_tokens: CountTokens) -> int:
    """count_tokens(text) for long texts, remembering the last few (a trim counts, the caller counts again)."""
    return _counted(_text_counts, 8, text, count_tokens)


def trim_prefix(text: str, budget: int, count_tokens: CountTokens, snap: int = 1,
                first_line: int = 0) -> tuple[str, int]:
    """The end of `text` (the document before the cursor) within `budget` tokens, and its first line's number.

    Whole lines are dropped from the top; the cut line is rounded up to a
    multiple of `snap` (counting from document line 0, where `text` starts
    at document line `first_line`) so it moves only every `snap` lines. When
    even the cursor's line does not fit, its tail is kept. The returned line
    number is relative to `text`.
    """
    if budget <= 0:
        return "", text.count("\n")
    if len(text) <= budget * 8 and text_tokens(text, count_tokens) <= budget:
        return text, 0
    lines = text.split("\n")
    last = len(lines) - 1

    def cost(i: int) -> int:
        return line_tokens(lines[i] + ("\n" if i < last else ""), count_tokens)

    # Greedy on per-line counts, then correct with exact counts of the joined text.
    used, first = 0, last + 1
    while first > 0 and used + cost(first - 1) <= budget:
        used += cost(first - 1)
        first -= 1
    snap = _snap_for(snap, last - first)
    if snap > 1 and first <= last:
        # Round the cut up to the grid: one exact count then usually confirms it.
        snapped = -(-(first + first_line) // snap) * snap - first_line
        if snapped <= last:
            first = snapped
    elif first <= last:
        # No grid: per-line counts overcount where a line break merges with indentation, so widen.
        exact = text_tokens("\n".join(lines[first:]), count_tokens)
        for _ in range(4):
            slack, grow = budget - exact, 0
            while first - grow > 0 and cost(first - grow - 1) <= slack:
                slack -= cost(first - grow - 1)
                grow += 1
            wider = text_tokens("\n".join(lines[first - grow:]), count_tokens) if grow else budget + 1
            if wider > budget:
                break
            first, exact = first - grow, wider
    while first <= last:
        kept = "\n".join(lines[first:])
        if text_tokens(kept, count_tokens) <= budget:
            return kept, first
        first += 1
    return _tail_chars(lines[last], budget, count_tokens), last


def trim_suffix(text: str, budget: int, count_tokens: CountTokens, snap: int = 1, first_line: int = 0) -> str:
    """The start of `text` (the document after the cursor) within `budget` tokens, cut at a line end.

    `first_line` is the document line the suffix starts on, so that the cut
    falls on the same multiples of `snap` as the document's lines.
    """
    if budget <= 0:
        return ""
    if len(text) <= budget * 8 and text_tokens(text, count_tokens) <= budget:
        return text
    lines = text.split("\n")

    def cost(i: int) -> int:
        return line_tokens(lines[i] + "\n", count_tokens)

    def joined(n: int) -> str:
        return "\n".join(lines[:n]) + ("\n" if n < len(lines) else "")

    used, n = 0, 0
    while n < len(lines) and used + cost(n) <= budget:
        used += cost(n)
        n += 1
    snap = _snap_for(snap, n)
    if snap > 1 and n > 1:
        end_line = first_line + n
        snapped = end_line - end_line % snap - first_line
        if snapped >= 1:
            n = snapped
    elif n:
        exact = text_tokens(joined(n), count_tokens)
        for _ in range(4):
            slack, grow = budget - exact, 0
            while n + grow < len(lines) and cost(n + grow) <= slack:
                slack -= cost(n + grow)
                grow += 1
            wider = text_tokens(joined(n + grow), count_tokens) if grow else budget + 1
            if wider > budget:
                break
            n, exact = n + grow, wider
    while n > 0:
        kept = joined(n)
        if text_tokens(kept, count_tokens) <= budget:
            return kept
        n -= 1
    return _head_chars(lines[0], budget, count_tokens)


def _snap_for(snap: int, fitting_lines: int) -> int:
    """The snap step to use: halved until it is at most half the lines that fit.

    Halving keeps the grid nested (multiples of 8 are multiples of 4), so a
    cut often stays put when the step changes.
    """
    while snap > 1 and snap * 2 > fitting_lines:
        snap //= 2
    return snap


def _tail_chars(line: str, budget: int, count_tokens: CountTokens) -> str:
    lo, hi = 0, len(line)  # find the longest tail that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(line[len(line) - mid:]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return line[len(line) - lo:] if lo else ""


def _head_chars(line: str, budget: int, count_tokens: CountTokens) -> str:
    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(line[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return line[:lo]
