"""Load a Hugging Face checkpoint folder: config.json + *.safetensors + tokenizer.json.

Covers model_type llama (SmolLM2, CodeLlama, DeepSeek-Coder), qwen2 (Qwen2.5-Coder)
and gemma3 / gemma3_text (the text half of a multimodal Gemma 3 checkpoint is
taken, its vision tower skipped). Both configuration layouts are read: the
transformers 4 one (`rope_theta`, `rope_scaling`, `rope_local_base_freq`) and
the transformers 5 one (`rope_parameters`, per layer type for Gemma 3).
Gemma stores norm weights as `w` and multiplies by `1 + w`; the engine wants
the multiplier, so 1 is added here.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import ModelError
from ..model import ModelConfig
from ..tokenizer import Tokenizer

MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma3": "gemma3",
               "gemma3_text": "gemma3"}

# Multimodal and older layouts -> the canonical "model." / "lm_head." names.
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
_SKIP = ("vision_tower", "multi_modal_projector", "rotary_emb", "model.vision", "visual.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}", "the model folder is incomplete") from None
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})", "the model folder is corrupt") from None


def _rope(conf: dict[str, Any], layer_type: str | None = None) -> tuple[float | None, dict | None]:
    """(theta, scaling dict or None) from either config layout."""
    params = conf.get("rope_parameters")
    if isinstance(params, dict) and layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    if isinstance(params, dict) and ("rope_theta" in params or "rope_type" in params):
        theta = params.get("rope_theta")
        scaling = dict(params)
    else:
        theta = conf.get("rope_theta")
        scaling = dict(conf.get("rope_scaling") or {})
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return theta, None
    if kind not in ("llama3", "linear"):
        raise ModelError(f"RoPE scaling {kind!r} is not supported", "supported: default, linear, llama3")
    scaling.pop("rope_theta", None)
    return theta, scaling


def config_from_hf(conf: dict[str, Any], where: Path) -> ModelConfig:
    if conf.get("model_type") == "gemma3" and isinstance(conf.get("text_config"), dict):
        conf = {**conf["text_config"], "model_type": "gemma3_text",
                "tie_word_embeddings": conf.get("tie_word_embeddings", True)}
    model_type = conf.get("model_type")
    family = MODEL_TYPES.get(model_type)
    if family is None:
        raise ModelError(f"{where} holds a {model_type!r} model, an architecture keystroke cannot run",
                         "supported model_type: " + ", ".join(sorted(MODEL_TYPES)))
    try:
        dim, n_heads = int(conf["hidden_size"]), int(conf["num_attention_heads"])
        cfg: dict[str, Any] = dict(
            family=family, vocab_size=int(conf["vocab_size"]), dim=dim,
            n_layers=int(conf["num_hidden_layers"]), n_heads=n_heads,
            n_kv_heads=int(conf.get("num_key_value_heads") or n_heads),
            head_dim=int(conf.get("head_dim") or dim // n_heads),
            hidden_dim=int(conf["intermediate_size"]),
            norm_eps=float(conf.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(conf.get("max_position_embeddings", 8192)),
            tie_embeddings=bool(conf.get("tie_word_embeddings", family == "gemma3")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}/config.json lacks or mangles {exc}", "the model folder is corrupt") from None
    if family == "llama" and (conf.get("attention_bias") or conf.get("mlp_bias")):
        raise ModelError(f"{where}: Llama models with attention/MLP biases are not supported",
                         "use a model without biases (SmolLM2, CodeLlama, DeepSeek-Coder)")
    if family == "gemma3":
        if conf.get("attn_logit_softcapping") or conf.get("final_logit_softcapping"):
            raise ModelError(f"{where}: logit soft-capping is not supported", "use a Gemma 3 checkpoint")
        theta, scaling = _rope(conf, "full_attention")
        local_theta, _ = _rope(conf, "sliding_attention")
        if "rope_local_base_freq" in conf:
            local_theta = conf["rope_local_base_freq"]
        layer_types = conf.get("layer_types")
        if not layer_types:
            every = int(conf.get("sliding_window_pattern") or conf.get("_sliding_window_pattern") or 6)
            layer_types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention"
                           for i in range(cfg["n_layers"])]
        window = conf.get("sliding_window")
        cfg.update(
            rope_theta=float(theta or 1e6), rope_scaling=scaling,
            rope_local_theta=float(local_theta or 10000.0),
            qk_norm=True, sandwich_norm=True, embed_scale=dim ** 0.5, activation="gelu_tanh",
            query_scale=float(conf.get("query_pre_attn_scalar") or cfg["head_dim"]) ** -0.5,
            sliding_window=int(window) if window else None,
            layer_types=["sliding" if t == "sliding_attention" else "full" for t in layer_types],
        )
    else:
        theta, scaling = _rope(conf)
        cfg.update(rope_theta=float(theta or 10000.0), rope_scaling=scaling,
                   qkv_bias=family == "qwen2" or bool(conf.get("attention_bias")))
    return ModelConfig(**cfg)


def _canonical(name: str) -> str | None:
    if any(s in name for s in _SKIP):
        return None
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _is_gemma_norm(name: str) -> bool:
    return name.endswith(("norm.weight", "layernorm.weight"))


def load_hf_folder(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer, dict[str, Any]]:
    """Read a Hugging Face folder: (config, fp32 weights in canonical names, tokenizer, summary)."""
    folder = Path(path)
    conf_path = folder / "config.json"
    if not conf_path.is_file():
        raise ModelError(f"{folder} has no config.json", "a model folder needs config.json, "
                         "*.safetensors and tokenizer.json (as saved by transformers)")
    conf = _read_json(conf_path)
    cfg = config_from_hf(conf, folder)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelError(f"{folder} has no *.safetensors weights",
                         "save the model with save_pretrained(safe_serialization=True)")
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json", "save the tokenizer with a fast "
                         "(tokenizers-backed) tokenizer's save_pretrained")

    weights: dict[str, torch.Tensor] = {}
    dtypes: Counter[str] = Counter()
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    name = _canonical(key)
                    if name is None:
                        continue
                    t = f.get_tensor(key)
                    dtypes[str(t.dtype).removeprefix("torch.")] += 1
                    t = t.float()
                    if cfg.family == "gemma3" and _is_gemma_norm(name):
                        t = t + 1.0
                    weights[name] = t
        except ModelError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"cannot read weights {shard}: {exc}", "the file is truncated or corrupt") from None
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    elif "lm_head.weight" not in weights:
        raise ModelError(f"{folder}: untied output projection lm_head.weight is missing",
                         "the checkpoint is incomplete")
    if "model.embed_tokens.weight" not in weights:
        raise ModelError(f"{folder} has no model.embed_tokens.weight", "the checkpoint is incomplete")
    cfg.vocab_size = weights["model.embed_tokens.weight"].shape[0]

    eos = conf.get("eos_token_id")
    generation = folder / "generation_config.json"
    if generation.is_file():
        eos = _read_json(generation).get("eos_token_id", eos)
    eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    tokenizer = Tokenizer.from_file(tok_path, bos_id=conf.get("bos_token_id"), eos_ids=eos_ids)
    summary = {
        "name": conf.get("_name_or_path") or folder.name,
        "architecture": cfg.family,
        "model_type": conf.get("model_type"),
        "format": "safetensors",
        "path": str(folder),
        "file_size_mb": round(sum(s.stat().st_size for s in shards) / 2**20, 1),
        "quant_types": dict(dtypes),
        "parameters": sum(t.numel() for t in weights.values()),
        "context_length": cfg.max_seq_len,
    }
    return cfg, weights, tokenizer, summary
