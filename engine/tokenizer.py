"""Text <-> token ids, on the `tokenizers` library, from a tokenizer.json or from GGUF metadata.

A GGUF file carries no tokenizer.json, only llama.cpp's description of one
(`tokenizer.ggml.*`). Two kinds matter here:

- "gpt2": byte-level BPE with a merge list. The text is split first by the
  regexes llama.cpp uses for the file's `tokenizer.ggml.pre` (SmolLM2's
  "smollm" isolates every digit before the GPT-2 pattern).
- "llama": a SentencePiece vocabulary (Gemma 3). There is no merge list, so
  merges are derived from the vocabulary: every split of a token into two
  tokens becomes a merge, ranked by the merged token's position in the
  file. Spaces become "\u2581", unknown bytes fall back to <0xNN> tokens, and
  the user-defined tokens (runs of newlines and tabs, HTML tags) are added
  whole. Deriving ~500k merges takes seconds, so the built tokenizer.json is
  cached under the user cache directory, behind a line with its sha256: a
  damaged or foreign file is rebuilt, never trusted.

`encode` never adds BOS (the engine does that, see `add_bos`) and treats the
text of special tokens (`<|fim_prefix|>`, `<start_of_turn>`...) as plain text,
so a document cannot inject control tokens; prompts that need them use their
ids (`token_id`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from array import array
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tokenizers import AddedToken, Regex, __version__ as tokenizers_version, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from .errors import ModelError
from .paths import cache_root

log = logging.getLogger("keystroke.engine")


class TokenTexts(Sequence[str]):
    """Strings held as one text and their offsets in it, read like a list.

    A list of Gemma 3's 262,144 token texts as Python strings holds about 55 MB of the
    process; one string and an offset array hold them in a few MB."""

    def __init__(self, texts: Iterable[str]) -> None:
        starts, chunks, parts, end = array("q", [0]), [], [], 0
        for t in texts:
            parts.append(t)
            end += len(t)
            starts.append(end)
            if len(parts) >= 8192:   # join as it goes: never a list of all the small strings
                chunks.append("".join(parts))
                parts.clear()
        self._text = "".join(chunks + parts)
        self._starts = array("i", starts) if end < 2**31 else starts   # half the offsets' memory

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):   # a list, as a list's slice is
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._text[self._starts[i]:self._starts[i + 1]]

    def __iter__(self) -> Iterator[str]:
        text, starts = self._text, self._starts
        return (text[starts[i]:starts[i + 1]] for i in range(len(starts) - 1))

    def to_bytes(self) -> bytes:
        """The count, the offsets and the text (UTF-8): what `from_bytes` reads back."""
        return (struct.pack("<qq", len(self), self._starts.itemsize) + self._starts.tobytes()
                + self._text.encode("utf-8", "surrogatepass"))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> "TokenTexts":
        n, width = struct.unpack_from("<qq", data)
        made = cls(())
        made._starts = array("i" if width == 4 else "q")
        if made._starts.itemsize != width:
            raise ValueError("the offsets are of another width")
        made._starts.frombytes(bytes(data[16:16 + width * (n + 1)]))
        made._text = bytes(data[16 + width * (n + 1):]).decode("utf-8", "surrogatepass")
        if made._starts[0] != 0 or made._starts[-1] != len(made._text) or \
                any(a > b for a, b in zip(made._starts, made._starts[1:])):
            raise ValueError("the offsets do not fit the text")
        return made


def ids_by_text(texts: Sequence[str]) -> np.ndarray:
    """The indices of the non-empty `texts`, sorted by text, ties by index."""
    # A stable sort of ascending ids: 2-3x faster than sorting (text, id) pairs, which cost a first
    # request ~0.2 s on Qwen2.5's 152k tokens.
    keys = list(texts)   # for the sort only: a list of every text is what TokenTexts saves
    order = sorted((i for i, t in enumerate(keys) if t), key=keys.__getitem__)
    return np.array(order, dtype=np.int64)


# llama.cpp's pre-tokenizer regexes per `tokenizer.ggml.pre` (applied in order, each one
# splitting the pieces left by the one before).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}")
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (_GPT2,), "gpt2": (_GPT2,), "gpt-2": (_GPT2,), "mpt": (_GPT2,), "olmo": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2), "starcoder": (r"\p{N}", _GPT2), "refact": (r"\p{N}", _GPT2),
    "codeshell": (r"\p{N}", _GPT2),
    "llama3": (_LLAMA3,), "llama-v3": (_LLAMA3,), "llama-bpe": (_LLAMA3,), "smaug-bpe": (_LLAMA3,),
    "dbrx": (_LLAMA3,), "falcon3": (_LLAMA3,),
    "qwen2": (_QWEN2,), "deepseek-r1-qwen": (_QWEN2,), "stablelm2": (_QWEN2,),
    "deepseek-coder": _DEEPSEEK_CODER,
}

# llama.cpp token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

CACHE_FORMAT = "2"  # 2: a checked header line before the JSON


class Tokenizer:
    """One model's tokenizer: ids for text, text for ids, and which ids are special."""

    def __init__(self, backend: HFTokenizer, *, bos_id: int | None, eos_ids: Iterable[int],
                 add_bos: bool) -> None:
        self._backend = backend
        # Special-token text in a document stays text (see module docstring).
        self._backend.encode_special_tokens = True
        # Ids the model can emit; the loader raises it to the embedding rows when those are
        # padded past the tokenizer (the extra ids decode to '').
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.add_bos = add_bos and bos_id is not None
        # Every control token ends a completion, besides the file's EOS: none of them is code
        # (`<|endoftext|>`, `<|fim_pad|>`, `<|file_sep|>`, `<|im_end|>`, `<end_of_turn>`, a new BOS...).
        stops = {i for i in eos_ids if i is not None}
        stops.update(self.special_tokens().values())
        self.eos_ids: frozenset[int] = frozenset(stops)
        self._token_strings: TokenTexts | None = None
        self._ids_by_text: np.ndarray | None = None
        self.cache_file: Path | None = None   # where a GGUF-built backend is cached (from_gguf_metadata)

    # -- use ---------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS, special-token text is not parsed."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens included as their text."""
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def token_strings(self) -> TokenTexts:
        """Text of every id taken alone; '' where that is nothing or a partial UTF-8 sequence."""
        if self._token_strings is None:
            self._load_texts()
        return self._token_strings

    def ids_by_text(self) -> np.ndarray:
        """The ids whose text (`token_strings`) is not empty, sorted by that text, ties by id."""
        if self._ids_by_text is None:
            self._load_texts()
        return self._ids_by_text

    def _load_texts(self) -> None:
        """Decode every token and sort them once, or read both from beside the cached tokenizer:
        0.4 s and 0.5 s of Gemma 3's start (262,144 tokens), a file read instead."""
        where = self.cache_file.with_suffix(".texts") if self.cache_file is not None else None
        found = _read_texts(where) if where is not None else None
        if found is not None and len(found[0]) == self.vocab_size:
            self._token_strings, self._ids_by_text = found
            return
        texts = TokenTexts(self._decode_each())
        self._token_strings, self._ids_by_text = texts, ids_by_text(texts)
        if where is not None:
            _write_texts(where, texts, self._ids_by_text)

    def _decode_each(self, batch: int = 8192) -> Iterator[str]:
        for start in range(0, self.vocab_size, batch):
            ids = [[i] for i in range(start, min(start + batch, self.vocab_size))]
            for t in self._backend.decode_batch(ids, skip_special_tokens=False):
                yield "" if "\ufffd" in t else t

    def special_tokens(self) -> dict[str, int]:
        """Content -> id of the control tokens (BOS/EOS, FIM markers, chat turns...)."""
        return {tok.content: i for i, tok in self._backend.get_added_tokens_decoder().items()
                if tok.special}

    def token_id(self, content: str) -> int | None:
        return self._backend.token_to_id(content)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, *, bos_id: int | None = None,
                  eos_ids: Iterable[int] = (), add_bos: bool | None = None) -> "Tokenizer":
        """Load a tokenizer.json; BOS/EOS/add_bos come from the arguments or the
        tokenizer_config.json next to it, else from the tokenizer's own post-processor."""
        path = Path(path)
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise ModelError(f"cannot read tokenizer {path}: {exc}",
                             "the file must be a Hugging Face tokenizer.json") from None
        config = _read_json(path.with_name("tokenizer_config.json"))

        def named_id(key: str) -> int | None:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        if bos_id is None:
            bos_id = named_id("bos_token")
        eos = set(eos_ids)
        if not eos and named_id("eos_token") is not None:
            eos.add(named_id("eos_token"))
        if add_bos is None:
            if "add_bos_token" in config:
                add_bos = bool(config["add_bos_token"])
            else:
                with_special = backend.encode("a", add_special_tokens=True).ids
                add_bos = bos_id is not None and bool(with_special) and with_special[0] == bos_id
        return cls(backend, bos_id=bos_id, eos_ids=eos, add_bos=add_bos)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], *, cache_dir: Path | None = None) -> "Tokenizer":
        """Build from a GGUF's `tokenizer.ggml.*` fields (strings, lists, numpy arrays).

        The built tokenizer.json is cached in `cache_dir` (default: the user cache) under a
        hash of the vocabulary, so only the first load of a model pays for building it.
        """
        kind = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if kind not in ("gpt2", "llama") or not tokens:
            raise ModelError(f"unsupported GGUF tokenizer {kind!r}",
                             "supported: 'gpt2' (byte-level BPE) and 'llama' (SentencePiece); "
                             "use a Hugging Face folder with tokenizer.json instead")
        types = [int(t) for t in meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))]
        bos_id = _opt_int(meta.get("tokenizer.ggml.bos_token_id"))
        eos_id = _opt_int(meta.get("tokenizer.ggml.eos_token_id"))
        default_bos = kind == "llama"  # llama.cpp adds BOS to SentencePiece vocabularies by default
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_bos))
        eot_id = _opt_int(meta.get("tokenizer.ggml.eot_token_id"))

        cache_file = _cache_path(meta, cache_dir)
        backend = read_cached(cache_file) if cache_file is not None else None
        if backend is None:
            backend = _build_bpe(meta, types) if kind == "gpt2" else _build_sentencepiece(meta, types)
            if cache_file is not None:
                _write_cached(cache_file, backend.to_str())
        made = cls(backend, bos_id=bos_id, eos_ids=[eos_id, eot_id], add_bos=add_bos)
        made.cache_file = cache_file
        return made

    def recipe(self) -> dict[str, Any]:
        """What `from_cached` needs to rebuild this tokenizer from its cache file (plain data, JSON-able)."""
        return {"file": self.cache_file.name if self.cache_file else None, "bos_id": self.bos_id,
                "eos_ids": sorted(self.eos_ids), "add_bos": self.add_bos}

    @classmethod
    def from_cached(cls, directory: Path, recipe: Mapping[str, Any]) -> "Tokenizer | None":
        """The tokenizer `recipe()` described, from its checked cache file in `directory`; None if unusable."""
        if not isinstance(recipe.get("file"), str):
            return None
        backend = read_cached(Path(directory) / recipe["file"])
        if backend is None:
            return None
        made = cls(backend, bos_id=recipe["bos_id"], eos_ids=recipe["eos_ids"], add_bos=recipe["add_bos"])
        made.cache_file = Path(directory) / recipe["file"]
        return made


