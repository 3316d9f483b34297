"""K/V tensors of one token sequence, kept outside the model (many documents, one model).

A `KVCache` holds, for every layer, keys and values of shape
(batch, n_kv_heads, capacity, head_dim). `length` says how many positions are
valid; rewinding to a shorter prefix is a change of `length`, and appending
grows the buffers by doubling so that typing does not reallocate per key.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..model import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int = 1, capacity: int = 256,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.n_layers = cfg.n_layers
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.length = 0
        shape = (batch, cfg.n_kv_heads, max(capacity, 1), cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(cfg.n_layers)]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def nbytes(self) -> int:
        """Bytes held by the buffers (capacity, not length)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        new_cap = self.capacity
        while new_cap < needed:
            new_cap *= 2
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):
                new = old.new_zeros(old.shape[0], old.shape[1], new_cap, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                buffers[i] = new

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v for positions [start, start+T) and return all valid keys/values up to there."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k.to(self.dtype)
        self.v[layer][:, :, start:end] = v.to(self.dtype)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (rewinding is only a length change)."""
        self.length = max(0, min(length, self.length))

    def expanded(self, batch: int) -> "KVCache":
        """A copy of the valid prefix repeated `batch` times (n candidates share one prefill)."""
        if self.batch != 1:
            raise ValueError("only a single-sequence cache can be expanded")
        out = KVCache.__new__(KVCache)
        out.n_layers, out.n_kv_heads, out.head_dim = self.n_layers, self.n_kv_heads, self.head_dim
        out.dtype, out.device, out.length = self.dtype, self.device, self.length
        cap = self.capacity
        out.k = [t[:, :, :cap].expand(batch, -1, -1, -1).clone() for t in self.k]
        out.v = [t[:, :, :cap].expand(batch, -1, -1, -1).clone() for t in self.v]
        return out

    def row(self, index: int) -> "KVCache":
        """One sequence of a batched cache, as a batch-1 cache (a copy)."""
        out = KVCache.__new__(KVCache)
        out.n_layers, out.n_kv_heads, out.head_dim = self.n_layers, self.n_kv_heads, self.head_dim
        out.dtype, out.device, out.length = self.dtype, self.device, self.length
        out.k = [t[index : index + 1].clone() for t in self.k]
        out.v = [t[index : index + 1].clone() for t in self.v]
        return out

    def export(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The valid K/V of a batch-1 cache, trimmed to `length` (for persistence)."""
        return ([t[0, :, : self.length].clone() for t in self.k],
                [t[0, :, : self.length].clone() for t in self.v])

    @classmethod
    def restore(cls, cfg: ModelConfig, ks: list[torch.Tensor], vs: list[torch.Tensor],
                dtype: torch.dtype = torch.float32, extra: int = 256) -> "KVCache":
        """Rebuild a batch-1 cache from `export()`ed tensors."""
        length = ks[0].shape[1] if ks else 0
        cache = cls(cfg, batch=1, capacity=length + extra, dtype=dtype, device=ks[0].device if ks else "cpu")
        for i, (k, v) in enumerate(zip(ks, vs)):
            cache.k[i][0, :, :length] = k.to(dtype)
            cache.v[i][0, :, :length] = v.to(dtype)
        cache.length = length
        return cache
