"""Sampling modes: each test fails if the rule it names is taken out."""
import torch

from keystroke.engine.api import SamplingParams
from keystroke.engine.sampling import make_generator, sample


def random_logits(batch=4, vocab=50, seed=0):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def draws(logits, params, count=400):
    gen = make_generator(params.seed if params.seed is not None else 0)
    return torch.stack([sample(logits, params, gen) for _ in range(count)])


def test_greedy_is_argmax():
    logits = random_logits()
    assert torch.equal(sample(logits, SamplingParams(temperature=0.0)), logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_actually_samples():
    logits = random_logits(batch=1, vocab=20) / 3  # flat enough to draw many tokens
    params = SamplingParams(temperature=1.0, seed=1234)
    a = draws(logits, params, 200)
    b = draws(logits, params, 200)
    assert torch.equal(a, b)
    assert len(set(a.flatten().tolist())) > 3  # not greedy in disguise
    c = draws(logits, SamplingParams(temperature=1.0, seed=99), 200)
    assert not torch.equal(a, c)


def test_top_k_restricts_support_to_the_k_best():
    logits = random_logits(batch=2, vocab=30) / 3
    got = draws(logits, SamplingParams(temperature=1.0, top_k=3, seed=0))
    for row in range(2):
        best3 = set(torch.topk(logits[row], 3).indices.tolist())
        seen = set(got[:, row].tolist())
        assert seen <= best3
        assert len(seen) > 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    # probabilities 0.5, 0.3, 0.1, 0.1 -> top_p 0.7 keeps the first two only
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    got = set(draws(probs.log(), SamplingParams(temperature=1.0, top_p=0.7, seed=0)).flatten().tolist())
    assert got == {0, 1}
    got_all = set(draws(probs.log(), SamplingParams(temperature=1.0, top_p=1.0, seed=0)).flatten().tolist())
    assert got_all == {0, 1, 2, 3}


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    hot = draws(logits, SamplingParams(temperature=2.0, seed=0))
    cold = draws(logits, SamplingParams(temperature=0.1, seed=0))
    assert (cold == 0).float().mean() > 0.99
    assert (hot == 0).float().mean() < 0.6


def test_repetition_penalty_breaks_a_tie_against_seen_tokens():
    logits = torch.tensor([[2.0, 2.0, -1.0], [-1.0, -1.0, -3.0]])
    # without a penalty the tie goes to the first index
    assert sample(logits, SamplingParams(), prev_ids=[[0], [0]]).tolist() == [0, 0]
    got = sample(logits, SamplingParams(repetition_penalty=1.3), prev_ids=[[0], [0]])
    assert got.tolist() == [1, 1]  # positive logit divided, negative multiplied: both push away


def test_allowed_mask_restricts_greedy_and_sampling():
    logits = random_logits(batch=1, vocab=40)
    allowed = torch.zeros(40, dtype=torch.bool)
    allowed[[5, 7]] = True
    assert sample(logits, SamplingParams(), allowed=allowed).item() in (5, 7)
    gen = make_generator(3)
    seen = {sample(logits, SamplingParams(temperature=5.0), gen, allowed=allowed).item() for _ in range(100)}
    assert seen == {5, 7}
    # a mask shorter than a padded model vocabulary counts the rest as disallowed
    short = allowed[:10]
    assert sample(logits, SamplingParams(), allowed=short).item() in (5, 7)