def _build_bpe(meta: Mapping[str, Any], types: list[int]) -> HFTokenizer:
    # Tokens are spelled in GPT-2's byte alphabet; respell any that the converter wrote as text.
    alphabet = _byte_alphabet()
    spelled = set(alphabet.values())
    tokens = [t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))
              for t in meta["tokenizer.ggml.tokens"]]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = HFTokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    regexes = PRE_TOKENIZER_REGEXES.get(pre, PRE_TOKENIZER_REGEXES["default"])
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    # A "control" token outside the byte alphabet is a converter's mislabel, not a real token.
    _add_tokens(backend, list(meta["tokenizer.ggml.tokens"]), types,
                keep=lambda t: set(t) <= spelled)
    return backend


def _build_sentencepiece(meta: Mapping[str, Any], types: list[int]) -> HFTokenizer:
    # Tokens made only of spaces are stored with real spaces; the vocabulary spells them "▁".
    original = list(meta["tokenizer.ggml.tokens"])
    tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in original]
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = _opt_int(meta.get("tokenizer.ggml.unknown_token_id"))
    unk = tokens[unk_id] if unk_id is not None else "<unk>"
    backend = HFTokenizer(BPE(vocab=vocab, merges=_derive_merges(tokens, vocab), unk_token=unk,
                          fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), backend.normalizer])
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    # The space runs, renamed above, are found by the merges; the other user-defined
    # tokens (newline and tab runs, tags) are matched whole, as llama.cpp does.
    _add_tokens(backend, original, types, keep=lambda t: t in vocab)
    return backend


