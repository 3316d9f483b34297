"""Every way a model path can be wrong ends in a ModelError that names the problem and what to do."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from keystroke.engine import registry
from keystroke.engine.errors import ModelError
from keystroke.engine.loading.loader import load_checkpoint
from tests.tiny import make_tiny_gguf, make_tiny_model_dir


def load_error(path) -> str:
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    err = info.value
    assert err.problem and err.hint, "a user-facing error says what happened and what to do"
    return str(err)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", "llama")


def test_missing_file(tmp_path):
    msg = load_error(tmp_path / "nowhere.gguf")
    assert "does not exist" in msg and "keystroke models" in msg


def test_empty_folder(tmp_path):
    assert "empty" in load_error(tmp_path)


def test_non_gguf_file_named_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("this is a text file, not a model\n" * 10)
    msg = load_error(path)
    assert "not a GGUF" in msg and str(path) in msg


def test_other_file_kind(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00" * 100)
    assert "neither a .gguf file nor a model folder" in load_error(path)


def test_tiny_file(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF")
    assert "not a GGUF" in load_error(path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_gguf_data(tiny_gguf, tmp_path, keep):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    msg = load_error(cut)
    assert "truncated" in msg and "again" in msg


def test_truncated_gguf_header(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:3000])  # inside the vocabulary
    assert "truncated or corrupt" in load_error(cut)


@pytest.mark.real_model
def test_truncated_real_model(tmp_path):
    source = registry.resolve(registry.DEFAULT_MODEL)
    cut = tmp_path / "gemma-cut.gguf"
    with open(source, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(source.stat().st_size // 2))
    assert "truncated" in load_error(cut)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    msg = load_error(path)
    assert "'bert'" in msg and "llama" in msg and "gemma3" in msg


def test_unsupported_quantization_type(tiny_gguf, tmp_path):
    """Rewrite one tensor's type id in the header to Q8_K, which no loader dequantizes."""
    data = bytearray(tiny_gguf.read_bytes())
    name = b"blk.0.attn_q.weight"
    pos = data.index(name) + len(name)  # tensor info: name, n_dims (u32), dims (u64 each), type (u32)
    n_dims = int.from_bytes(data[pos:pos + 4], "little")
    at = pos + 4 + 8 * n_dims
    assert int.from_bytes(data[at:at + 4], "little") == gguf.GGMLQuantizationType.F32
    data[at:at + 4] = int(gguf.GGMLQuantizationType.Q8_K).to_bytes(4, "little")
    bad = tmp_path / "q8k.gguf"
    bad.write_bytes(data)
    msg = load_error(bad)
    assert "Q8_K" in msg and "not" in msg and "Q4_K" in msg


def test_folder_without_config(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    assert "config.json" in load_error(tmp_path)


def test_folder_with_unknown_model_type(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m", "llama")
    conf = json.loads((folder / "config.json").read_text())
    conf["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(conf))
    assert "'mamba'" in load_error(folder)


def test_folder_without_weights_or_tokenizer(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m", "qwen2")
    (folder / "tokenizer.json").unlink()
    assert "tokenizer.json" in load_error(folder)
    shutil.copy(make_tiny_model_dir(tmp_path / "n", "qwen2") / "tokenizer.json", folder)
    (folder / "model.safetensors").unlink()
    assert "safetensors" in load_error(folder)


def test_folder_with_corrupt_weights_or_config(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m", "gemma3")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "truncated or corrupt" in load_error(folder)
    (folder / "config.json").write_text("{not json")
    assert "not valid JSON" in load_error(folder)


def test_registry_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'llama-7b'") as info:
        registry.resolve("llama-7b")
    assert "gemma3-270m" in str(info.value) and "keystroke models" in str(info.value)
    with pytest.raises(ModelError, match="does not exist"):
        registry.resolve(str(tmp_path / "gone.gguf"))


def test_registry_names_a_model_not_pulled_yet(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="keystroke models pull smollm2-135m"):
        registry.resolve("smollm2")
    listed = {m["name"]: m for m in registry.list_models()}
    assert set(listed) == {"gemma3-270m", "smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert not listed["smollm2-135m"]["available"]
    assert listed["smollm2-135m"]["path"].startswith(str(tmp_path / "keystroke" / "models"))
