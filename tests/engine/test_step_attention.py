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