def _derive_merges(tokens: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) split of a token into two tokens, best first.

    A merge ranks by the position of the token it makes (SentencePiece orders its pieces by
    score, and so does the file); among the splits of one token the longer left piece wins.
    """
    merges: list[tuple[int, int, int, str, str]] = []
    for index, token in enumerate(tokens):
        local = []
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        merges.extend((index, -len(l), -len(r), l, r) for _, _, l, r in local)
    merges.sort(key=lambda m: m[:3])
    return [(l, r) for _, _, _, l, r in merges]


def _add_tokens(backend: HFTokenizer, tokens: list[str], types: list[int], keep) -> None:
    """Control tokens become special; user-defined ones are matched whole, not special."""
    control = [AddedToken(t, normalized=False, special=True)
               for t, kind in zip(tokens, types) if kind == CONTROL and keep(t)]
    user = [AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, types) if kind == USER_DEFINED and keep(t)]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    spelling, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def _cache_path(meta: Mapping[str, Any], cache_dir: Path | None) -> Path | None:
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for key in sorted(k for k in meta if k.startswith("tokenizer.ggml.") and k != "tokenizer.ggml.scores"):
        value = meta[key]
        digest.update(key.encode())
        if isinstance(value, (list, tuple)):
            digest.update("\x00".join(map(str, value)).encode("utf-8", "surrogatepass"))
        elif hasattr(value, "tobytes"):
            digest.update(value.tobytes())
        else:
            digest.update(repr(value).encode())
    directory = cache_dir if cache_dir is not None else cache_root() / "tokenizers"
    return directory / f"{digest.hexdigest()[:32]}.tok"


_MAGIC = b"keystroke-tokenizer"


def _write_cached(path: Path, text: str) -> None:
    """`<magic> <format> <sha256 of the JSON>\n` then the tokenizer JSON, written atomically."""
    raw = text.encode("utf-8")
    head = b"%s %s %s\n" % (_MAGIC, CACHE_FORMAT.encode(), hashlib.sha256(raw).hexdigest().encode())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(head + raw)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next load its build time


def read_cached(path: Path) -> HFTokenizer | None:
    """The tokenizer cached at `path` if its header and checksum hold; a damaged file is deleted, None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, _, raw = data.partition(b"\n")
    parts = head.split(b" ")
    try:
        if len(parts) != 3 or parts[0] != _MAGIC or parts[1] != CACHE_FORMAT.encode():
            raise ValueError("it is not a keystroke tokenizer of this format")
        if hashlib.sha256(raw).hexdigest().encode() != parts[2]:
            raise ValueError("its checksum does not match")
        return HFTokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # tokenizers raises its own Exception type
        log.warning("the cached tokenizer %s is unusable (%s); rebuilding it", path, exc)
        path.unlink(missing_ok=True)
        return None


