"""Token healing on a real `tokenizers` byte-level BPE whose merges the test chooses.

The merges make `getUs` end in the token `Us` while `Use` and `User` are
tokens too, make `\\n  ` (a partial indentation) one token with `\\n    `
another, and `=` a prefix of `==`: the three ways a cursor sits inside a
token.
"""
import time

import pytest
import torch
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from keystroke.engine.api import SamplingParams, StopPolicy
from keystroke.engine.generate import generate
from keystroke.engine.healing import HealPlan, VocabIndex, heal, vocab_index
from keystroke.engine.tokenizer import Tokenizer, ids_by_text

WORDS = ("get", "User", "Name", "ĊĠĠĠĠ", "==", "Ġ==")
SPECIALS = ("<|endoftext|>", "<s>")


def toy_tokenizer(words=WORDS) -> Tokenizer:
    """Byte-level BPE over the whole text (no pre-split), spelling each word by left-to-right merges."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for word in words:
        built = word[0]
        for ch in word[1:]:
            if built + ch not in vocab:
                merges.append((built, ch))
                vocab[built + ch] = len(vocab)
            built += ch
    backend = Backend(BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    return Tokenizer(backend, bos_id=backend.token_to_id("<s>"),
                     eos_ids=[backend.token_to_id("<|endoftext|>")], add_bos=True)


def strings_of(tok, ids):
    return [tok.token_strings()[i] for i in ids]


def test_toy_tokenizer_splits_as_intended():
    tok = toy_tokenizer()
    assert strings_of(tok, tok.encode("getUs")) == ["get", "Us"]
    assert strings_of(tok, tok.encode("x\n  ")) == ["x", "\n  "]


def test_partial_word_is_backed_up_and_only_extensions_are_allowed():
    tok = toy_tokenizer()
    ids = [tok.bos_id] + tok.encode("x = getUs")
    plan = heal(tok, ids, protected=1)
    assert plan.active and plan.removed_text == "Us"
    assert plan.ids == ids[:-1] and plan.removed_ids == (ids[-1],)
    mask = plan.allowed_mask(tok)
    allowed = {tok.token_strings()[i] for i in mask.nonzero().flatten().tolist()}
    # extensions of "Us", and its shorter pieces ("U", then "s" is constrained next step)
    assert allowed == {"U", "Us", "Use", "User"}
    assert mask[ids[-1]]  # the removed token itself stays possible


def test_partial_indentation_and_operator_are_healed():
    tok = toy_tokenizer()
    plan = heal(tok, tok.encode("def f():\n  "), protected=0)
    assert plan.removed_text == "\n  "
    assert tok.token_id("ĊĠĠĠĠ") in plan.allowed_mask(tok).nonzero().flatten().tolist()
    plan = heal(tok, tok.encode("if a ="), protected=0)
    assert plan.removed_text == " ="
    allowed = {tok.token_strings()[i] for i in plan.allowed_mask(tok).nonzero().flatten().tolist()}
    assert allowed == {" ", " =", " =="}


def test_complete_token_is_left_alone():
    tok = toy_tokenizer()
    ids = tok.encode("getUser")
    assert strings_of(tok, ids)[-1] == "User"
    plan = heal(tok, ids, protected=0)
    assert not plan.active and plan.ids == ids and plan.allowed_mask(tok) is None


def test_protected_ids_are_never_removed():
    tok = toy_tokenizer()
    ids = [tok.bos_id] + tok.encode("getUs")
    assert not heal(tok, ids, protected=len(ids)).active
    assert not heal(tok, [tok.bos_id], protected=0).active  # BOS is a control token


def test_special_tokens_are_never_allowed():
    tok = toy_tokenizer(WORDS + ("<|",))
    plan = heal(tok, tok.encode("a <"), protected=0)
    assert plan.removed_text == "<"
    allowed = plan.allowed_mask(tok).nonzero().flatten().tolist()
    assert tok.token_id("<|") in allowed
    assert tok.token_id("<|endoftext|>") not in allowed


class ScriptedModel:
    """Stands in for the transformer: prefers `plain` first, then EOS."""

    def __init__(self, vocab, first_choices, eos):
        self.vocab, self.first, self.eos, self.calls = vocab, first_choices, eos, 0

    def first_logits(self):
        logits = torch.full((1, self.vocab), -10.0)
        for rank, token in enumerate(self.first):
            logits[0, token] = 10.0 - rank
        return logits

    def __call__(self, tokens, cache, decode=False):
        self.calls += 1
        logits = torch.full((tokens.shape[0], self.vocab), -10.0)
        logits[:, self.eos] = 10.0
        return logits


def test_generate_with_healing_constrains_the_first_token_and_does_not_repeat_it():
    tok = toy_tokenizer()
    prompt = [tok.bos_id] + tok.encode("x = getUs")
    plan = heal(tok, prompt, protected=1)
    eos = next(iter(tok.eos_ids))
    # unconstrained, the model would write "Name"; among extensions of "Us" it prefers "User"
    model = ScriptedModel(tok.vocab_size, [tok.token_id("Name"), tok.token_id("User")], eos)
    out = generate(model, None, model.first_logits(), tok, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=8), heal=plan, line_before_cursor="x = getUs")
    assert [g.text for g in out] == ["er"]  # "getUs" + "er" == "getUser": nothing typed twice
    assert out[0].ids == [tok.token_id("User")] and out[0].stop_reason == "eos"
    unhealed = generate(model, None, model.first_logits(), tok, sampling=SamplingParams(),
                        stop=StopPolicy(max_tokens=8))
    assert unhealed[0].text == "Name"  # what the same model writes without healing


def test_generate_when_the_model_keeps_the_removed_token_adds_nothing():
    tok = toy_tokenizer()
    plan = heal(tok, tok.encode("getUs"), protected=0)
    eos = next(iter(tok.eos_ids))
    model = ScriptedModel(tok.vocab_size, [tok.token_id("Us")], eos)
    out = generate(model, None, model.first_logits(), tok, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=8), heal=plan)
    assert out[0].text == "" and out[0].ids == [tok.token_id("Us")]


def test_strip_only_removes_a_matching_front():
    plan = HealPlan(ids=[1], removed_text="Us", removed_ids=(2,))
    assert plan.strip("User") == "er" and plan.strip("Name") == "Name"


def test_index_of_a_large_vocabulary_is_fast_and_cached():
    class Big:
        vocab_size = 262_144
        bos_id, eos_ids = 2, frozenset({1})

        def token_strings(self):
            return [f"t{i:x}" for i in range(self.vocab_size)]

        def ids_by_text(self):
            return ids_by_text(self.token_strings())

        def special_tokens(self):
            return {"<bos>": 2, "<eos>": 1}

    big = Big()
    t0 = time.perf_counter()
    index = vocab_index(big)
    build = time.perf_counter() - t0
    assert vocab_index(big) is index
    t0 = time.perf_counter()
    mask = HealPlan([0], "t3ff", (0x3ff,)).allowed_mask(big)
    per_mask = time.perf_counter() - t0
    # t3ff, t3ffX, t3ffXX, and the shorter pieces t, t3, t3f
    pieces = sum(1 for p in ("t", "t3", "t3f") if p in big.token_strings())
    assert mask.shape == (262_144,) and int(mask.sum()) == 1 + 16 + 256 + pieces
    assert build < 3.0 and per_mask < 0.05, (build, per_mask)
    assert isinstance(index, VocabIndex)


def test_stop_rules_see_only_the_text_after_the_cursor():
    tok = toy_tokenizer()
    plan = heal(tok, tok.encode("getUs"), protected=0)
    eos = next(iter(tok.eos_ids))
    model = ScriptedModel(tok.vocab_size, [tok.token_id("User")], eos)
    # "Use" is in the healed token's text but was typed already: it must not count as written
    out = generate(model, None, model.first_logits(), tok, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=8, stop_strings=("Use",)), heal=plan)
    assert out[0].text == "er" and out[0].stop_reason == "eos"


@pytest.mark.real_model
def test_gemma_tokenizer_heals_a_partial_identifier():
    from keystroke.engine.loading.gguf import GGUFFile
    from keystroke.engine.loading.registry import resolve

    gguf = GGUFFile(resolve("gemma3-270m"))
    try:
        meta = {k: v for k, v in gguf.metadata.items() if k.startswith("tokenizer.")}
    finally:
        gguf.close()
    tok = Tokenizer.from_gguf_metadata(meta)
    tok.token_strings()  # the tokenizer's own cost, not the index's
    index = vocab_index(tok)
    assert index.build_seconds < 3.0  # measured ~0.4 s for 262,144 tokens
    ids = [tok.bos_id] + tok.encode("user = session.getUs")
    plan = heal(tok, ids, protected=1)
    assert plan.removed_text == "Us"
    t0 = time.perf_counter()
    mask = plan.allowed_mask(tok)
    assert time.perf_counter() - t0 < 0.05
    allowed = {tok.token_strings()[i] for i in mask.nonzero().flatten().tolist()}
    assert {"Us", "User", "Users"} <= allowed and "Name" not in allowed
    assert all(s.startswith("Us") or s == "U" for s in allowed)


def test_healing_may_retype_the_removed_text_in_shorter_pieces():
    # "\n" + 8 spaces removed; the model naturally writes "\n" + 7 spaces, then " for":
    # the rest of the removed text is constrained on the second step, and the
    # completion is only what comes after the removed text.
    tok = toy_tokenizer()
    plan = HealPlan([0], "\n  ", (tok.token_id("ĊĠĠ"),))
    first = plan.allowed_mask(tok)
    piece = tok.token_id("ĊĠ")
    assert piece is not None and first[piece]
    pending = HealPlan.consume(tok, "\n  ", piece)
    assert pending == " "
    second = plan.allowed_mask(tok, pending=pending)
    assert all(tok.token_strings()[i].startswith(" ") for i in second.nonzero().flatten().tolist())
    assert HealPlan.consume(tok, pending, tok.encode(" =")[0]) == ""


def test_a_lead_is_retyped_then_content_follows_at_its_end():
    """A lead of 2 blanks (a first line put at a column): blanks no further than it, then content."""
    tok = toy_tokenizer(("ĠĠĠ", "Ġfor", "ĠĠfor"))
    plan = HealPlan([0], lead="  ")
    strings = tok.token_strings()
    def allowed(pending=None):
        return {strings[i] for i in plan.allowed_mask(tok, pending=pending).nonzero().flatten().tolist()}
    first = allowed()
    assert {" ", "  f", "  for"} <= first
    assert "   " not in first and " for" not in first and "for" not in first
    assert "  " not in first    # exactly the lead: the next token would have to start content
    second = allowed(HealPlan.consume(tok, "  ", tok.token_id("Ġ")))
    assert {" f", " for"} <= second and " " not in second and "f" not in second
    content = {strings[i] for i in vocab_index(tok).content_starts().nonzero().flatten().tolist()}
    assert "f" in content and " f" not in content
    assert not any(s[0].isspace() for s in content) and "<|endoftext|>" not in content
    assert plan.strip("  for x") == "  for x"     # a lead is not typed: it stays in the completion


def test_a_lead_no_token_goes_beyond_is_typed_exactly_then_content_is_forced():
    tok = toy_tokenizer(())                      # bytes only: no token holds a blank and a letter
    plan = HealPlan([0], lead="  ")
    strings = tok.token_strings()
    last = {strings[i] for i in plan.allowed_mask(tok, pending=" ").nonzero().flatten().tolist()}
    assert last == {" "}


def test_blanks_to_retype_are_cut_as_the_tokenizer_cuts_code():
    """Qwen writes a line at column 12 as 11 spaces and ` odd`: the only shorter piece of 12 blanks
    allowed is that 11-space token, never the 3 spaces of a line at column 4 (then single spaces)."""
    from keystroke.engine import DEFAULT_MODEL
    from keystroke.engine.healing import blank_piece
    from keystroke.engine.loading.gguf import GGUFFile
    from keystroke.engine.loading.registry import resolve

    gguf = GGUFFile(resolve(DEFAULT_MODEL))
    try:
        meta = {k: v for k, v in gguf.metadata.items() if k.startswith("tokenizer.")}
    finally:
        gguf.close()
    tok = Tokenizer.from_gguf_metadata(meta)
    strings = tok.token_strings()
    assert [strings[i] for i in tok.encode(" " * 12 + "odd")] == [" " * 11, " odd"]
    assert blank_piece(tok, " " * 12) == " " * 11 and blank_piece(tok, "  x") is None
    plan = HealPlan([0], lead=" " * 12)
    allowed = {strings[i] for i in plan.allowed_mask(tok).nonzero().flatten().tolist()}
    assert " " * 11 in allowed and "   " not in allowed and " " not in allowed
    assert all(s.startswith(" " * 12) or s == " " * 11 for s in allowed)
    after = {strings[i] for i in plan.allowed_mask(tok, pending=" ").nonzero().flatten().tolist()}
    assert " odd" in after and all(s.startswith(" ") and s[1:2].strip() for s in after)
