"""Our loader + Transformer against transformers, on tiny random checkpoints of each family.

The checkpoints are written by transformers itself (tests/tiny.py), then read back
twice: by `load_checkpoint` into our model and by `AutoModelForCausalLM` as the
reference. Logits must agree within 1e-4 in fp32, over a whole sequence and when
the same sequence is fed as a prefill followed by one token at a time through a
KVCache. The sequence is longer than Gemma's sliding window (8), so local and
global layers differ.
"""
from __future__ import annotations

import pytest
import torch

from keystroke.engine.loading.loader import load_checkpoint
from keystroke.engine.model import Transformer
from tests.tiny import make_tiny_model_dir

transformers = pytest.importorskip("transformers")

TEXT = ('def greet(name: str, times: int = 3) -> str:\n    """Say hello."""\n'
        '    return ", ".join(f"hello {name}" for _ in range(times))\n')
TOL = 1e-4

VARIANTS = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "gemma3": ("gemma3", {}),
    # Llama 3-style RoPE frequency scaling, as transformers 5 writes it (inside rope_parameters).
    "llama3-rope": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                                                  "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 16}}),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    family, overrides = VARIANTS[request.param]
    folder = make_tiny_model_dir(tmp_path_factory.mktemp(request.param), family, seed=3,
                                 config_overrides=overrides)
    ckpt = load_checkpoint(folder)
    ours = Transformer.from_weights(ckpt.cfg, ckpt.weights)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([ckpt.tokenizer.encode(TEXT)])
    with torch.no_grad():
        expected = ref(ids).logits
    return request.param, ckpt, ours, ids, expected


def test_sequence_is_long_enough_for_the_sliding_window(pair):
    name, ckpt, _, ids, _ = pair
    assert ids.shape[1] > 3 * 8
    if name == "gemma3":
        assert "sliding" in ckpt.cfg.layer_types and "full" in ckpt.cfg.layer_types


def test_full_sequence_logits_match_transformers(pair):
    _, _, ours, ids, expected = pair
    got = ours(ids, ours.new_cache(), last_only=False)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOL
    assert expected.std().item() > 0.1  # the weights are not near-zero: the comparison has teeth


def test_prefill_then_token_by_token_matches_transformers(pair):
    _, _, ours, ids, expected = pair
    cache = ours.new_cache(capacity=4)  # small, so the cache has to grow on the way
    split = 11
    got = [ours(ids[:, :split], cache, last_only=False)]
    for t in range(split, ids.shape[1]):
        got.append(ours(ids[:, t:t + 1], cache, last_only=False))
    got = torch.cat(got, dim=1)
    assert cache.length == ids.shape[1]
    assert (got - expected).abs().max().item() < TOL


def test_config_follows_the_checkpoint(pair):
    name, ckpt, _, _, _ = pair
    cfg = ckpt.cfg
    assert cfg.vocab_size == ckpt.tokenizer.vocab_size
    if name == "gemma3":
        assert cfg.sliding_window == 8 and cfg.rope_local_theta == 10000.0 and cfg.rope_theta == 1e6
        assert cfg.query_scale == pytest.approx(24 ** -0.5)
    if name == "qwen2":
        assert cfg.qkv_bias
    if name == "llama":
        assert not cfg.tie_embeddings
    if name == "llama3-rope":
        assert cfg.rope_scaling["rope_type"] == "llama3" and cfg.rope_theta == 500000.0


