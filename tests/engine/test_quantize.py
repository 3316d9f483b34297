"""The int8 run format: one copy of each weight, results independent of how a prompt is chunked.

Tiny random-weight checkpoints of each family (tests/tiny.py), quantized as
users run them (`Engine.load(quant="int8")`). Bit-identity is asserted with
`torch.equal`, not a tolerance: that is what lets the engine reuse any cached
prefix without the aligned prefill blocks it used to need.
"""
from __future__ import annotations

import random

import pytest
import torch

from keystroke.engine import Engine
from keystroke.engine.api import CompletionRequest, StopPolicy
from keystroke.engine.quantize import Int8Embedding, Int8Linear, Phase, quantize_rows


@pytest.mark.parametrize("fine", [False, True])
def test_int8_linear_rows_do_not_depend_on_their_neighbours(fine):
    torch.manual_seed(0)
    w, b = torch.randn(96, 64), torch.randn(96)
    lin = Int8Linear.from_float(w, b)
    lin.fine = fine
    x = torch.randn(37, 64) * torch.logspace(-2, 2, 37)[:, None]   # rows of very different size
    x[:, 5] *= 30   # an outlier channel, as after Gemma's norms
    together = lin(x)
    alone = torch.cat([lin(x[i:i + 1]) for i in range(len(x))])
    assert torch.equal(together, alone)
    # Against the same int8 weights in float32: what the activations' rounding costs.
    exact = torch.nn.functional.linear(x, lin.weight.float() * lin.scale[:, None], b)
    rel = ((together - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
    assert rel < (1e-4 if fine else 0.05), rel


def test_a_decode_step_row_is_one_int8_row_with_its_own_scale():
    """The decode branch quantizes with a Python-float scale: it must equal quantize_rows' int8 product."""
    torch.manual_seed(1)
    lin = Int8Linear.from_float(torch.randn(96, 64), torch.randn(96))
    lin.phase = Phase()
    lin.phase.decode = True
    for size in (1e-3, 1.0, 1e3):
        x = torch.randn(1, 64) * size
        y = lin(x)
        xq, xs = quantize_rows(x)
        ref = (xq.float() @ lin.weight.float().t()) * xs * lin.scale + lin.bias
        assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item()), size
    assert torch.equal(lin(torch.zeros(1, 64)), lin.bias.view(1, -1))   # an all-zero row stays finite


def test_quantize_rows_is_symmetric_int8_with_one_scale_per_row():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 1.0, -300.0]])
    q, s = quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (3, 1)
    assert q.abs().max() == 127 and q[1].abs().max() == 0   # an all-zero row stays zero, no NaN
    assert torch.allclose(q.float() * s, x, atol=300 / 127 / 2 + 1e-6)


def _engine(path, tmp_path, **kw) -> Engine:
    return Engine.load(path, quant="int8", cache_dir=tmp_path, response_cache=False, **kw)


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def family_dir(request, tmp_path_factory):
    from tests.tiny import make_tiny_model_dir
    return make_tiny_model_dir(tmp_path_factory.mktemp(request.param) / "m", family=request.param,
                               config_overrides={"max_position_embeddings": 4096})


def test_prefill_is_bit_identical_however_the_prompt_is_chunked(family_dir, tmp_path):
    engine = _engine(family_dir, tmp_path, weights_cache=False)
    model = engine.model
    ids = torch.tensor([engine.tokenizer.encode("def rgb_to_hsv(r, g, b):\n    maxc = max(r, g, b)\n" * 3)])
    T = ids.shape[1]
    assert T > 40   # longer than Gemma's sliding window (8): masking by window is exercised
    whole = model.new_cache(capacity=T)
    ref = model(ids, whole, last_only=False)
    rng = random.Random(7)
    for trial in range(3):
        cache = model.new_cache(capacity=4 if trial else 2 * T)   # small: the buffers grow mid-prompt
        parts, s = [], 0
        while s < T:
            e = min(T, s + (1 if trial == 2 else rng.randint(1, 13)))
            parts.append(model(ids[:, s:e], cache, last_only=False))
            s = e
        assert torch.equal(torch.cat(parts, 1), ref), f"trial {trial}"
        for layer in range(model.cfg.n_layers):
            assert torch.equal(cache.k[layer][:, :, :T], whole.k[layer][:, :, :T])
            assert torch.equal(cache.v[layer][:, :, :T], whole.v[layer][:, :, :T])


