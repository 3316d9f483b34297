"""Cache equivalence under fill-in-the-middle: a tiny random Qwen2-family model with FIM tokens.

The default model is a FIM model laid out prefix-suffix-middle with the
cursor's line after `<|fim_middle|>` and the context as `<|file_sep|>` files
(engine/fim.py). Random edit sequences on real standard-library code, a
request at each edit: the warm engine must give the same greedy tokens as
a cold one. And typing within a line must cost only the new tokens: the
suffix's K/V stays valid until the cursor leaves the line.
"""
from __future__ import annotations

import statistics
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystroke.engine import Engine
from keystroke.engine.api import CompletionRequest, ContextFile, StopPolicy
from tests.engine.test_cache_equivalence import edit, replay_and_compare
from tests.tiny import make_tiny_model_dir

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCE = (STDLIB / "colorsys.py").read_text()[:1200]
FILES = (ContextFile("shlex.py", (STDLIB / "shlex.py").read_text()[:400]),)


@pytest.fixture(scope="module")
def fim_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-qwen-fim") / "model", family="qwen2", fim=True,
                               config_overrides={"max_position_embeddings": 4096})


@pytest.fixture(scope="module")
def engines(fim_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("kv-fim")
    warm = Engine.load(fim_model_dir, quant="fp32", cache_dir=d / "warm", response_cache=False)
    cold = Engine.load(fim_model_dir, quant="fp32", cache_dir=d / "cold", response_cache=False, persist=False)
    assert warm.template is not None and warm.template.name == "qwen" and warm.template.file_sep_id >= 0
    return warm, cold


def request(text: str, cursor: int, doc: str = "doc.py", use_cache: bool = True) -> CompletionRequest:
    return CompletionRequest(doc_id=doc, prefix=text[:cursor], suffix=text[cursor:], files=FILES, path="colorsys.py",
                             stop=StopPolicy(max_tokens=6), use_cache=use_cache)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(edit, min_size=1, max_size=6))
def test_warm_equals_cold_after_random_edits_under_fim(engines, ops):
    warm, cold = engines
    replay_and_compare(warm, cold, ops, SOURCE, request, f"fim-{abs(hash(tuple(map(str, ops))))}.py")


def test_typing_within_a_line_costs_only_the_new_tokens(engines):
    warm, _ = engines
    doc = "typing-fim.py"
    at = SOURCE.index("\n", len(SOURCE) // 2) + 1    # the start of a line in the middle: a long suffix follows
    text = SOURCE[:at] + "\n" + SOURCE[at:]
    cursor = at
    warm.complete(request(text, cursor, doc))
    computed = []
    for ch in "def fast(r, g, b): return r + g":
        text, cursor = text[:cursor] + ch + text[cursor:], cursor + 1
        r = warm.complete(request(text, cursor, doc))
        computed.append(r.timings.computed_tokens)
        assert r.timings.prompt_tokens > 300    # header, lines and the suffix were all there, and reused
    # Healing may back up one token and the last prompt token is always rerun.
    assert statistics.median(computed) <= 3 and max(computed) <= 6, computed
