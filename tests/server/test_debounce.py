"""The adaptive debounce (server/debounce.py) and how `debounceMs` overrides it."""
from __future__ import annotations

import pytest

from keystroke.server.config import Config, parse_config
from keystroke.server.debounce import START_MS, TypingPace


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def typed(pace: TypingPace, clock: Clock, intervals_ms: list[float]) -> None:
    pace.keystroke()
    for ms in intervals_ms:
        clock.now += ms / 1000
        pace.keystroke()


def test_starts_at_the_default_until_it_knows_the_pace() -> None:
    clock = Clock()
    pace = TypingPace(clock=clock)
    typed(pace, clock, [100, 100])
    assert pace.debounce_ms(20, 300) == START_MS


def test_follows_the_users_intervals_within_bounds() -> None:
    clock = Clock()
    fast, slow = TypingPace(clock=clock), TypingPace(clock=Clock())
    typed(fast, clock, [60, 70, 80, 90, 65, 75])
    assert 70 <= fast.debounce_ms(20, 300) <= 90
    typed(slow, slow._clock, [400, 500, 450, 600, 550])
    assert slow.debounce_ms(20, 300) == 300, "bounded above"
    assert fast.debounce_ms(100, 300) == 100, "bounded below"


def test_pauses_are_not_typing_intervals() -> None:
    clock = Clock()
    pace = TypingPace(clock=clock)
    typed(pace, clock, [80, 5000, 80, 80, 80, 60_000, 80])
    assert pace.intervals() == 5 and pace.debounce_ms(20, 300) == pytest.approx(80)


def test_the_window_forgets_old_pace() -> None:
    clock = Clock()
    pace = TypingPace(window=8, clock=clock)
    typed(pace, clock, [250] * 8 + [60] * 8)
    assert pace.debounce_ms(20, 300) == pytest.approx(60)


def test_debounce_ms_sets_a_fixed_value_and_null_means_adaptive() -> None:
    cfg, warnings = parse_config({"debounceMs": 120, "debounceMinMs": 10, "debounceMaxMs": 200}, Config())
    assert not warnings and (cfg.debounce_ms, cfg.debounce_min_ms, cfg.debounce_max_ms) == (120, 10, 200)
    cfg, warnings = parse_config({"debounceMs": None}, cfg)
    assert not warnings and cfg.debounce_ms is None
    assert Config().debounce_ms is None, "adaptive by default"