def test_fingerprint_is_stable_and_tells_weights_apart(tmp_path):
    a = load_checkpoint(make_tiny_model_dir(tmp_path / "a", "llama", seed=0))
    again = load_checkpoint(make_tiny_model_dir(tmp_path / "a2", "llama", seed=0))
    other = load_checkpoint(make_tiny_model_dir(tmp_path / "b", "llama", seed=1))
    assert a.fingerprint == again.fingerprint != other.fingerprint


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_gguf_of_a_checkpoint_loads_to_the_same_model(family, tmp_path):
    """A GGUF written as llama.cpp's converter writes it (Llama Q/K rows permuted, Gemma
    norms as 1 + w, tokenizer as metadata) loads to the very weights of the folder."""
    from tests.tiny import GGUF_OVERRIDES, make_tiny_gguf

    from_gguf = load_checkpoint(make_tiny_gguf(tmp_path / "m.gguf", family, seed=5))
    from_hf = load_checkpoint(make_tiny_model_dir(tmp_path / "hf", family, seed=5,
                                                  config_overrides=GGUF_OVERRIDES.get(family)))
    a, b = dict(from_gguf.cfg.__dict__), dict(from_hf.cfg.__dict__)
    assert a.pop("norm_eps") == pytest.approx(b.pop("norm_eps"), rel=1e-6)  # GGUF stores float32
    assert a == b
    assert sorted(from_gguf.weights) == sorted(from_hf.weights)
    for name, w in from_hf.weights.items():
        assert torch.equal(from_gguf.weights[name], w), name
    assert from_gguf.tokenizer.encode(TEXT) == from_hf.tokenizer.encode(TEXT)
    assert from_gguf.tokenizer.decode(from_gguf.tokenizer.encode(TEXT)) == TEXT
    assert from_gguf.tokenizer.eos_ids == from_hf.tokenizer.eos_ids
    assert from_gguf.info["architecture"] == family and set(from_gguf.info["quant_types"]) == {"F32"}


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantized_gguf_dequantizes_close_to_the_original(qtype, tmp_path):
    from tests.tiny import make_tiny_gguf

    exact = load_checkpoint(make_tiny_gguf(tmp_path / "f32.gguf", "llama", seed=6))
    quant = load_checkpoint(make_tiny_gguf(tmp_path / "q.gguf", "llama", seed=6, qtype=qtype))
    assert qtype in quant.info["quant_types"]
    name = "model.layers.0.self_attn.q_proj.weight"  # permuted in the file: checks the row order too
    w, q = exact.weights[name], quant.weights[name]
    rel = ((q - w).norm() / w.norm()).item()
    assert 0 < rel < {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2}.get(qtype, 0.1)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "BF16"])
def test_block_types_read_as_gguf_py_reads_them(qtype, tmp_path):
    """K-quants (which gguf-py cannot write from floats): random blocks, read back through
    our header parser must equal gguf-py's own reader + dequantize."""
    import gguf
    import numpy as np

    from keystroke.engine.loading.gguf import GGUFFile

    kind = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    rows, cols = 3, 2 * 256
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    if qtype != "BF16":  # keep the fp16 block scales finite: zero the exponent's top bit
        raw.reshape(-1, size)[:, 1::2] &= 0x3B
    path = tmp_path / "blocks.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w.weight", raw, raw_shape=raw.shape, raw_dtype=kind)
    writer.add_tensor("x.weight", rng.standard_normal(5).astype(np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()

    reference = gguf.GGUFReader(str(path))
    expected = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reference.tensors}
    ours = GGUFFile(path)
    try:
        got = {t.name: ours.tensor(t) for t in ours.tensors}
    finally:
        ours.close()
    assert got["w.weight"].shape == (rows, cols)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name].numpy(), value.reshape(got[name].shape))


def test_padded_embedding_table_is_covered_by_the_tokenizer(tmp_path):
    """Qwen2.5-style: more embedding rows than tokens; every logit gets a token string."""
    base = make_tiny_model_dir(tmp_path / "base", "qwen2")
    tokens = load_checkpoint(base).tokenizer.vocab_size
    ckpt = load_checkpoint(make_tiny_model_dir(tmp_path / "padded", "qwen2",
                                               config_overrides={"vocab_size": tokens + 64}))
    assert ckpt.cfg.vocab_size == tokens + 64 == ckpt.tokenizer.vocab_size
    strings = ckpt.tokenizer.token_strings()
    assert len(strings) == tokens + 64 and strings[-64:] == [""] * 64
    assert "".join(strings[i] for i in ckpt.tokenizer.encode("def x(y):")) == "def x(y):"
