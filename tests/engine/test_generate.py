"""The decode loop: a random-weight transformer for cache/batch behaviour, scripted models for stops."""
import time

import pytest
import torch
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from keystroke.engine.api import SamplingParams, StopPolicy
from keystroke.engine.generate import TextStream, continues_on_line, generate
from keystroke.engine.model import ModelConfig, Transformer
from keystroke.engine.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    """One token per byte (so multi-byte characters span tokens), plus <s> and </s>."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Backend(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return Tokenizer(backend, bos_id=backend.token_to_id("<s>"), eos_ids=[backend.token_to_id("</s>")],
                     add_bos=True)


TOK = byte_tokenizer()
EOS = next(iter(TOK.eos_ids))


def tiny_model(vocab: int, seed: int = 0) -> Transformer:
    cfg = ModelConfig(family="llama", vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      head_dim=8, hidden_dim=64)
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, 32), "model.norm.weight": None}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (32, 32), p + "self_attn.k_proj.weight": (16, 32),
                       p + "self_attn.v_proj.weight": (16, 32), p + "self_attn.o_proj.weight": (32, 32),
                       p + "mlp.gate_proj.weight": (64, 32), p + "mlp.up_proj.weight": (64, 32),
                       p + "mlp.down_proj.weight": (32, 64), p + "input_layernorm.weight": None,
                       p + "post_attention_layernorm.weight": None})
    weights = {k: torch.ones(32) if s is None else torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}
    return Transformer.from_weights(cfg, weights)


class Recorder:
    """Wraps a model and records the shape of every token batch it runs."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __call__(self, tokens, cache, decode=False):
        self.shapes.append(tuple(tokens.shape))
        return self.model(tokens, cache)


def prefill(model, ids):
    cache = model.new_cache(capacity=8)
    logits = model(torch.tensor([ids]), cache)
    return cache, logits


PROMPT = [TOK.bos_id] + TOK.encode("def add(a, b):\n    return")


def greedy_reference(model, ids, steps):
    """Greedy decoding by recomputing the whole sequence each step (no cache reuse)."""
    ids, out = list(ids), []
    for _ in range(steps):
        cache = model.new_cache()
        token = int(model(torch.tensor([ids]), cache).argmax(-1))
        out.append(token)
        ids.append(token)
    return out


def test_greedy_matches_full_recompute_and_cache_holds_what_was_fed():
    model = tiny_model(TOK.vocab_size)
    cache, logits = prefill(model, PROMPT)
    out = generate(model, cache, logits, TOK, sampling=SamplingParams(), n=1,
                   stop=StopPolicy(max_tokens=12, stop_on_repetition=False), prompt_ids=PROMPT)
    (g,) = out
    ref = greedy_reference(model, PROMPT, 12)
    stop_at = ref.index(EOS) if EOS in ref else len(ref)
    assert g.ids == ref[:stop_at]
    assert g.stop_reason == ("eos" if EOS in ref else "max_tokens")
    assert g.text == TOK.decode(g.ids)
    # every token fed through the model sits in the cache; the last sampled one was never fed
    assert g.fed == (len(g.ids) if g.stop_reason == "eos" else len(g.ids) - 1)
    assert cache.length == len(PROMPT) + g.fed


def test_n_candidates_share_the_prefill_in_one_batch():
    model = tiny_model(TOK.vocab_size, seed=1)
    cache, logits = prefill(model, PROMPT)
    rec = Recorder(model)
    out = generate(rec, cache, logits, TOK, n=4, sampling=SamplingParams(temperature=1.5, seed=7),
                   stop=StopPolicy(max_tokens=6, stop_on_repetition=False), prompt_ids=PROMPT)
    assert rec.shapes and all(shape == (4, 1) for shape in rec.shapes)  # one batch, no re-prefill
    assert len(rec.shapes) <= 5
    assert cache.length == len(PROMPT)  # the caller's batch-1 cache is left as it was
    texts = [g.text for g in out]
    assert len(set(texts)) == len(texts) >= 2
    again = generate(model, cache, logits, TOK, n=4, sampling=SamplingParams(temperature=1.5, seed=7),
                     stop=StopPolicy(max_tokens=6, stop_on_repetition=False), prompt_ids=PROMPT)
    assert [g.text for g in again] == texts  # seeded: reproducible


