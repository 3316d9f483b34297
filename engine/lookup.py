"""Drafted tokens from the text itself: what followed the last few tokens the last time they occurred.

Code repeats itself: names, call patterns, the line above with one change.
When the last `n` tokens (prompt and generated so far) occurred earlier, the
tokens that followed them there are a guess at what comes next. `generate`
runs the model once on the sampled token and the guess; the rows that the
model would have chosen anyway are kept, so a correct guess of k tokens costs
one model pass instead of k + 1. This is prompt-lookup decoding (Saxena,
2023; llama.cpp's `lookup` example); nothing is learned and no second model
is needed.

Why it pays on a CPU: a decode step reads every weight once for one token;
the same pass over 4 or 8 rows reads them once too (measured on Qwen2.5-Coder
0.5B int8, 2 threads: the int8 products of 4 rows cost about 1.5x those of
one, of 8 rows 1.6x).
"""
from __future__ import annotations

from typing import Sequence

MAX_NGRAM = 4   # the longest run of last tokens looked up
MIN_NGRAM = 3   # shorter runs match too often by chance: measured, 1 slowed decode down, 2 gained less


class Drafter:
    """The tokens seen so far, indexed by every n-gram (MIN_NGRAM..MAX_NGRAM) with its latest position."""

    def __init__(self, ids: Sequence[int], max_draft: int) -> None:
        self.ids: list[int] = []
        self.max_draft = max_draft
        self._after: dict[tuple[int, ...], int] = {}   # n-gram -> index of the token that followed it
        for token in ids:
            self.push(token)

    def push(self, token: int) -> None:
        """Append a token (it follows every n-gram that ends at the current end)."""
        end = len(self.ids)
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            if end >= n:
                self._after[tuple(self.ids[end - n:])] = end
        self.ids.append(token)

    def draft(self) -> list[int]:
        """Up to `max_draft` tokens that followed the latest earlier occurrence of the longest matching
        suffix (longest n first); [] when none of the last MIN_NGRAM.. tokens occurred before."""
        if self.max_draft <= 0:
            return []
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(self.ids) <= n:
                continue
            at = self._after.get(tuple(self.ids[-n:]))
            if at is not None:
                return self.ids[at:at + self.max_draft]
        return []
