"""Drafted tokens on the real default model (int8, as users run it): the same answers, in fewer passes.

Requests at spots of a standard-library file, each answered with drafting on
and off by the same engine. The texts must be identical: a pass that checks
guesses computes every row bit for bit as a one-token step (test_lookup.py),
so no tie can explain a difference.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from keystroke.engine import Engine
from keystroke.engine.api import CompletionRequest, StopPolicy

pytestmark = pytest.mark.real_model

SOURCE = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()


def test_drafting_changes_no_answer_of_the_default_model_and_saves_passes(tmp_path):
    engine = Engine.load(cache_dir=tmp_path, response_cache=False, persist=False)
    assert engine.draft_tokens > 0
    lines = SOURCE.splitlines(keepends=True)
    passes = {True: 0, False: 0}
    for n, at in enumerate(range(120, len(lines) - 40, len(lines) // 4)):
        line = lines[at]
        cut = len(line) - len(line.lstrip())
        prefix = "".join(lines[max(0, at - 80):at]) + line[:cut]
        suffix = line[cut:] + "".join(lines[at + 1:at + 20])
        texts = {}
        for drafting in (True, False):
            engine.draft_tokens = 4 if drafting else 0
            r = engine.complete(CompletionRequest(doc_id=f"d{n}", prefix=prefix, suffix=suffix, use_cache=False,
                                                  stop=StopPolicy(mode="block", max_tokens=40)))
            texts[drafting] = r.text
            passes[drafting] += r.timings.decode_passes
        assert texts[True] == texts[False], (at, texts)
    assert passes[True] < passes[False], passes