def test_each_row_decodes_its_own_sequence():
    # with top_k=2 every sampled token must be among the 2 best for the row's own text;
    # rows that saw each other's tokens (a mixed-up batch cache) would break that
    model = tiny_model(TOK.vocab_size, seed=2)
    cache, logits = prefill(model, PROMPT)
    out = generate(model, cache, logits, TOK, n=4, sampling=SamplingParams(temperature=3.0, top_k=2, seed=3),
                   stop=StopPolicy(max_tokens=8, stop_on_repetition=False))
    assert len(out) >= 2
    for g in out:
        seq = list(PROMPT)
        for token in g.ids:
            alone = model(torch.tensor([seq]), model.new_cache())
            assert token in torch.topk(alone[0], 2).indices.tolist()
            seq.append(token)


def test_greedy_duplicates_are_returned_once():
    model = tiny_model(TOK.vocab_size)
    cache, logits = prefill(model, PROMPT)
    one = generate(model, cache.expanded(1), logits, TOK, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=5, stop_on_repetition=False))
    many = generate(model, cache, logits, TOK, n=3, sampling=SamplingParams(),
                    stop=StopPolicy(max_tokens=5, stop_on_repetition=False))
    assert [g.text for g in many] == [one[0].text]


class FakeCache:
    def __init__(self, batch=1):
        self.batch = batch

    def expanded(self, n):
        return FakeCache(n)


class Scripted:
    """A model that writes `scripts[row]` one token per step (EOS when a script runs out)."""

    def __init__(self, scripts, vocab=TOK.vocab_size, delay=0.0):
        self.scripts, self.vocab, self.delay, self.calls = scripts, vocab, delay, 0

    def logits_for(self, step, rows):
        out = torch.full((rows, self.vocab), -5.0)
        for r in range(rows):
            script = self.scripts[r % len(self.scripts)]
            out[r, script[step] if step < len(script) else EOS] = 5.0
        return out

    def first(self):
        return self.logits_for(0, 1)

    def __call__(self, tokens, cache, decode=False):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.logits_for(self.calls, tokens.shape[0])


def ids(text):
    return TOK.encode(text)


def run(scripts, n=1, **kw):
    model = Scripted(scripts)
    stop = kw.pop("stop", StopPolicy(max_tokens=32))
    out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(), stop=stop, n=n, **kw)
    return out, model


def test_rows_stop_independently():
    first = ids("x")
    scripts = [first, first + ids(" = 1\ny = 2"), first + ids("yz")]
    out, _ = run(scripts, n=3, stop=StopPolicy(max_tokens=32, mode="line"))
    assert [(g.text, g.stop_reason) for g in out] == [("x", "eos"), ("x = 1", "line"), ("xyz", "eos")]


def test_eos_stops_and_is_not_in_the_text():
    out, model = run([ids("ab")])
    assert out[0].text == "ab" and out[0].stop_reason == "eos" and out[0].ids == ids("ab")
    assert out[0].fed == 2 and model.calls == 2


def test_max_tokens():
    out, model = run([ids("abcdefgh")], stop=StopPolicy(max_tokens=3))
    assert out[0].text == "abc" and out[0].stop_reason == "max_tokens"
    assert model.calls == 2 and out[0].fed == 2
    out, model = run([ids("abc")], stop=StopPolicy(max_tokens=0))
    assert out[0].text == "" and out[0].stop_reason == "max_tokens" and model.calls == 0


def test_stop_string_cuts_the_text():
    out, _ = run([ids("foo()\nbar()")], stop=StopPolicy(stop_strings=("\nbar",)))
    assert out[0].text == "foo()" and out[0].stop_reason == "stop_string"


def test_block_mode_with_the_cursor_line():
    out, _ = run([ids("a = 1\n    b = 2\nc = 3\n")], line_before_cursor="    ",
                 stop=StopPolicy(mode="block"))
    # a blank body line: the block is the rest of the body, it ends at the dedent
    assert out[0].text == "a = 1\n    b = 2" and out[0].stop_reason == "block"


def test_repetition_stop():
    out, _ = run([ids("go()\n" * 5)])
    assert out[0].text == "go()" and out[0].stop_reason == "repetition"


def test_cancellation_stops_within_one_token():
    calls_when_cancelled = 3
    model = Scripted([ids("abcdefghijklmnop")])
    out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=32), is_cancelled=lambda: model.calls >= calls_when_cancelled)
    assert out[0].stop_reason == "cancelled"
    assert model.calls == calls_when_cancelled  # no model step after the flag was seen
    assert out[0].text == "abc" and out[0].fed == 3


