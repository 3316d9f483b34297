"""Engine: a request that prefilled many tokens hands the memory it freed back to the system."""
from __future__ import annotations

import sysconfig
from pathlib import Path

from keystroke.engine import Engine, engine as engine_module
from keystroke.engine.api import CompletionRequest, StopPolicy
from tests.tiny import make_tiny_model_dir

SOURCE = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()


def test_only_a_long_prefill_trims_the_heap(tmp_path, monkeypatch):
    engine = Engine.load(make_tiny_model_dir(tmp_path / "model", family="qwen2", fim=True,
                                             config_overrides={"max_position_embeddings": 4096}), quant="fp32",
                         persist=False, response_cache=False)
    trims: list[int] = []
    monkeypatch.setattr(engine_module, "release_freed_memory", lambda: trims.append(1))

    def ask(prefix: str) -> int:
        result = engine.complete(CompletionRequest(doc_id="t.py", prefix=prefix, stop=StopPolicy(max_tokens=2)))
        return result.timings.computed_tokens

    computed = ask(SOURCE[:6000])
    assert computed >= engine_module.TRIM_AFTER_TOKENS and trims == [1]
    computed = ask(SOURCE[:6000] + "x")     # typing: a few new tokens
    assert computed < engine_module.TRIM_AFTER_TOKENS and trims == [1]
