"""A decoder-only transformer for the Llama, Qwen2 and Gemma 3 families.

Read top to bottom: the config, RMSNorm, rotary embeddings, attention, MLP,
block, model. The differences between families are flags of `ModelConfig`:

- Qwen2 adds a bias to the q/k/v projections.
- Gemma 3 normalises q and k per head, wraps both attention and MLP in a
  pre- and a post-norm, scales embeddings by sqrt(dim), uses GELU-tanh, and
  alternates sliding-window (local) layers, with their own RoPE base, with
  full (global) ones.

The K/V cache is an argument (`KVCache`), never a module attribute, so one
model serves many documents. Projections that read the same input are fused
(q/k/v in one matrix, gate/up in one) to keep the per-token op count low.

int8 weights turn the last-bit differences between kernels into different
tokens, so a token's result must not depend on how many rows shared a call.
Where the C kernels serve (`phase.row_exact`, the CPU default), every row
is computed alone: the linears as one 16-bit row each (quantize.py), norms
and attention in C (native.rms_norm, native.step_attention: row i over the
keys up to its position, causal by construction). A prompt prefilled in any
chunks then gives bit-identical K/V, and so does a decode step: generated
tokens' K/V are kept for the next request (Engine.keep_generated), and a
suggestion continued from a generation in flight is the one a fresh
request would give. Without the C kernels, `exact_attention` computes a
prompt's attention in float64 and rounds the result to float32 (a token's
output then no longer depends on how many query rows or masked keys shared
its kernel call); decode steps keep float32 attention, deterministic for a
given cache, so warm and cold still agree, but their K/V differ from a
prefill's in the last bits and are not kept.

Weights arrive as a dict in canonical Hugging Face names (see
`Transformer.from_weights`), with norm weights as the effective multiplier
(Gemma's `1 + w` already added).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .cache.kvcache import KVCache
from .quantize import Phase

Family = Literal["llama", "qwen2", "gemma3"]
FAMILIES: tuple[str, ...] = ("llama", "qwen2", "gemma3")


@dataclass
class ModelConfig:
    """The shape of a model: one dataclass that covers the Llama, Qwen2 and Gemma 3 families."""

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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.phase: Phase | None = None          # shared with the Transformer (Transformer.share_phase)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phase is not None and (self.phase.decode or self.phase.row_exact):
            y = native.rms_norm(x, self.weight, self.eps)
            if y is not None:
                return y
        # One fused call instead of five ops (8x faster for one token); computed in float32.
        if x.dtype == self.weight.dtype == torch.float32:   # the int8 path: no conversions to dispatch
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def rope_inv_freq(cfg: ModelConfig, theta: float) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64, device="cpu") / cfg.head_dim))
    # Gemma 3 scales only its global layers; the local ones keep their own base unscaled.
    local = cfg.rope_local_theta is not None and theta == cfg.rope_local_theta
    rs = {} if local else (cfg.rope_scaling or {})
    kind = rs.get("rope_type") or rs.get("type")
    if kind == "llama3":
        # Llama 3.x: stretch low frequencies, keep high ones, blend between.
        factor, low, high = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old_ctx = rs.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif kind == "linear":
        inv = inv / rs["factor"]
    return inv.float()


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) per position, (T, D): the sin's first half negated for `apply_rope`."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the half-split convention of Hugging Face checkpoints.

    x * cos + (-x2, x1) * sin, written as x * cos + (x2, x1) * (-sin, sin): one
    roll instead of two slices, a negation and a cat, with the same products
    bit for bit (a sign commutes exactly with rounding).
    """
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.attn_scale
        self.window = cfg.sliding_window if cfg.is_sliding(layer) else None
        q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.split = (q_out, kv_out, kv_out)
        self.wqkv = nn.Linear(cfg.dim, q_out + 2 * kv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(q_out, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.phase: Phase | None = None          # shared with the Transformer (Transformer.share_phase)

    def forward(self, x: torch.Tensor, cache: KVCache, start: int, cos: torch.Tensor,
                sin: torch.Tensor, mask: torch.Tensor | None, exact: bool = False) -> torch.Tensor:
        B, T, _ = x.shape
        H, qk_out = self.n_heads, self.split[0] + self.split[1]
        qkv = self.wqkv(x)
        qk = qkv[..., :qk_out].view(B, T, H + self.n_kv, self.hd)   # q and k heads rotate together
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), dim=2)
        qk = apply_rope(qk.transpose(1, 2), cos, sin)
        q, k = qk[:, :H], qk[:, H:]
        v = qkv[..., qk_out:].view(B, T, self.n_kv, self.hd).transpose(1, 2)
        keys, values = cache.write(self.layer, start, k, v)
        if self.phase is not None and (self.phase.row_exact or self.phase.decode):   # decode: no mask
            # Each row alone over the keys up to its position (within the window): a prompt's
            # rows as causal attention, decode rows as one-token steps, in C (step_ops.c).
            flat = native.step_attention(q, keys, values, self.scale, self.window)
            if flat is not None:
                return self.wo(flat)
        if exact:
            out = exact_attention(q, keys, values, mask, self.scale)
        elif mask is None:
            # A one-token step, or decode rows (a step that checks drafted tokens): each row attends
            # exactly as a one-token step at its position would, so checking a draft changes no bit.
            first = keys.shape[2] - T + 1
            out = torch.cat([step_attention(q[:, :, i:i + 1], keys[:, :, :first + i], values[:, :, :first + i],
                                            self.scale, self.window) for i in range(T)], dim=2)
        else:
            keys, values = keys.to(q.dtype), values.to(q.dtype)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale,
                                                 enable_gqa=self.n_kv != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


