"""What a second start reads instead of the GGUF header: the header entry and the built tokenizer.

Both are checked before use; a damaged, truncated or foreign file is rebuilt
with a log line, never a crash and never other tokens. Tiny GGUF files
(tests/tiny.py) for the faults, the real default model for equality on real text.
"""
from __future__ import annotations

import json
import logging
import sysconfig
from pathlib import Path

import pytest
import torch

from keystroke.engine import Engine, registry
from keystroke.engine.loading import gguf as gguf_mod
from keystroke.engine.loading import header_cache, loader
from keystroke.engine.tokenizer import Tokenizer

SAMPLE = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()[:20000] + \
    "\n# naïve café — 日本語, emoji 😀, tabs\t\t\tand    spaces\r\n"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tests.tiny import make_tiny_gguf
    return make_tiny_gguf(tmp_path_factory.mktemp("tiny") / "m.gguf", "llama", seed=5)


def no_header_parse(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the GGUF header was parsed although its entry is cached")
    monkeypatch.setattr(gguf_mod, "load_gguf", refuse)


def entry(root: Path) -> Path:
    [file] = (root / "headers").glob("*.json")
    return file


def tokenizer_file(root: Path) -> Path:
    [file] = (root / "tokenizers").glob("*.tok")
    return file


def test_second_load_skips_the_header_and_gives_the_same_checkpoint(tiny_gguf, tmp_path, monkeypatch):
    cold = loader.load_checkpoint(tiny_gguf, tmp_path)
    cold.weights.close()
    entry(tmp_path), tokenizer_file(tmp_path)
    no_header_parse(monkeypatch)
    warm = loader.load_checkpoint(tiny_gguf, tmp_path)
    assert warm.cfg == cold.cfg and warm.info == cold.info and warm.fingerprint == cold.fingerprint
    assert warm.tokenizer.encode(SAMPLE) == cold.tokenizer.encode(SAMPLE)
    assert (warm.tokenizer.eos_ids, warm.tokenizer.bos_id, warm.tokenizer.add_bos) == \
        (cold.tokenizer.eos_ids, cold.tokenizer.bos_id, cold.tokenizer.add_bos)
    monkeypatch.undo()
    # Its weights are opened only when asked for, and are the file's.
    fresh = loader.load_checkpoint(tiny_gguf)
    for name in fresh.weights:
        assert torch.equal(warm.weights[name], fresh.weights[name])
    fresh.weights.close()
    warm.weights.close()


def test_an_engine_built_from_the_deferred_weights_matches(tiny_gguf, tmp_path):
    """Packed weights gone but the header cached: the model is converted from the deferred weights."""
    ids = None
    outs = []
    for step in range(2):
        if step == 1:
            for f in (tmp_path / "packed").glob("*"):
                f.unlink()
        e = Engine.load(tiny_gguf, quant="int8", cache_dir=tmp_path, persist=False)
        ids = torch.tensor([e.tokenizer.encode("def f(x):\n    return x\n")])
        with torch.inference_mode():
            outs.append(e.model(ids, e.model.new_cache(), last_only=False))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "foreign"])
def test_a_damaged_header_entry_is_rebuilt(tiny_gguf, tmp_path, damage, caplog):
    cold = loader.load_checkpoint(tiny_gguf, tmp_path)
    cold.weights.close()
    file = entry(tmp_path)
    text = file.read_text()
    if damage == "flip":   # valid JSON, one config value changed: only the checksum can tell
        body = json.loads(text)
        body["body"]["config"]["dim"] += 1
        file.write_text(json.dumps(body))
    elif damage == "truncate":
        file.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        file.write_bytes(b"\x00\xff" * 100)
    else:   # a consistent entry of another file, put under this file's name
        body = json.loads(text)
        body["body"]["fingerprint"] = "0" * 32
        body["sha256"] = header_cache._checksum(body["body"])
        file.write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING, logger="keystroke.engine"):
        again = loader.load_checkpoint(tiny_gguf, tmp_path)
    again.weights.close()
    assert "cached header" in caplog.text and "unusable" in caplog.text
    assert again.cfg == cold.cfg
    assert again.tokenizer.encode(SAMPLE) == cold.tokenizer.encode(SAMPLE)
    assert json.loads(entry(tmp_path).read_text())["body"]["fingerprint"] == cold.fingerprint   # rewritten


