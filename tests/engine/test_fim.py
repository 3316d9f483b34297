"""FIM template detection and prompt order, on `tokenizers` BPEs carrying each family's tokens."""
import pytest
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from keystroke.engine.fim import build_prompt, detect_template
from keystroke.engine.tokenizer import Tokenizer

FAMILIES = {
    "qwen": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "codellama": ("▁<PRE>", "▁<SUF>", "▁<MID>"),
    "deepseek": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
}


def make_tokenizer(fim_tokens=(), merges=(("x", "y"),), add_bos=True) -> Tokenizer:
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Backend(BPE(vocab=vocab, merges=list(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "</s>", *fim_tokens)])
    return Tokenizer(backend, bos_id=backend.token_to_id("<s>"), eos_ids=[backend.token_to_id("</s>")],
                     add_bos=add_bos)


@pytest.mark.parametrize("name, order", [("qwen", "psm"), ("starcoder", "spm"), ("codellama", "spm"),
                                         ("deepseek", "psm")])
def test_detects_each_family(name, order):
    tok = make_tokenizer(FAMILIES[name])
    template = detect_template(tok)
    assert template is not None and template.name == name and template.order == order
    assert [template.prefix_id, template.suffix_id, template.middle_id] == \
        [tok.token_id(t) for t in FAMILIES[name]]


def test_codellama_without_the_sentencepiece_space():
    template = detect_template(make_tokenizer(("<PRE>", "<SUF>", "<MID>")))
    assert template is not None and template.name == "codellama"


def test_no_template_without_all_three_tokens():
    assert detect_template(make_tokenizer()) is None
    assert detect_template(make_tokenizer(("<|fim_prefix|>", "<|fim_suffix|>"))) is None


def parts(tok, header, prefix, suffix):
    return [tok.encode(header), tok.encode(prefix), tok.encode(suffix)]


def test_spm_order_puts_the_prefix_last():
    tok = make_tokenizer(FAMILIES["starcoder"])
    pre, suf, mid = (tok.token_id(t) for t in FAMILIES["starcoder"])
    h, p, s = parts(tok, "# ctx\n", "def f(", "):\n    pass\n")
    prompt = build_prompt(tok, detect_template(tok), "# ctx\n", "def f(", "):\n    pass\n")
    assert prompt.ids == [tok.bos_id, pre, suf] + s + [mid] + h + p
    assert prompt.protected == len(prompt.ids) - len(p)


def test_psm_puts_the_cursor_line_in_the_middle():
    tok = make_tokenizer(FAMILIES["qwen"])
    pre, suf, mid = (tok.token_id(t) for t in FAMILIES["qwen"])
    h, lines, s = parts(tok, "# ctx\n", "import os\n", "):\n")
    line = tok.encode("def f(")
    prompt = build_prompt(tok, detect_template(tok), "# ctx\n", "import os\ndef f(", "):\n")
    assert prompt.ids == [tok.bos_id, pre] + h + lines + [suf] + s + [mid] + line
    assert prompt.protected == len(prompt.ids) - len(line)  # the typed line ends the prompt: it can be healed
    at_line_start = build_prompt(tok, detect_template(tok), "", "import os\n", "x\n")
    assert at_line_start.ids[-1] == mid and at_line_start.protected == len(at_line_start.ids)


def test_plain_order_is_header_then_prefix_and_ignores_the_suffix():
    tok = make_tokenizer()
    prompt = build_prompt(tok, None, "# ctx\n", "def f(", "):\n")
    h, p, _ = parts(tok, "# ctx\n", "def f(", "")
    assert prompt.ids == [tok.bos_id] + h + p
    assert prompt.protected == 1 + len(h)
    assert build_prompt(make_tokenizer(add_bos=False), None, "a", "b", "").ids[0] != tok.bos_id


@pytest.mark.parametrize("family", [None, "starcoder", "qwen", "deepseek"])
def test_typing_at_the_cursor_only_appends(family):
    tok = make_tokenizer(FAMILIES[family] if family else ())
    template = detect_template(tok)
    before = build_prompt(tok, template, "import os\n", "def f(a", "):\n    pass\n")
    after = build_prompt(tok, template, "import os\n", "def f(a, b", "):\n    pass\n")
    assert after.ids[:before.protected] == before.ids[:before.protected]
    assert after.ids[:len(before.ids)] == before.ids


def test_psm_keeps_the_suffix_until_the_cursor_leaves_the_line():
    tok = make_tokenizer(FAMILIES["qwen"])
    template = detect_template(tok)
    text = "import os\ndef f(a):\n    pass\n"
    before = build_prompt(tok, template, "", text[:16], text[16:])      # in `def f(a`
    typed = build_prompt(tok, template, "", text[:16] + ", b", text[16:])
    assert typed.ids[:len(before.ids)] == before.ids                    # the suffix's ids are reused
    newline = build_prompt(tok, template, "", text[:16] + "):\n", text[16:])
    assert newline.part("suffix") == before.part("suffix")
    assert newline.ids[:len(before.ids)] != before.ids                  # a new line: lines and middle move


QWEN_REPO = FAMILIES["qwen"] + ("<|file_sep|>",)


def test_repository_format_replaces_the_comment_header():
    tok = make_tokenizer(QWEN_REPO)
    template = detect_template(tok)
    sep = tok.token_id("<|file_sep|>")
    assert template.file_sep_id == sep
    prompt = build_prompt(tok, template, "# a comment header\n", "x = ", "\n",
                          files=[("util.py", "def add(a, b): ..."), ("io.py", "import os")], path="main.py")
    assert prompt.ids[:prompt.ids.index(template.prefix_id)] == (
        [tok.bos_id, sep] + tok.encode("util.py\ndef add(a, b): ...\n")
        + [sep] + tok.encode("io.py\nimport os\n") + [sep] + tok.encode("main.py\n"))
    assert prompt.part("header") == []
    without = build_prompt(make_tokenizer(FAMILIES["qwen"]), detect_template(make_tokenizer(FAMILIES["qwen"])),
                           "# h\n", "x = ", "\n", files=[("util.py", "y")], path="main.py")
    assert without.part("header") == make_tokenizer().encode("# h\n")  # no <|file_sep|>: the comment header


def test_file_separator_text_in_context_stays_text():
    tok = make_tokenizer(QWEN_REPO)
    template = detect_template(tok)
    prompt = build_prompt(tok, template, "", "x", "", files=[("a.py", "s = '<|file_sep|>'")], path="b.py")
    assert prompt.ids.count(template.file_sep_id) == 2                   # one per file, none from the text


def test_parts_are_tokenized_separately_so_the_header_is_stable():
    tok = make_tokenizer()  # "xy" is one token
    assert len(tok.encode("xy")) == 1
    prompt = build_prompt(tok, None, "ax", "y = 1", "")
    assert prompt.part("header") == tok.encode("ax")  # not merged with the prefix's "y"
    assert prompt.ids[1:1 + len(tok.encode("ax"))] == build_prompt(tok, None, "ax", "z", "").part("header")


def test_fim_token_text_in_the_document_stays_text():
    tok = make_tokenizer(FAMILIES["qwen"])
    template = detect_template(tok)
    prompt = build_prompt(tok, template, "", "s = '<|fim_middle|>'", "")
    assert prompt.ids.count(template.middle_id) == 1
