"""Tiny random-weight checkpoints for tests, built with transformers (the independent reference).

`make_tiny_model_dir(path, family)` writes a Hugging Face folder (config.json,
model.safetensors, tokenizer.json) for the Llama, Qwen2 or Gemma 3 family: a
few layers of width 64 with grouped-query attention; Gemma 3 with a sliding
window of 8 and mixed local/global layers. Weights, norms and biases are all
random (not transformers' zero/one init), so a loader that drops a bias or
forgets Gemma's `1 + w` is caught.

The tokenizer is a byte-level BPE of about 1,000 tokens trained on a fixed
list of this Python's own standard-library sources, with `<|endoftext|>` as
EOS and, with `fim=True`, Qwen2.5-Coder's fill-in-the-middle tokens and its
repository-format separator `<|file_sep|>`.

Everything is built once per argument set and kept in a temp directory keyed
by the arguments and this file's source, then copied to `path`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

EOS = "<|endoftext|>"
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>")
TRAINING_FILES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "functools.py",
                  "dataclasses.py", "shlex.py", "fractions.py")
VOCAB_SIZE = 1024
FAMILIES = ("llama", "qwen2", "gemma3")


def _cache_dir() -> Path:
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"keystroke-tiny-{uid}" / source
    root.mkdir(parents=True, exist_ok=True)
    return root


def _publish(build, target: Path) -> Path:
    """Run `build(tmp_dir)` and move the result to `target` atomically (parallel-safe)."""
    if target.exists():
        return target
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + "."))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def training_texts() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [(stdlib / name).read_text(encoding="utf-8") for name in TRAINING_FILES]


def make_tiny_tokenizer(fim: bool = False) -> Path:
    """A tokenizer.json (byte-level BPE, ~1k tokens) trained on standard-library sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    target = _cache_dir() / f"tokenizer-fim{int(fim)}"

    def build(tmp: Path) -> None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        special = [EOS, *(FIM_TOKENS if fim else ())]
        trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(training_texts(), trainer=trainer)
        tok.save(str(tmp / "tokenizer.json"))

    return _publish(build, target) / "tokenizer.json"


def _config(family: str, vocab_size: int, eos_id: int, overrides: dict):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                  bos_token_id=None, eos_token_id=eos_id, pad_token_id=eos_id)
    if family == "llama":
        conf = LlamaConfig(num_hidden_layers=3, rope_theta=10000.0, tie_word_embeddings=False,
                           rms_norm_eps=1e-5, **common)
    elif family == "qwen2":
        conf = Qwen2Config(num_hidden_layers=3, rope_theta=1e6, tie_word_embeddings=True,
                           rms_norm_eps=1e-6, **common)
    elif family == "gemma3":
        conf = Gemma3TextConfig(
            num_hidden_layers=4, sliding_window=8, query_pre_attn_scalar=24, rms_norm_eps=1e-6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
            tie_word_embeddings=True, **common)
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    for key, value in overrides.items():
        setattr(conf, key, value)
    return conf


def _randomize(model, seed: int, family: str) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                # Effective multipliers around 1 (Gemma stores w of 1 + w).
                p.copy_(0.2 * noise if family == "gemma3" else 1 + 0.2 * noise)
            else:
                p.copy_(0.08 * noise)


def make_tiny_model_dir(path: str | Path, family: str = "llama", seed: int = 0, fim: bool = False,
                        config_overrides: dict | None = None) -> Path:
    """Write a tiny random-weight Hugging Face checkpoint of `family` into `path`; return it."""
    overrides = dict(config_overrides or {})
    key = hashlib.sha256(repr((family, seed, fim, sorted(overrides.items()))).encode()).hexdigest()[:12]
    target = _cache_dir() / f"model-{family}-{seed}-{int(fim)}-{key}"
    tok_path = make_tiny_tokenizer(fim)

    def build(tmp: Path) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        tok = Tokenizer.from_file(str(tok_path))
        conf = _config(family, tok.get_vocab_size(), tok.token_to_id(EOS), overrides)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
        _randomize(model, seed, family)
        model.save_pretrained(str(tmp))
        shutil.copy(tok_path, tmp / "tokenizer.json")

    _publish(build, target)
    out = Path(path)
    shutil.copytree(target, out, dirs_exist_ok=True)
    return out


# GGUF names of the Hugging Face tensors (the inverse of what engine/loading/gguf.py reads).
_GGUF_BLOCK = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "pre_feedforward_layernorm": "ffn_norm",
}


# What a GGUF cannot say differently from llama.cpp's defaults: Gemma 3's query scale is
# 1/sqrt(head_dim). A tiny checkpoint meant for conversion uses these overrides.
GGUF_OVERRIDES = {"gemma3": {"query_pre_attn_scalar": 16}}


def make_tiny_gguf(path: str | Path, family: str = "llama", seed: int = 0, qtype: str = "F32",
                   arch: str | None = None) -> Path:
    """Convert a tiny checkpoint to a GGUF file the way llama.cpp's converter does.

    Llama Q/K rows get llama.cpp's interleaving permutation, Gemma norms are stored as
    1 + w, matrices (2-D, not the norms) are quantized to `qtype`, and the tokenizer is
    written as `tokenizer.ggml.*` metadata (model "gpt2", with merges). `arch` overrides
    the architecture name written into the file (for error tests). The checkpoint it
    converts is `make_tiny_model_dir(..., family, seed, config_overrides=GGUF_OVERRIDES.get(family))`.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    folder = make_tiny_model_dir(Path(tempfile.mkdtemp(prefix="tiny-hf-")), family, seed,
                                 config_overrides=GGUF_OVERRIDES.get(family))
    conf = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    tok = json.loads((folder / "tokenizer.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)

    arch_name = arch or family
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(f"tiny {family}")
    writer.add_block_count(conf["num_hidden_layers"])
    writer.add_context_length(conf["max_position_embeddings"])
    writer.add_embedding_length(conf["hidden_size"])
    writer.add_feed_forward_length(conf["intermediate_size"])
    writer.add_head_count(conf["num_attention_heads"])
    writer.add_head_count_kv(conf["num_key_value_heads"])
    writer.add_key_length(conf["head_dim"])
    writer.add_value_length(conf["head_dim"])
    writer.add_layer_norm_rms_eps(conf["rms_norm_eps"])
    rope = conf.get("rope_parameters") or {}
    if family == "gemma3":
        writer.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        writer.add_sliding_window(conf["sliding_window"])
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in conf["layer_types"]])
    else:
        writer.add_rope_freq_base(rope.get("rope_theta", conf.get("rope_theta", 10000.0)))

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in special else 1 for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_eos_token_id(tok["model"]["vocab"][EOS])
    writer.add_add_bos_token(False)

    n_heads, n_kv = conf["num_attention_heads"], conf["num_key_value_heads"]
    quant = gguf.GGMLQuantizationType[qtype]
    for name, w in sorted(tensors.items()):
        w = w.astype(np.float32)
        if family == "gemma3" and name.endswith("norm.weight"):
            w = w + 1.0
        if family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = n_heads if "q_proj" in name else n_kv
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        parts = name.split(".")
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            layer, rest = parts[2], ".".join(parts[3:-1])
            if rest == "post_attention_layernorm":
                piece = "post_attention_norm" if family == "gemma3" else "ffn_norm"
            else:
                piece = _GGUF_BLOCK[rest]
            gname = f"blk.{layer}.{piece}.{parts[-1]}"
        if w.ndim == 2 and quant not in (gguf.GGMLQuantizationType.F32,):
            data = gguf.quants.quantize(w, quant)
            writer.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=quant)
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
