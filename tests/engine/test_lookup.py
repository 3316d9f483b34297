"""Drafted tokens (engine/lookup.py): a step that checks guesses computes what single steps compute, bit for bit.

The property that makes drafting safe is exactness, not closeness: every row
of a multi-row decode pass must equal the one-token step at its position, so
that greedy decoding with drafts writes the same tokens and leaves the same
cache as without. Tiny random checkpoints (tests/tiny.py), int8 as users run
them; the default model is checked in test_real_models.py.
"""
from __future__ import annotations

import torch

from keystroke.engine import Engine
from keystroke.engine.api import CompletionRequest, SamplingParams, StopPolicy
from keystroke.engine.generate import generate
from keystroke.engine.lookup import MIN_NGRAM, Drafter
from keystroke.engine.quantize import Int8Linear, Phase


def test_the_draft_is_what_followed_the_latest_earlier_occurrence_of_the_last_tokens():
    d = Drafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3], max_draft=3)
    assert d.draft() == [7, 8, 1]          # the latest "1 2 3" was followed by 7 8 1, not 4 5 9
    d.push(7)
    assert d.draft() == [8, 1, 2]          # the longest match, "1 2 3 7", decides
    assert Drafter([5, 6, 7, 8], max_draft=4).draft() == []   # nothing repeats: no guess
    assert Drafter([1, 2, 3, 1, 2], max_draft=0).draft() == []
    tail = [4] * (MIN_NGRAM - 1)
    assert Drafter([3] + tail + [6, 3] + tail, max_draft=2).draft() == [6, 3]


def test_the_draft_never_matches_the_last_tokens_with_themselves():
    # "1 2 3" occurs only at the end: the index holds n-grams followed by a token, never the open suffix.
    assert Drafter([9, 1, 2, 3], max_draft=3).draft() == []
    assert Drafter([1, 2, 3, 1, 2, 3], max_draft=4).draft() == [1, 2, 3]


def test_decode_rows_of_an_int8_linear_equal_one_row_steps_bit_for_bit():
    torch.manual_seed(0)
    lin = Int8Linear.from_float(torch.randn(96, 64), torch.randn(96))
    lin.phase = Phase()
    lin.phase.decode = True
    x = torch.randn(7, 64) * torch.logspace(-3, 3, 7)[:, None]
    x[3] = 0.0                                    # an all-zero row stays finite in both paths
    together = lin(x)
    alone = torch.cat([lin(x[i:i + 1]) for i in range(len(x))])
    assert torch.equal(together, alone)


def _engine(path, tmp_path) -> Engine:
    return Engine.load(path, quant="int8", cache_dir=tmp_path, response_cache=False, persist=False)


def test_a_decode_pass_over_several_tokens_equals_single_steps_in_logits_and_cache(tiny_gemma_dir, tmp_path):
    """Gemma's tiny model has a sliding window of 8: rows past it attend to their own window."""
    model = _engine(tiny_gemma_dir, tmp_path).model
    ids = torch.arange(3, 40).view(1, -1)
    one, many = model.new_cache(capacity=8), model.new_cache(capacity=8)
    model(ids[:, :20], one)
    model(ids[:, :20], many)
    steps = torch.cat([model(ids[:, i:i + 1], one, decode=True) for i in range(20, 37)])
    rows = model(ids[:, 20:37], many, decode=True, last_only=False)[0]
    assert torch.equal(steps, rows)
    assert one.length == many.length == 37
    for layer in range(model.cfg.n_layers):
        assert torch.equal(one.k[layer][:, :, :37], many.k[layer][:, :, :37])
        assert torch.equal(one.v[layer][:, :, :37], many.v[layer][:, :, :37])