def test_cancelled_before_start_runs_nothing():
    out, model = run([ids("abc")], is_cancelled=lambda: True)
    assert out[0].stop_reason == "cancelled" and out[0].text == "" and model.calls == 0


def test_deadline():
    model = Scripted([ids("abcdefghijklmnopqrstuvwxyz")], delay=0.03)
    t0 = time.monotonic()
    out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=64, deadline_ms=100))
    elapsed = time.monotonic() - t0
    assert out[0].stop_reason == "deadline"
    assert 1 <= len(out[0].ids) < 26 and elapsed < 0.5
    out, model = run([ids("abc")], deadline=time.monotonic() - 1)
    assert out[0].stop_reason == "deadline" and model.calls == 0


def test_multibyte_characters_split_over_tokens():
    text = "s = 'é€😀'"
    assert len(ids(text)) > len(text)  # several characters span tokens
    # a stop string of U+FFFD would fire if a half-decoded character ever reached the checker
    out, _ = run([ids(text)], stop=StopPolicy(stop_strings=("\ufffd",)))
    assert out[0].text == text and out[0].stop_reason == "eos"


def test_incomplete_character_at_the_end_is_held_back():
    stream = TextStream(TOK)
    for token in ids("aé")[:-1]:
        text = stream.push(token)
    assert text == "a"
    assert stream.push(ids("aé")[-1]) == "aé"


def test_text_stream_uses_the_prompt_for_context():
    stream = TextStream(TOK, context=ids("xy"))
    assert stream.push(ids("z")[0]) == "z"


@pytest.mark.parametrize("penalty, expect_repeat", [(1.0, True), (5.0, False)])
def test_repetition_penalty_sees_the_prompt_tail(penalty, expect_repeat):
    # the model slightly prefers "a" over "b"; "a" is in the prompt
    logits = torch.full((1, TOK.vocab_size), -5.0)
    logits[0, ids("a")[0]], logits[0, ids("b")[0]] = 2.0, 1.9
    model = Scripted([[]])
    out = generate(model, FakeCache(), logits, TOK, sampling=SamplingParams(repetition_penalty=penalty),
                   stop=StopPolicy(max_tokens=1), prompt_ids=ids("a"))
    assert (out[0].text == "a") == expect_repeat


def test_end_to_end_on_a_tiny_checkpoint_with_healing(tmp_path):
    """tests/tiny.py's checkpoint (trained BPE, Qwen2 with FIM tokens) through prompt, healing and decode."""
    from tests.tiny import make_tiny_model_dir

    from keystroke.engine.fim import build_prompt, detect_template
    from keystroke.engine.healing import heal
    from keystroke.engine.loading.hf import load_hf_folder

    cfg, weights, tok, _ = load_hf_folder(make_tiny_model_dir(tmp_path / "m", "qwen2", fim=True))
    model = Transformer.from_weights(cfg, weights)
    template = detect_template(tok)
    assert template is not None and template.name == "qwen" and template.order == "psm"
    prompt = build_prompt(tok, None, "import json\n", "def load(path):\n    with open(path) as f:\n        return json.lo", "")
    plan = heal(tok, prompt.ids, prompt.protected)
    assert plan.active and "json.lo".endswith(plan.removed_text)
    cache, logits = prefill(model, plan.ids)
    (g,) = generate(model, cache, logits, tok, sampling=SamplingParams(), heal=plan,
                    stop=StopPolicy(max_tokens=6, stop_on_repetition=False), prompt_ids=plan.ids)
    first = tok.token_strings()[g.ids[0]]
    assert first.startswith(plan.removed_text)  # the constraint held on a real model's logits
    written = tok.decode(g.ids)
    assert written.startswith(plan.removed_text)
    assert g.text == written[len(plan.removed_text):]  # the typed part is not repeated
    assert cache.length == len(plan.ids) + g.fed


class Ranked:
    """A model whose logits at step k rank the tokens of `steps[k]` first to last (EOS after the last step)."""

    def __init__(self, steps):
        self.steps, self.calls = steps, 0

    def logits_for(self, step, rows):
        out = torch.full((rows, TOK.vocab_size), -5.0)
        for rank, token in enumerate(self.steps[step] if step < len(self.steps) else [EOS]):
            out[:, token] = 5.0 - rank
        return out

    def first(self):
        return self.logits_for(0, 1)

    def __call__(self, tokens, cache, decode=False):
        self.calls += 1
        return self.logits_for(self.calls, tokens.shape[0])