def exact_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Causal attention in float64, rounded to q's dtype: independent of the call's shape in practice.

    Float32 kernels sum in an order that depends on how many rows and keys a
    call has (blocking, vector tails), so the same token differs in its last
    bits between a 500-token prefill and a 1-token step; in float64 those
    differences are ~1e-16 and vanish in the rounding to float32. Query heads
    are grouped by their K/V head (grouped-query attention) without copying K/V.
    """
    B, H, T, D = q.shape
    n_kv = keys.shape[1]
    group = H // n_kv
    qg = q.reshape(B, n_kv, group * T, D).double()
    scores = qg @ keys.double().transpose(-1, -2)
    scores.mul_(scale)
    if mask is not None:
        scores.masked_fill_(~mask.repeat(group, 1), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ values.double()
    return out.to(q.dtype).view(B, H, T, D)


def step_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
                   window: int | None) -> torch.Tensor:
    """One query position over the cache: the last `window` keys (all of them when None).

    Plain matmuls with the query heads grouped by their K/V head read the cache
    in place. Profiled on Qwen2.5 0.5B at ~520 cached positions: ~90 us per layer
    (two bmm and a softmax) against 160 us for scaled_dot_product_attention's
    CPU flash kernel, whose blocking serves many query rows, not one.
    """
    B, H, _, D = q.shape
    n_kv = keys.shape[1]
    if window is not None and keys.shape[2] > window:
        keys, values = keys[:, :, -window:], values[:, :, -window:]
    qg = q.view(B, n_kv, H // n_kv, D).to(keys.dtype)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(scale)
    out = torch.matmul(torch.softmax(scores, dim=-1), values)
    return out.to(q.dtype).view(B, H, 1, D)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden = cfg.hidden_dim
        self.w_gate_up = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.gelu = cfg.activation == "gelu_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).split(self.hidden, dim=-1)
        act = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return self.w_down(act * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.attn_post_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.sandwich_norm else None
        self.ffn_post_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.sandwich_norm else None

    def forward(self, x, cache, start, cos, sin, mask, exact=False):
        h = self.attn(self.attn_norm(x), cache, start, cos, sin, mask, exact)
        if self.attn_post_norm is not None:
            h = self.attn_post_norm(h)
        x = x + h
        h = self.mlp(self.ffn_norm(x))
        if self.ffn_post_norm is not None:
            h = self.ffn_post_norm(h)
        return x + h


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # `_weight` skips the random init, whose first call imports torch._dynamo (1.5 s).
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, _weight=torch.empty(cfg.vocab_size, cfg.dim))
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        thetas = sorted({cfg.layer_rope_theta(i) for i in range(cfg.n_layers)})
        self._inv_freq = {t: rope_inv_freq(cfg, t) for t in thetas}
        self.act_dtype = torch.float32  # activations; the embedding table may be stored smaller
        self.exact_attention = False    # float64 attention: see the module docstring
        self.phase = Phase()            # prompt or decode step, read by quantized linears
        self.requires_grad_(False)

    def share_phase(self) -> "Transformer":
        """Give every module that reads the phase (quantized linears) this model's flag."""
        for module in self.modules():
            if module is not self and hasattr(module, "phase"):
                module.phase = self.phase
        return self

    def new_cache(self, batch: int = 1, capacity: int = 256, dtype: torch.dtype = torch.float32) -> KVCache:
        return KVCache(self.cfg, batch=batch, capacity=capacity, dtype=dtype, device=self.embed.weight.device)

    def _mask(self, start: int, T: int, window: int | None, device) -> torch.Tensor | None:
        """Boolean (T, start+T) mask: causal, and within `window` positions for local layers."""
        end = start + T
        if T == 1 and (window is None or end <= window):
            return None
        q_pos = torch.arange(start, end, device=device)[:, None]
        k_pos = torch.arange(end, device=device)[None, :]
        allowed = k_pos <= q_pos
        if window is not None:
            allowed &= k_pos > q_pos - window
        return allowed

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, last_only: bool = True,
                decode: bool = False, stop: Callable[[], bool] | None = None) -> torch.Tensor | None:
        """Run `tokens` (B, T) after the cache's `length` positions; return logits.

        Logits are (B, V) for the last position when `last_only`, else (B, T, V).
        The cache is extended by T positions. `decode` marks a sampling step
        (as opposed to reading the prompt); with T > 1 it checks drafted tokens,
        each row computed bit for bit as a one-token step would compute it. `stop` is asked between layers:
        when it says so, the pass ends there and returns None, the cache's
        length unchanged (what the first layers wrote past it is overwritten
        by the next pass), so a cancelled prefill costs at most one layer.
        """
        cfg = self.cfg
        B, T = tokens.shape
        start = cache.length
        cache.ensure_capacity(start + T)
        x = self.embed(tokens).to(self.act_dtype)
        if cfg.embed_scale != 1.0:
            x = x * torch.tensor(cfg.embed_scale, dtype=x.dtype)
        positions = torch.arange(start, start + T, device=tokens.device)
        rope = {t: tuple(c.to(self.act_dtype) for c in rope_cos_sin(inv, positions))
                for t, inv in self._inv_freq.items()}
        exact = self.exact_attention and not decode
        self.phase.decode = decode
        # Decode rows, and one prompt row outside exact mode, attend by step_attention: no mask.
        masks = {} if decode or (T == 1 and not exact) else {
            w: self._mask(start, T, w, tokens.device)
            for w in {cfg.sliding_window if cfg.is_sliding(i) else None for i in range(cfg.n_layers)}}
        for i, block in enumerate(self.layers):
            if stop is not None and stop():
                return None
            cos, sin = rope[cfg.layer_rope_theta(i)]
            window = cfg.sliding_window if cfg.is_sliding(i) else None
            x = block(x, cache, start, cos, sin, masks.get(window), exact)
        cache.length = start + T
        if last_only:
            x = x[:, -1]
        return self.output(self.norm(x)).float()

    @classmethod
    def from_weights(cls, cfg: ModelConfig, weights, dtype: torch.dtype = torch.float32,
                     packer=None) -> "Transformer":
        """Build a model from canonical (Hugging Face-named) tensors; consumes `weights`.

        `weights` is a dict or a lazy source (loading/gguf.py) that reads each tensor
        when it is popped, so only one layer's float32 tensors exist at a time.
        `packer` (quantize.Packer) turns each linear, and the embedding table,
        into its run-format module as soon as it is read; without one, linears
        are nn.Linear in `dtype`.
        """
        with torch.device("meta"):
            model = cls(cfg)
        model._inv_freq = {t: rope_inv_freq(cfg, t) for t in model._inv_freq}

        def take(name: str) -> torch.Tensor:
            try:
                return weights.pop(name).to(dtype)
            except KeyError:
                raise KeyError(f"missing tensor {name}") from None

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.contiguous(), requires_grad=False)

        def linear(owner: nn.Module, attr: str, names: list[str], bias: list[str] | None = None) -> None:
            w = torch.cat([take(n) for n in names]) if len(names) > 1 else take(names[0])
            b = torch.cat([take(n) for n in bias]) if bias else None
            if packer is not None:
                setattr(owner, attr, packer.linear(w, b))
                return
            lin = getattr(owner, attr)
            lin.weight = param(w)
            if b is not None:
                lin.bias = param(b)

        if packer is not None:
            model.embed, model.output = packer.tables(weights, cfg)
        else:
            model.embed.weight = param(take("model.embed_tokens.weight"))
            if "lm_head.weight" in weights:
                model.output.weight = param(take("lm_head.weight"))
            else:
                model.output.weight = model.embed.weight
        model.norm.weight = param(take("model.norm.weight"))
        for i, block in enumerate(model.layers):
            p = f"model.layers.{i}."
            a = block.attn
            linear(a, "wqkv", [p + f"self_attn.{n}_proj.weight" for n in "qkv"],
                   [p + f"self_attn.{n}_proj.bias" for n in "qkv"] if cfg.qkv_bias else None)
            linear(a, "wo", [p + "self_attn.o_proj.weight"])
            if cfg.qk_norm:
                a.q_norm.weight = param(take(p + "self_attn.q_norm.weight"))
                a.k_norm.weight = param(take(p + "self_attn.k_norm.weight"))
            linear(block.mlp, "w_gate_up", [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"])
            linear(block.mlp, "w_down", [p + "mlp.down_proj.weight"])
            block.attn_norm.weight = param(take(p + "input_layernorm.weight"))
            if cfg.sandwich_norm:
                block.attn_post_norm.weight = param(take(p + "post_attention_layernorm.weight"))
                block.ffn_norm.weight = param(take(p + "pre_feedforward_layernorm.weight"))
                block.ffn_post_norm.weight = param(take(p + "post_feedforward_layernorm.weight"))
            else:
                block.ffn_norm.weight = param(take(p + "post_attention_layernorm.weight"))
        return model.share_phase()
