"""Acceptance statistics from document changes alone (server/acceptance.py)."""
from __future__ import annotations

import random

from keystroke.server.acceptance import AcceptanceStats, edited_region

URI = "file:///a.py"
BEFORE, AFTER = "def f(x):\n    return ", "\n\nprint(f(2))\n"
SUGGESTION = "x * 2 + 1\n    # done"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stats_with_shown(texts: list[str] | None = None) -> tuple[AcceptanceStats, Clock]:
    clock = Clock()
    stats = AcceptanceStats(clock=clock)
    doc = BEFORE + AFTER
    stats.shown(URI, doc, len(BEFORE), texts or [SUGGESTION], language_id="python", mode="line")
    return stats, clock


def total(stats: AcceptanceStats) -> dict:
    return stats.summary()["total"]


def test_edited_region_is_the_smallest_replaced_range() -> None:
    rng = random.Random(7)
    for _ in range(500):
        old = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 30)))
        i = rng.randint(0, len(old))
        j = rng.randint(i, len(old))
        ins = "".join(rng.choice("abc") for _ in range(rng.randint(0, 5)))
        new = old[:i] + ins + old[j:]
        start, old_end, new_len = edited_region(old, new)
        assert new == old[:start] + new[start:start + new_len] + old[old_end:]
        assert old_end - start <= j - i and new_len <= len(ins)


def test_accept_whole_counts_one_accept_and_its_characters() -> None:
    stats, _ = stats_with_shown()
    stats.changed(URI, BEFORE + AFTER, BEFORE + SUGGESTION + AFTER)
    t = total(stats)
    assert (t["shown"], t["accepted"], t["accepted_whole"], t["accepted_word"], t["accepted_line"]) == (1, 1, 1, 0, 0)
    assert t["accepted_chars"] == len(SUGGESTION) and t["acceptance_rate"] == 1.0
    assert set(stats.summary()["by_language_mode"]) == {"python/line"}


def test_word_then_line_then_rest() -> None:
    stats, _ = stats_with_shown()
    doc = BEFORE + AFTER
    steps = ["x ", "x * 2 + 1\n", SUGGESTION]      # a word, up to the line's end, the rest
    for taken in steps:
        new = BEFORE + taken + AFTER
        stats.changed(URI, doc, new)
        doc = new
    t = total(stats)
    assert (t["accepted_word"], t["accepted_line"], t["accepted_whole"]) == (1, 1, 1)
    assert t["accepted"] == 1, "one suggestion, accepted in three parts"
    assert t["accepted_chars"] == len(SUGGESTION)


def test_typing_the_suggestion_is_typed_through_not_accepted() -> None:
    stats, _ = stats_with_shown()
    doc = BEFORE + AFTER
    for k in range(1, 5):
        new = BEFORE + SUGGESTION[:k] + AFTER
        stats.changed(URI, doc, new)
        doc = new
    t = total(stats)
    assert t["typed_through"] == 1 and t["accepted"] == 0 and t["accepted_chars"] == 0


def test_other_text_abandons_the_suggestion() -> None:
    stats, _ = stats_with_shown()
    stats.changed(URI, BEFORE + AFTER, BEFORE + "y" + AFTER)
    stats.changed(URI, BEFORE + "y" + AFTER, BEFORE + "y" + SUGGESTION + AFTER)
    t = total(stats)
    assert t["accepted"] == 0 and t["typed_through"] == 0 and t["shown"] == 1


def test_the_candidate_taken_is_found_among_several() -> None:
    stats, _ = stats_with_shown(["x + 1", "x * 3"])
    stats.changed(URI, BEFORE + AFTER, BEFORE + "x * 3" + AFTER)
    assert total(stats)["accepted_whole"] == 1


def test_kept_share_after_30s_and_5min() -> None:
    stats, clock = stats_with_shown()
    doc = BEFORE + SUGGESTION + AFTER
    stats.changed(URI, BEFORE + AFTER, doc)
    assert total(stats)["kept_30s"] is None, "nothing sampled yet"
    # An edit before the accepted text only moves it; deleting 4 of its characters loses them.
    moved = "# top\n" + doc
    stats.changed(URI, doc, moved)
    start = moved.index(SUGGESTION)
    cut = moved[:start] + moved[start + 4:]
    clock.now += 10
    stats.changed(URI, moved, cut)
    clock.now += 25                      # 35 s after the accept
    kept = (len(SUGGESTION) - 4) / len(SUGGESTION)
    assert total(stats)["kept_30s"] == round(kept, 3) and total(stats)["kept_5m"] is None
    # After 30 s the rest is deleted: the 30 s share stays, the 5 min one sees it gone.
    gone = cut.replace(SUGGESTION[4:], "")
    stats.changed(URI, cut, gone)
    clock.now += 300
    t = total(stats)
    assert t["kept_30s"] == round(kept, 3) and t["kept_5m"] == 0.0
    assert stats.summary()["kept_pending"] == 0


def test_sampling_sees_the_document_as_it_was_at_the_delay() -> None:
    stats, clock = stats_with_shown()
    doc = BEFORE + SUGGESTION + AFTER
    stats.changed(URI, BEFORE + AFTER, doc)
    clock.now += 31                      # no status query in between: the next edit samples first
    stats.changed(URI, doc, BEFORE + AFTER)
    assert total(stats)["kept_30s"] == 1.0


def test_a_closed_document_keeps_what_it_had() -> None:
    stats, clock = stats_with_shown()
    stats.changed(URI, BEFORE + AFTER, BEFORE + SUGGESTION + AFTER)
    stats.closed(URI)
    clock.now += 400
    t = total(stats)
    assert t["kept_30s"] == 1.0 and t["kept_5m"] == 1.0


def test_summary_holds_counts_only() -> None:
    stats, _ = stats_with_shown()
    stats.changed(URI, BEFORE + AFTER, BEFORE + SUGGESTION + AFTER)
    flat = repr(stats.summary())
    assert "return" not in flat and "x * 2" not in flat and URI not in flat


def test_accepts_the_client_confirms_are_counted_apart() -> None:
    stats, _ = stats_with_shown()
    stats.changed(URI, BEFORE + AFTER, BEFORE + SUGGESTION + AFTER)
    assert stats.confirmed(URI) and not stats.confirmed("file:///never-shown.py")
    t = total(stats)
    assert t["confirmed"] == 1 and t["accepted"] == 1
