"""Choosing the next token from logits: greedy, or temperature / top-k / top-p.

Order of operations, per row: restrict to `allowed` (token healing's
first-step constraint), apply the repetition penalty, then either take the
argmax (temperature 0) or scale by the temperature, keep the top-k, keep the
smallest set whose probability reaches top-p, and draw with `generator`.
"""
from __future__ import annotations

import torch

from .api import SamplingParams


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator seeded with `seed`, or None (torch's global RNG) when there is no seed."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: list[list[int]], penalty: float) -> torch.Tensor:
    """CTRL-style penalty (Keskar et al. 2019): every token seen before in a row is made less likely.

    A positive logit is divided by `penalty`, a negative one multiplied, so
    the penalty always pushes away from the token whatever its sign. Each
    token is penalised once, however often it appeared.
    """
    if penalty == 1.0 or not prev_ids:
        return logits
    logits = logits.clone()
    V = logits.shape[-1]
    for row, ids in enumerate(prev_ids):
        seen = torch.tensor(sorted({i for i in ids if 0 <= i < V}), dtype=torch.long, device=logits.device)
        if seen.numel() == 0:
            continue
        vals = logits[row, seen]
        logits[row, seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def _restrict(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    V = logits.shape[-1]
    mask = allowed.to(device=logits.device, dtype=torch.bool)
    if mask.shape[-1] < V:  # the model's vocabulary may be padded beyond the tokenizer's
        mask = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], V - mask.shape[-1])], dim=-1)
    mask = mask[..., :V]
    return logits.masked_fill(~mask, float("-inf"))


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs   # mass of the strictly more likely tokens
    drop_sorted = before >= p
    drop_sorted[..., 0] = False             # always keep the most likely token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
           prev_ids: list[list[int]] | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """One token id per row of `logits` (B, V), as a (B,) long tensor.

    `prev_ids[b]` are the ids the repetition penalty looks at for row b;
    `allowed` is a (V,) or (B, V) bool mask of the only tokens that may be
    chosen (None: all).
    """
    logits = logits.float()
    if allowed is not None:
        logits = _restrict(logits, allowed)
    if prev_ids:
        logits = apply_repetition_penalty(logits, prev_ids, params.repetition_penalty)
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    logits = _top_k(logits, params.top_k)
    logits = _top_p(logits, params.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
