"""The on-disk cache of packed int8 weights: used on the second start, never trusted when damaged.

Tiny GGUF files written the way llama.cpp's converter writes them
(tests/tiny.py), loaded with `Engine.load` as the server does.
"""
from __future__ import annotations

import logging

import pytest
import torch

from keystroke.engine import Engine
from keystroke.engine.loading import packed
from keystroke.engine.quantize import Packer


@pytest.fixture(params=["llama", "gemma3"])
def gguf_path(request, tmp_path_factory):
    from tests.tiny import make_tiny_gguf
    return make_tiny_gguf(tmp_path_factory.mktemp(request.param) / "m.gguf", request.param, seed=3)


def logits(engine: Engine) -> torch.Tensor:
    ids = torch.tensor([engine.tokenizer.encode("def f(x):\n    return x * 2\n")])
    with torch.inference_mode():
        return engine.model(ids, engine.model.new_cache(), last_only=False)


def cache_files(root):
    return sorted((root / "packed").glob("*.safetensors"))


def no_conversion(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the weights were converted again instead of read from the cache")
    monkeypatch.setattr(Packer, "linear", refuse)
    monkeypatch.setattr(Packer, "tables", refuse)


def test_second_start_maps_the_cached_weights(gguf_path, tmp_path, monkeypatch, capfd):
    first = Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False)
    assert "converting" in capfd.readouterr().err   # the first start says what it is doing
    [file] = cache_files(tmp_path)
    no_conversion(monkeypatch)
    second = Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False)
    assert torch.equal(logits(first), logits(second))
    assert cache_files(tmp_path) == [file]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(gguf_path, tmp_path, damage, caplog):
    ref = logits(Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False))
    [file] = cache_files(tmp_path)
    data = bytearray(file.read_bytes())
    if damage == "flip":
        data[len(data) * 2 // 3] ^= 0x10   # inside some tensor's bytes: only the checksum can tell
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"\xff" * 64)
    file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="keystroke.engine"):
        again = Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False)
    assert "unusable" in caplog.text
    assert torch.equal(logits(again), ref)
    from keystroke.engine.loading.loader import load_checkpoint
    key = packed.cache_key(load_checkpoint(gguf_path).fingerprint, "int8")
    assert packed.load(file, key, again.cfg) is not None   # rewritten whole


def test_the_key_names_weights_format_and_torch():
    a = packed.cache_key("abc", "int8")
    assert a == packed.cache_key("abc", "int8")
    assert a != packed.cache_key("abd", "int8")
    assert a != packed.cache_key("abc", "fp16")


def test_a_cache_file_of_other_weights_is_not_used(gguf_path, tmp_path, monkeypatch):
    from tests.tiny import make_tiny_gguf

    Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False)
    other = make_tiny_gguf(tmp_path / "other.gguf", "llama", seed=4)
    ref = logits(Engine.load(other, quant="int8", cache_dir=tmp_path / "fresh", persist=False))
    # Put the first model's file where the second one's belongs: its recorded key gives it away.
    [file] = cache_files(tmp_path)
    from keystroke.engine.loading.loader import load_checkpoint
    target = packed.cache_path(tmp_path, load_checkpoint(other).fingerprint, "int8")
    file.rename(target)
    assert torch.equal(logits(Engine.load(other, quant="int8", cache_dir=tmp_path, persist=False)), ref)


def test_without_the_weights_cache_nothing_is_written(gguf_path, tmp_path):
    Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False, weights_cache=False)
    assert cache_files(tmp_path) == []


def test_without_the_cksum_command_zlib_checks_the_data(gguf_path, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(packed, "_cksum", lambda: None)
    ref = logits(Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False))
    [file] = cache_files(tmp_path)
    with monkeypatch.context() as m:
        no_conversion(m)
        assert torch.equal(logits(Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False)), ref)
    data = bytearray(file.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="keystroke.engine"):
        assert torch.equal(logits(Engine.load(gguf_path, quant="int8", cache_dir=tmp_path, persist=False)), ref)
    assert "damaged" in caplog.text