@pytest.mark.parametrize("line, expected", [
    ("    x = frame(", "master)"),     # open bracket: the best continuation on the same line
    ("    x = a +", "master)"),
    ("    x = 1", ""),                 # a finished line: a line break means nothing to add
    ("", "master)"),                   # a blank line: the best code on it, not nothing
    ("    ", "master)"),
])
def test_line_mode_does_not_start_with_a_line_break_after_an_open_bracket_or_on_a_blank_line(line, expected):
    (nl,) = TOK.encode("\n")
    steps = [[nl] + ids("m"), ids("a"), ids("s"), ids("t"), ids("e"), ids("r"), ids(")"), [nl]]
    model = Ranked(steps)
    out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=16, mode="line"), line_before_cursor=line)
    assert (out[0].text if out else "") == expected


@pytest.mark.parametrize("line, language_id, expected", [
    ("    x = frame(", "python", True),
    ("    x = 1  # see (", "python", False),   # a comment ends with its line
    ("    x = 1  # see (", "", False),
    ("    x = 1  /* a */", "javascript", False),  # the comment is not code: `1` ends it
    ('    s = "abc', "python", True),           # a one-line string must be closed on this line
    ('    """Doc (', "python", False),          # a docstring may go on below
    ("", "python", False),
])
def test_continues_on_line_reads_the_line_with_the_lexer(line, language_id, expected):
    assert continues_on_line(line, language_id) is expected


def test_a_token_to_avoid_is_never_the_first_content_but_may_come_later():
    (space,) = TOK.encode(" ")
    r, x = ids("r")[0], ids("x")[0]
    steps = [[space], [r, x], [r], [EOS]]        # blanks first, then r (the avoided one) or x
    plain = generate(Ranked(steps), FakeCache(), Ranked(steps).first(), TOK, sampling=SamplingParams(),
                     stop=StopPolicy(max_tokens=8))
    model = Ranked(steps)
    avoided = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                       stop=StopPolicy(max_tokens=8), avoid_first=r)
    assert plain[0].text == " rr" and avoided[0].text == " xr"


def test_a_last_line_that_jumps_over_the_suffix_is_cut_at_the_end_token():
    """`return x` then the end token, with code of the same block below: nothing (stops.py's jump rule)."""
    steps = [[t] for t in ids("    return x")] + [[EOS]]
    for suffix, expected in (("\n    y = 1\n", ""), ("\nz = 2\n", "    return x")):
        model = Ranked(steps)
        out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                       stop=StopPolicy(max_tokens=32, mode="line", language_id="python"), suffix=suffix)
        assert out[0].text == expected
        assert out[0].stop_reason == ("suffix" if not expected else "eos")


@pytest.mark.parametrize("above, column", [
    ('def area(r):\n    """The area."""\n', 4),
    ("def f(xs):\n  for x in xs:\n", 4),         # the text's own indent step
    ("x = 1\n", None),                           # no header above
])
def test_an_empty_line_under_a_header_with_no_body_is_written_at_the_bodys_column(above, column):
    """The model would start at column 0 (`d`, a new `def`); the lead puts its line in the body."""
    (space,) = TOK.encode(" ")
    steps = [ids("d") + [space]] * 8 + [ids("e"), ids("f"), [EOS]]
    model = Ranked(steps)
    out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=12, mode="line", language_id="python"), above=above)
    text = out[0].text if out else ""
    if column is None:
        assert text.startswith("d")
    else:
        assert text[:column] == " " * column and text[column] == "d", text
    # blanks the user typed are theirs: no lead
    model = Ranked(steps)
    typed = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(), line_before_cursor="  ",
                     stop=StopPolicy(max_tokens=12, mode="line", language_id="python"), above=above)
    assert not typed or not typed[0].text.startswith(" ")


def test_a_first_line_put_at_the_bodys_column_without_a_letter_or_digit_is_dropped():
    (space,) = TOK.encode(" ")
    steps = [[space]] * 3 + [ids(".")] + [[EOS]]
    model = Ranked(steps)
    out = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(),
                   stop=StopPolicy(max_tokens=12, mode="line", language_id="python"), above="def f():\n")
    assert [g.text for g in out] == [""]
    model = Ranked(steps)      # the same text where the user typed the blanks is theirs to judge
    typed = generate(model, FakeCache(), model.first(), TOK, sampling=SamplingParams(), line_before_cursor=" ",
                     stop=StopPolicy(max_tokens=12, mode="line", language_id="python"), above="def f():\n")
    assert typed[0].text.strip() == "."
