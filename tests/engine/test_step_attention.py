"""The one-query-row attention of decode steps against torch's SDPA with the layer's mask."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keystroke.engine.model import step_attention


@pytest.mark.parametrize("window", [None, 5, 64])
@pytest.mark.parametrize("batch", [1, 3])
def test_step_attention_matches_masked_sdpa(window, batch):
    torch.manual_seed(0)
    H, n_kv, L, D = 6, 2, 20, 8
    q = torch.randn(batch, H, 1, D)
    cache_k, cache_v = torch.randn(batch, n_kv, 32, D), torch.randn(batch, n_kv, 32, D)
    keys, values = cache_k[:, :, :L], cache_v[:, :, :L]   # a view of a larger buffer, as KVCache.write returns
    allowed = torch.ones(1, L, dtype=torch.bool)
    if window is not None:
        allowed[:, : max(0, L - window)] = False
    ref = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=0.3, enable_gqa=True)
    out = step_attention(q, keys, values, 0.3, window)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    if window == 5:   # the window really cuts: attending to everything gives something else
        full = step_attention(q, keys, values, 0.3, None)
        assert not torch.allclose(full, ref, atol=1e-3)


# The C twin (engine/step_ops.c) that decode steps use where the C kernel is built: it must
# agree with step_attention to float32 rounding, and give each row what that row gives alone
# (a step that checks drafted tokens computes each row as a one-token step would).
@pytest.mark.parametrize("shape", [
    (1, 14, 2, 64, 520, 1, None),   # Qwen2.5 0.5B: grouped heads, a long cache
    (1, 14, 2, 64, 520, 5, None),   # decode rows: a token and 4 drafted ones
    (2, 4, 1, 256, 37, 3, 16),      # Gemma 3's head size, a sliding window that cuts
    (1, 8, 8, 128, 9, 2, 4),        # one query head per K/V head
    (1, 6, 2, 8, 1, 1, None),       # a single cached position
    (1, 4, 1, 256, 600, 1, 512),    # Gemma 3 270M's decode step: one K/V head, its heads split between threads
])
def test_the_c_step_attention_matches_torchs_and_rows_are_independent(shape):
    from keystroke.engine import native
    from keystroke.engine.model import step_attention as torch_step
    assert native.step_ops() is not None, f"the C kernel is unavailable: {native._why_not}"
    b, h, n_kv, d, end, t, window = shape
    g = torch.Generator().manual_seed(3)
    cache_k, cache_v = torch.randn(b, n_kv, end + 40, d, generator=g), torch.randn(b, n_kv, end + 40, d, generator=g)
    keys, values = cache_k[:, :, :end], cache_v[:, :, :end]
    q = torch.randn(b, h, t, d, generator=g) * 2
    got = native.step_attention(q, keys, values, d ** -0.5, window)
    first = end - t + 1
    ref = torch.cat([torch_step(q[:, :, i:i + 1], keys[:, :, :first + i], values[:, :, :first + i], d ** -0.5, window)
                     for i in range(t)], dim=2).transpose(1, 2).reshape(b, t, h * d)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-6)
    for i in range(t):                  # row i alone, over the keys it sees, gives the same bits
        alone = native.step_attention(q[:, :, i:i + 1], keys[:, :, :first + i], values[:, :, :first + i],
                                      d ** -0.5, window)
        assert torch.equal(alone[:, 0], got[:, i]), i


@pytest.mark.parametrize("heads", [4, 3, 1])
def test_splitting_a_groups_heads_between_threads_changes_no_bit(heads):
    from keystroke.engine import native
    assert native.step_ops() is not None, f"the C kernel is unavailable: {native._why_not}"
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, heads, 1, 64, generator=g)
    keys, values = torch.randn(1, 1, 300, 64, generator=g), torch.randn(1, 1, 300, 64, generator=g)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3, 5):
            torch.set_num_threads(threads)
            outs.append(native.step_attention(q, keys, values, 0.125, None))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(o, outs[0]) for o in outs[1:])


def test_the_c_step_attention_declines_what_it_cannot_compute():
    from keystroke.engine import native
    q = torch.randn(1, 4, 1, 8)
    k = torch.randn(1, 2, 10, 8)
    assert native.step_attention(q.double(), k.double(), k.double(), 0.3, None) is None   # not float32
    assert native.step_attention(q, k.transpose(2, 3), k.transpose(2, 3), 0.3, None) is None   # not the cache layout
    odd = torch.randn(1, 4, 1, 6)
    assert native.step_attention(odd, torch.randn(1, 2, 10, 6), torch.randn(1, 2, 10, 6), 0.3, None) is None