def test_greedy_generation_with_drafts_equals_generation_without(tiny_llama_dir, tmp_path):
    engine = _engine(tiny_llama_dir, tmp_path)
    model, tok = engine.model, engine.tokenizer
    passes = {"rows": 0}
    forward = model.forward

    def counting(tokens, cache, *a, **k):
        if k.get("decode"):
            passes["rows"] = max(passes["rows"], tokens.shape[1])
        return forward(tokens, cache, *a, **k)

    model.forward = counting
    taken = 0
    for text in ("def f(x):\n    return x\n" * 6, "import os\nimport sys\n" * 5 + "import ", "a = b + c\n" * 9):
        prompt = tok.encode(text)
        results, lengths = {}, {}
        for draft in (0, 6):
            cache = model.new_cache(capacity=8)
            logits = model(torch.tensor([prompt]), cache)
            out = generate(model, cache, logits, tok, sampling=SamplingParams(temperature=0.0),
                           stop=StopPolicy(mode="block", max_tokens=40), prompt_ids=prompt, draft=draft)
            results[draft], lengths[draft] = out[0], cache.length
        assert results[6].ids == results[0].ids and results[6].text == results[0].text, text
        assert results[6].fed == results[0].fed and lengths[6] == lengths[0] == len(prompt) + results[0].fed
        taken += results[0].passes - results[6].passes
    assert passes["rows"] > 1 and taken > 0   # drafts were checked, and some were taken without a pass


def test_the_engine_drafts_for_int8_and_its_answers_do_not_change(tiny_llama_dir, tmp_path):
    engine = _engine(tiny_llama_dir, tmp_path)
    assert engine.draft_tokens > 0
    req = dict(doc_id="d.py", prefix="x = 1\ny = 2\nx = 1\ny = 2\nx = 1\n", suffix="", stop=StopPolicy(mode="block", max_tokens=30),
               use_cache=False)
    with_drafts = engine.complete(CompletionRequest(**req))
    engine.draft_tokens = 0
    without = engine.complete(CompletionRequest(**req))
    assert with_drafts.text == without.text
    assert without.timings.decode_passes >= with_drafts.timings.decode_passes > 0
    fp32 = Engine.load(tiny_llama_dir, quant="fp32", cache_dir=tmp_path / "fp32", persist=False)
    assert fp32.draft_tokens == 0   # float kernels may round a row differently with company: no drafts


def test_a_cancelled_pass_over_guesses_stops_within_a_layer_and_keeps_the_cache_true(tiny_llama_dir, tmp_path):
    engine = _engine(tiny_llama_dir, tmp_path)
    model, tok = engine.model, engine.tokenizer
    state = {"in_pass": False, "layers_run": 0}
    forward = model.forward

    def flagging(tokens, cache, *a, **k):
        state["in_pass"] = k.get("decode", False) and tokens.shape[1] > 1
        return forward(tokens, cache, *a, **k)

    model.forward = flagging
    prompt = tok.encode("a = b + c\n" * 9)
    cache = model.new_cache(capacity=8)
    logits = model(torch.tensor([prompt]), cache)
    out = generate(model, cache, logits, tok, sampling=SamplingParams(temperature=0.0),
                   stop=StopPolicy(mode="block", max_tokens=40), prompt_ids=prompt, draft=6,
                   is_cancelled=lambda: state["in_pass"])   # true at the first layer of the first pass over guesses
    assert out[0].stop_reason == "cancelled"
    assert cache.length == len(prompt) + out[0].fed


def test_the_draft_agrees_with_a_plain_search_on_random_sequences():
    """Against the definition, written out: the latest earlier n-gram (longest first) with a token after it."""
    import random

    def plain(ids, k):
        for n in range(4, MIN_NGRAM - 1, -1):
            for s in range(len(ids) - n - 1, -1, -1):
                if len(ids) > n and ids[s:s + n] == ids[-n:]:
                    return ids[s + n:s + n + k]
        return []

    rng = random.Random(5)
    for _ in range(400):
        ids = [rng.choice([0, 1, 2, 256, 65536, 2**31 - 1]) for _ in range(rng.randrange(0, 40))]
        d = Drafter(ids[:len(ids) // 2], max_draft=4)
        for token in ids[len(ids) // 2:]:
            d.push(token)
        assert d.draft() == plain(ids, 4), ids
