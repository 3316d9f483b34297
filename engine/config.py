"""The shape of a model: one dataclass that covers the Llama, Qwen2 and Gemma 3 families."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Family = Literal["llama", "qwen2", "gemma3"]
FAMILIES: tuple[str, ...] = ("llama", "qwen2", "gemma3")


@dataclass
class ModelConfig:
    family: Family
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 8192
    tie_embeddings: bool = True
    # Qwen2: q/k/v projections carry a bias.
    qkv_bias: bool = False
    # Gemma 3 specifics.
    qk_norm: bool = False
    sandwich_norm: bool = False          # post-attention and post-FFN norms
    embed_scale: float = 1.0             # gemma multiplies embeddings by sqrt(dim)
    activation: Literal["silu", "gelu_tanh"] = "silu"
    query_scale: float | None = None     # attention scale; default 1/sqrt(head_dim)
    sliding_window: int | None = None
    rope_local_theta: float | None = None  # RoPE base of the sliding-window layers
    layer_types: list[str] = field(default_factory=list)  # "full" | "sliding" per layer
    # Llama 3-style RoPE frequency scaling, when the checkpoint uses it.
    rope_scaling: dict | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if not self.layer_types:
            self.layer_types = ["full"] * self.n_layers
        if len(self.layer_types) != self.n_layers:
            raise ValueError("layer_types must name every layer")

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_window is not None and self.layer_types[layer] == "sliding"

    def layer_rope_theta(self, layer: int) -> float:
        if self.is_sliding(layer) and self.rope_local_theta is not None:
            return self.rope_local_theta
        return self.rope_theta

    @property
    def attn_scale(self) -> float:
        return self.query_scale if self.query_scale is not None else self.head_dim ** -0.5
