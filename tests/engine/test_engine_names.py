"""Engine: at a blank Python line above code that reads an undefined name, the answer that defines it.

A tiny random Qwen2-family FIM model (tests/tiny.py) runs the real engine; what each model run was
asked is recorded by wrapping `Engine._complete_once`. A random model almost never writes `counts =`
by itself, so the typed requests are exercised; what they return is judged by `names.defines`.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from keystroke.engine import Engine
from keystroke.engine.api import CompletionRequest, StopPolicy
from keystroke.engine.names import defines, missing_line
from tests.engine.test_names import ABOVE, BELOW
from tests.tiny import make_tiny_model_dir


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    d = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-qwen-names") / "model", family="qwen2", fim=True)
    kv = tmp_path_factory.mktemp("kv-names")
    warm = Engine.load(d, quant="fp32", cache_dir=kv / "warm", response_cache=False)
    cold = Engine.load(d, quant="fp32", cache_dir=kv / "cold", response_cache=False, persist=False)
    return warm, cold


def asked(engine: Engine, monkeypatch) -> list[str]:
    """The prefixes of the model runs `engine` makes from now on."""
    prefixes: list[str] = []
    once = engine._complete_once

    def spy(req, started):
        prefixes.append(req.prefix)
        return once(req, started)
    monkeypatch.setattr(engine, "_complete_once", spy)
    return prefixes


def request(language: str = "python", n: int = 1, use_cache: bool = True, prefix: str = ABOVE) -> CompletionRequest:
    return CompletionRequest(doc_id="words.py", prefix=prefix, suffix=BELOW, n=n, use_cache=use_cache,
                             stop=StopPolicy(max_tokens=8, mode="line", language_id=language))


def test_the_typed_name_is_asked_for_and_kept_only_when_it_defines_the_name(engines, monkeypatch):
    warm, _ = engines
    first = warm.complete(request(use_cache=False)).text
    prefixes = asked(warm, monkeypatch)
    result = warm.complete(request(use_cache=False))
    typed = missing_line(ABOVE, BELOW, "python").typings()
    if defines(first.split("\n")[0], "counts"):
        assert prefixes == [ABOVE]
        return
    assert prefixes == [ABOVE] + [ABOVE + t for t in typed][: len(prefixes) - 1]
    if result.text == first:      # no typing gave a definition: every one was tried, the first answer stays
        assert len(prefixes) == 1 + len(typed)
    else:                         # the typing that defined it, the typed text kept
        assert result.text.startswith(typed[len(prefixes) - 2])
        assert defines(result.text.split("\n")[0], "counts")


def test_other_languages_several_candidates_and_typed_lines_run_once(engines, monkeypatch):
    warm, _ = engines
    for req in (request(language="javascript"), request(n=3), request(prefix=ABOVE + "    x")):
        prefixes = asked(warm, monkeypatch)
        warm.complete(req)
        assert prefixes == [req.prefix]


def test_warm_equals_cold_with_the_typed_requests(engines):
    warm, cold = engines
    for _ in range(2):   # the second time from the document's cache
        assert warm.complete(request()).text == cold.complete(request(use_cache=False)).text