_TEXTS_MAGIC = b"keystroke-token-texts"
TEXTS_FORMAT = "2"   # 2: the offsets' width is written


def _texts_head(payload: bytes) -> bytes:
    # The texts come from the `tokenizers` library's decoding: another version may decode otherwise.
    return b"%s %s %s %s\n" % (_TEXTS_MAGIC, TEXTS_FORMAT.encode(), tokenizers_version.encode(),
                               hashlib.sha256(payload).hexdigest().encode())


def _write_texts(path: Path, texts: TokenTexts, order: np.ndarray) -> None:
    """`<magic> <format> <tokenizers version> <sha256>\n`, then the sorted ids' count, the ids and the
    texts (`TokenTexts.to_bytes`), written atomically; a read-only cache only costs the next start."""
    payload = struct.pack("<q", len(order)) + order.astype("<i8").tobytes() + texts.to_bytes()
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_texts_head(payload) + payload)
        os.replace(tmp, path)
    except OSError:
        pass


def _read_texts(path: Path) -> tuple[TokenTexts, np.ndarray] | None:
    """What `_write_texts` wrote at `path`, if its header and checksum hold; a damaged file is deleted."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, _, payload = data.partition(b"\n")
    try:
        if head + b"\n" != _texts_head(payload):
            raise ValueError("it is not token texts of this format, library version and checksum")
        view = memoryview(payload)
        (m,) = struct.unpack_from("<q", view)
        order = np.frombuffer(view[8:8 + 8 * m], dtype="<i8").astype(np.int64)
        texts = TokenTexts.from_bytes(view[8 + 8 * m:])
        if len(order) and (order.min() < 0 or order.max() >= len(texts)):
            raise ValueError("an id is out of range")
        return texts, order
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        log.warning("the cached token texts %s are unusable (%s); rebuilding them", path, exc)
        path.unlink(missing_ok=True)
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