def test_a_gguf_changed_inside_its_header_is_read_again(tiny_gguf, tmp_path, monkeypatch, caplog):
    """Same size, a changed EOS id, and a fingerprint made blind to it: the entry must not be used."""
    import shutil
    path = tmp_path / "model.gguf"
    shutil.copy(tiny_gguf, path)
    root = tmp_path / "cache"
    cold = loader.load_checkpoint(path, root)
    cold.weights.close()
    data = bytearray(path.read_bytes())
    key = b"tokenizer.ggml.eos_token_id"
    at = data.index(key) + len(key) + 4   # past the key and its value type: the uint32 id
    old = int.from_bytes(data[at:at + 4], "little")
    data[at:at + 4] = (old + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    monkeypatch.setattr(loader, "fingerprint", lambda files: cold.fingerprint)
    with caplog.at_level(logging.WARNING, logger="keystroke.engine"):
        warm = loader.load_checkpoint(path, root)
    warm.weights.close()
    assert "header changed" in caplog.text
    assert old in cold.tokenizer.eos_ids and old + 1 in warm.tokenizer.eos_ids


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_tokenizer_file_is_rebuilt(tiny_gguf, tmp_path, damage, caplog):
    cold = loader.load_checkpoint(tiny_gguf, tmp_path)
    cold.weights.close()
    file = tokenizer_file(tmp_path)
    data = bytearray(file.read_bytes())
    if damage == "flip":   # one character of the JSON: parses, but the checksum differs
        at = data.index(b'"vocab"') + 20
        data[at] = ord("q") if data[at] != ord("q") else ord("r")
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"\x00garbage\n{}")
    file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="keystroke.engine"):
        again = loader.load_checkpoint(tiny_gguf, tmp_path)
    again.weights.close()
    assert "unusable" in caplog.text
    assert again.tokenizer.encode(SAMPLE) == cold.tokenizer.encode(SAMPLE)
    assert Tokenizer.from_cached(tmp_path / "tokenizers", cold.tokenizer.recipe()) is not None   # rewritten


@pytest.mark.real_model
def test_the_default_models_cached_tokenizer_equals_a_fresh_build(tmp_path):
    path = registry.resolve(registry.DEFAULT_MODEL)
    cold = loader.load_checkpoint(path, tmp_path)   # parses the header, builds the tokenizer
    cold.weights.close()
    warm = loader.load_checkpoint(path, tmp_path)   # both from the cache
    assert warm.weights._real is None   # the GGUF was not opened
    fresh = gguf_mod.load_gguf(path, tokenizer_dir=tmp_path / "elsewhere")   # built anew
    fresh[1].close()
    fresh_tok = fresh[2]
    assert warm.cfg == cold.cfg == fresh[0]
    assert warm.tokenizer.encode(SAMPLE) == fresh_tok.encode(SAMPLE) == cold.tokenizer.encode(SAMPLE)
    ids = fresh_tok.encode(SAMPLE)
    assert warm.tokenizer.decode(ids) == fresh_tok.decode(ids)
    assert warm.tokenizer.special_tokens() == fresh_tok.special_tokens()
    assert (warm.tokenizer.eos_ids, warm.tokenizer.bos_id, warm.tokenizer.add_bos) == \
        (fresh_tok.eos_ids, fresh_tok.bos_id, fresh_tok.add_bos)


def test_the_first_load_freezes_the_imports_once_and_a_later_model_stays_collectable(tiny_llama_dir, tmp_path):
    import gc
    import weakref

    from keystroke.engine import engine as engine_module
    Engine.load(tiny_llama_dir, persist=False, cache_dir=tmp_path)
    frozen = gc.get_freeze_count()
    assert engine_module._frozen and frozen > 10_000   # torch's imports alone are ~170k objects
    second = Engine.load(tiny_llama_dir, persist=False, cache_dir=tmp_path)
    assert gc.get_freeze_count() == frozen               # not frozen again: `second` is not in it
    model = weakref.ref(second.model)
    del second
    gc.collect()
    assert model() is None, "a model loaded after the first is never freed"
