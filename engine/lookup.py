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

from array import array
from typing import Sequence

MAX_NGRAM = 4   # the longest run of last tokens looked up
MIN_NGRAM = 3   # shorter runs match too often by chance: measured, 1 slowed decode down, 2 gained less


class Drafter:
    """The tokens seen so far, searched for the latest earlier occurrence of their last n tokens.

    The ids are kept as 4-byte integers in one bytearray too, so a search is one
    `bytes.rfind` in C (a prompt is thousands of tokens, and a dict of its n-grams
    cost milliseconds to build per request)."""

    def __init__(self, ids: Sequence[int], max_draft: int) -> None:
        self.ids: list[int] = list(ids)
        self.max_draft = max_draft
        self._bytes = bytearray(array("i", self.ids).tobytes())

    def push(self, token: int) -> None:
        self.ids.append(token)
        self._bytes += array("i", (token,)).tobytes()

    def draft(self) -> list[int]:
        """Up to `max_draft` tokens that followed the latest earlier occurrence of the longest matching
        run of last tokens (MAX_NGRAM down to MIN_NGRAM); [] when none of them occurred before."""
        if self.max_draft <= 0:
            return []
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(self.ids) <= n:
                continue
            pattern = bytes(self._bytes[-4 * n:])
            end = 4 * (len(self.ids) - 1)       # an occurrence must be followed by a token
            at = self._bytes.rfind(pattern, 0, end)
            while at > 0 and at % 4:             # a match across token boundaries: look further back
                at = self._bytes.rfind(pattern, 0, at + 4 * n - 1)
            if at >= 0 and at % 4 == 0:
                return self.ids[at // 4 + n:at // 4 + n + self.max_draft]
        return []
