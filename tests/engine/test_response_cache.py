"""ResponseCache: identical deterministic requests get the stored candidates, for a while."""
from __future__ import annotations

import logging
import time

import pytest

from keystroke.engine.api import Candidate, SamplingParams, StopPolicy
from keystroke.engine.cache.responses import ResponseCache, make_key

GREEDY = SamplingParams()
STOP = StopPolicy(max_tokens=16, mode="line")
ANSWER = [Candidate("return x", "line", 3), Candidate("pass", "eos", 1)]


def key(**kw):
    args = dict(model_fingerprint="m", prompt_tokens=[1, 2, 3], sampling=GREEDY, stop=STOP, n=2)
    args.update(kw)
    return make_key(**args)


def test_key_depends_on_everything_that_changes_the_answer():
    base = key()
    variants = [key(model_fingerprint="other"), key(prompt_tokens=[1, 2, 4]), key(prompt_tokens=[1, 2]),
                key(sampling=SamplingParams(temperature=0.5, seed=1)), key(stop=StopPolicy(max_tokens=17)),
                key(stop=StopPolicy(max_tokens=16, mode="line", stop_strings=("\n\n",))), key(n=1)]
    assert base is not None and None not in variants
    assert len({base, *variants}) == len(variants) + 1
    assert key(stop=StopPolicy(max_tokens=16, mode="line", deadline_ms=50.0)) == base


def test_unseeded_sampling_is_never_cached():
    cache = ResponseCache(None)
    sampled = key(sampling=SamplingParams(temperature=0.8))
    assert sampled is None
    assert not cache.put(sampled, ANSWER)
    assert cache.get(sampled) is None
    assert key(sampling=SamplingParams(temperature=0.8, seed=7)) is not None


def test_hit_and_miss_in_memory():
    cache = ResponseCache(None)
    k = key()
    assert cache.get(k) is None
    assert cache.put(k, ANSWER)
    got = cache.get(k)
    assert got == ANSWER and got[0] is not ANSWER[0]  # copies: callers may change them
    assert cache.get(key(prompt_tokens=[9])) is None
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"]) == (1, 2, 1)


def test_answers_cut_short_by_time_or_cancellation_are_not_stored():
    cache = ResponseCache(None)
    for reason in ("deadline", "cancelled", "error"):
        assert not cache.put(key(), [Candidate("ret", reason, 1)])
    assert cache.get(key()) is None


@pytest.mark.parametrize("on_disk", [False, True])
def test_entries_expire_after_ttl(tmp_path, on_disk):
    cache = ResponseCache(tmp_path if on_disk else None, ttl_s=0.2)
    cache.put(key(), ANSWER)
    assert cache.get(key()) == ANSWER
    time.sleep(0.3)
    assert cache.get(key()) is None
    if on_disk:
        assert ResponseCache(tmp_path, ttl_s=0.2).get(key()) is None


def test_disk_entries_survive_a_restart_and_clear_drops_them(tmp_path):
    ResponseCache(tmp_path).put(key(), ANSWER)
    restarted = ResponseCache(tmp_path)
    assert restarted.get(key()) == ANSWER
    restarted.clear()
    assert restarted.get(key()) is None
    assert ResponseCache(tmp_path).get(key()) is None


def test_memory_lru_keeps_max_entries():
    cache = ResponseCache(None, max_entries=2)
    keys = [key(prompt_tokens=[i]) for i in range(3)]
    cache.put(keys[0], ANSWER)
    cache.put(keys[1], ANSWER)
    cache.get(keys[0])  # now keys[1] is the least recently used
    cache.put(keys[2], ANSWER)
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) == ANSWER and cache.get(keys[2]) == ANSWER


def test_corrupt_disk_row_is_a_logged_miss(tmp_path, caplog):
    cache = ResponseCache(tmp_path)
    cache.put(key(), ANSWER)
    cache._disk.set(key(), b"\xff{not json")
    with caplog.at_level(logging.WARNING, logger="keystroke.response_cache"):
        assert ResponseCache(tmp_path).get(key()) is None
    assert "unreadable" in caplog.text
