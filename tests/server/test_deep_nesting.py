"""Deeply nested brackets cost linear time on the paths a keystroke or a code action takes.

100,000 nested brackets (200 KB) once blocked the event loop for seconds:
every closer searched the whole stack of open brackets.
"""
from __future__ import annotations

import time

import pytest

from keystroke.server.actions import find_actions
from keystroke.server.postprocess import postprocess
from keystroke.server.syntax import choose_mode

DEPTH = 100_000
DOCS = {
    "balanced": "x = " + "(" * DEPTH + "1" + ")" * DEPTH + "\n",
    "mismatched": "x = " + "(" * DEPTH + "]" * DEPTH + "\n",
    "one per line": "x = " + "[\n" * (DEPTH // 2) + "]\n" * (DEPTH // 2),
}


def fast(call) -> None:
    t0 = time.perf_counter()
    call()
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("name", DOCS)
@pytest.mark.parametrize("where", [0.5, 1.0])
def test_mode_choice_postprocess_and_code_actions_stay_fast(name, where):
    doc = DOCS[name]
    cursor = int(len(doc) * where) - (where == 1.0)  # the middle, or before the last newline
    prefix, suffix = doc[:cursor], doc[cursor:]
    fast(lambda: choose_mode(prefix, suffix, "python"))
    fast(lambda: postprocess("1)\n" + ")" * 40 + "\n  y", prefix=prefix, suffix=suffix, mode="block"))
    fast(lambda: postprocess(")" * 60, prefix=prefix, suffix=suffix, mode="line"))
    fast(lambda: find_actions(doc, "python", cursor, cursor))
    fast(lambda: find_actions(doc, "javascript", cursor, cursor))