def test_warm_equals_cold_and_typing_costs_only_the_new_tokens(tiny_llama_dir, tmp_path):
    from tests.engine.test_cache_equivalence import SOURCE, apply

    warm = _engine(tiny_llama_dir, tmp_path / "warm")
    cold = _engine(tiny_llama_dir, tmp_path / "cold", persist=False)
    rng = random.Random(3)
    text, cursor, history = SOURCE, len(SOURCE) // 2, []
    stop = StopPolicy(max_tokens=6)
    for step in range(40):
        kind = rng.choice(["insert", "delete", "replace", "type", "type", "undo"])
        arg = rng.randint(1, 15) if kind == "delete" else rng.choice(["x", "(a, ", "\n    ", "return ", "0.5"])
        text, cursor = apply(text, history, (kind, rng.random(), arg))
        w = warm.complete(CompletionRequest(doc_id="d.py", prefix=text[:cursor], suffix=text[cursor:], stop=stop))
        c = cold.complete(CompletionRequest(doc_id="d.py", prefix=text[:cursor], suffix=text[cursor:], stop=stop,
                                            use_cache=False))
        assert w.text == c.text, step
    # Typing at the end: each keystroke computes its own new tokens, not a 32-token block.
    text = SOURCE[:600]
    warm.complete(CompletionRequest(doc_id="t.py", prefix=text, stop=stop))
    computed = []
    for ch in "def rgb_to_hsv_fast(r, g, b):\n    return r":
        text += ch
        computed.append(warm.complete(CompletionRequest(doc_id="t.py", prefix=text, stop=stop)).timings.computed_tokens)
    assert max(computed) <= 4, computed


def _tensors(model) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out.append(t)
    return out


def test_int8_model_holds_one_int8_copy_of_each_weight(family_dir, tmp_path):
    engine = _engine(family_dir, tmp_path, weights_cache=False)
    model, cfg = engine.model, engine.cfg
    tensors = _tensors(model)
    matrices = [t for t in tensors if t.dim() == 2 and t.shape[1] > 1]
    assert matrices and all(t.dtype == torch.int8 for t in matrices), {t.dtype for t in matrices}
    assert isinstance(model.embed, Int8Embedding)
    if cfg.tie_embeddings:
        assert model.embed.weight.data_ptr() == model.output.weight.data_ptr()
    params = sum(t.numel() for t in matrices)
    total = sum(t.numel() * t.element_size() for t in tensors)
    assert total < params * 1.2, (total, params)   # int8 plus small fp32 scales and norms


def test_prompts_use_two_int8_rows_and_decode_steps_one(tiny_llama_dir, tmp_path):
    """Every int8 linear reads the model's phase, whether converted now or mapped from the packed cache.
    (Without the C kernels' row-exact mode: with it, both are one 16-bit row, tested below.)"""
    for attempt in range(2):   # the first load converts and caches, the second maps the cache
        model = _engine(tiny_llama_dir, tmp_path).model
        model.phase.row_exact = False
        linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert linears and all(m.phase is model.phase and m.fine for m in linears), attempt
        x = torch.randn(3, linears[0].in_features)
        model.phase.decode = False
        fine = linears[0](x)
        model.phase.decode = True
        coarse = linears[0](x)
        model.phase.decode = False
        exact = torch.nn.functional.linear(x, linears[0].weight.float() * linears[0].scale[:, None],
                                           linears[0].bias)
        assert (fine - exact).abs().max() < (coarse - exact).abs().max()


def test_with_the_c_kernels_a_decode_step_gives_a_prefill_rows_bits(family_dir, tmp_path):
    """Row-exact mode (Phase.row_exact): K/V and logits of tokens decoded one at a time, or checked
    as drafted rows, equal those of the same tokens prefilled in one piece, bit for bit; so the
    engine keeps generated tokens' K/V and a warm request reuses them."""
    engine = _engine(family_dir, tmp_path)
    model = engine.model
    assert model.phase.row_exact, "the C kernels are unavailable or lost the timing: see engine.native"
    assert engine.keep_generated
    torch.manual_seed(7)
    ids = torch.randint(0, engine.cfg.vocab_size, (1, 40))
    whole = model.new_cache(capacity=64)
    ref = model(ids, whole, last_only=False)
    steps = model.new_cache(capacity=64)
    got = [model(ids[:, :10], steps, last_only=False)]
    for i in range(10, 30):                    # one-token decode steps
        got.append(model(ids[:, i:i + 1], steps, last_only=False, decode=True))
    got.append(model(ids[:, 30:35], steps, last_only=False, decode=True))   # a token and 4 drafted ones
    got.append(model(ids[:, 35:40], steps, last_only=False))                # a prompt chunk again
    assert torch.equal(torch.cat(got, dim=1), ref)
    for layer in range(engine.cfg.n_layers):
        assert torch.equal(steps.k[layer][:, :, :40], whole.k[layer][:, :, :40]), layer
        assert torch.equal(steps.v[layer][:, :, :40], whole.v[layer][:, :, :40]), layer
