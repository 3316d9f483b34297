"""Prompt layout: a model's fill-in-the-middle template, or plain left-to-right.

Templates are recognised by the special tokens a tokenizer declares:

| family | tokens | order used |
| --- | --- | --- |
| StarCoder / StarCoder2 | `<fim_prefix>` `<fim_suffix>` `<fim_middle>` | SPM (trained on PSM and SPM) |
| CodeLlama | `<PRE>` `<SUF>` `<MID>` (or `▁<PRE>` ...) | SPM (trained on PSM and SPM) |
| Qwen2.5-Coder (also CodeGemma) | `<\\|fim_prefix\\|>` `<\\|fim_suffix\\|>` `<\\|fim_middle\\|>` | PSM, cursor line in the middle |
| DeepSeek-Coder | `<｜fim▁begin｜>` `<｜fim▁hole｜>` `<｜fim▁end｜>` | PSM, cursor line in the middle |

Orders, with the header put right before the prefix text in every case:

- PSM: `[BOS] <prefix> header lines <suffix> suffix <middle> line`, where
  `lines` is the prefix up to the start of the cursor's line and `line` the
  text already typed on it: the middle the model is asked for starts at the
  beginning of the line, and the typed part is its given start.
- SPM: `[BOS] <prefix> <suffix> suffix <middle> header prefix`
- plain: `[BOS] header prefix` (no FIM tokens: Gemma 3 270M and SmolLM2;
  the server uses the suffix afterwards to trim)

Every order ends with the text typed at the cursor, so typing on a line only
appends tokens and the KV-cache of everything before stays valid: in PSM the
suffix is recomputed only when the cursor moves to another line. Each layout
is a pure function of the texts, so a warm cache completes like a cold one.
In SPM the header follows the suffix: an edit below the cursor then
recomputes the header too, but typing does not.

Repository format: a template whose tokenizer also has `<|file_sep|>`
(Qwen2.5-Coder) gets the request's context as the files it was trained on,
before the FIM part, instead of the comment header:
`(<|file_sep|> path\n code)* <|file_sep|> path\n <prefix> ...`. No
`<|repo_name|>` line: with one, the 0.5B filled `is_prime` in
tests/data/sample.py with the body of the function below it.

Each part is tokenized on its own and the ids are concatenated, template
tokens inserted by id. Why: (1) the ids of a part then depend on that
part's text only, so a keystroke in the prefix can change only the last
tokens of the prefix and never a token of the header (one `encode` of the
joined text could merge across the boundary); the KV-cache reuses the
longest common token prefix, so this stability is what makes reuse work;
(2) template tokens are never spelled in text, so the model's control
tokens come from the template only: a document that contains
`<|file_sep|>` gets its characters, not the token. A SentencePiece tokenizer that
prepends a space to every encoded text (`add_space_prefix`, CodeLlama's)
would put one in front of each part; CodeLlama's reference code strips it
from the suffix, which this module does not do yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

if TYPE_CHECKING:  # only for annotations
    from .tokenizer import Tokenizer

Order = Literal["psm", "spm"]


@dataclass(frozen=True)
class FimTemplate:
    name: str
    prefix: str   # the special-token contents
    suffix: str
    middle: str
    order: Order
    prefix_id: int = -1
    suffix_id: int = -1
    middle_id: int = -1
    file_sep_id: int = -1     # the repository format's separator, -1 where the model has none


# (name, (prefix, suffix, middle) spellings to try, order)
KNOWN_TEMPLATES: tuple[tuple[str, tuple[tuple[str, str, str], ...], Order], ...] = (
    ("qwen", (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),), "psm"),
    ("starcoder", (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),), "spm"),
    ("codellama", (("▁<PRE>", "▁<SUF>", "▁<MID>"), ("<PRE>", "<SUF>", "<MID>")), "spm"),
    ("deepseek", (("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),), "psm"),
)


def _lookup(tokenizer: Tokenizer, specials: dict[str, int], content: str) -> int | None:
    if content in specials:
        return specials[content]
    return tokenizer.token_id(content)


def detect_template(tokenizer: Tokenizer) -> FimTemplate | None:
    """The FIM template whose three tokens this tokenizer has, or None (plain completion)."""
    specials = tokenizer.special_tokens()
    for name, spellings, order in KNOWN_TEMPLATES:
        for pre, suf, mid in spellings:
            ids = [_lookup(tokenizer, specials, t) for t in (pre, suf, mid)]
            if all(i is not None for i in ids):
                sep = _lookup(tokenizer, specials, "<|file_sep|>")
                return FimTemplate(name, pre, suf, mid, order, *ids, file_sep_id=-1 if sep is None else sep)
    return None


@dataclass
class Prompt:
    """The token ids of one prompt and the parts they came from, in order.

    `parts` are (name, ids) with names among bos, file, fim_prefix,
    fim_suffix, fim_middle, header, lines, prefix, suffix (`prefix` is always
    the part that ends at the cursor). `protected` is how many leading ids
    token healing must leave alone: everything before the prefix text when
    that text ends the prompt, else all of them (PSM: the cursor is not at
    the end of the sequence, so there is nothing to heal).
    """

    ids: list[int]
    parts: list[tuple[str, list[int]]] = field(default_factory=list)
    template: FimTemplate | None = None

    @property
    def protected(self) -> int:
        if self.parts and self.parts[-1][0] == "prefix":
            return len(self.ids) - len(self.parts[-1][1])
        return len(self.ids)

    def part(self, name: str) -> list[int]:
        for n, ids in self.parts:
            if n == name:
                return ids
        return []


def build_prompt(tokenizer: Tokenizer, template: FimTemplate | None, header: str, prefix: str,
                 suffix: str, files: Sequence[tuple[str, str]] = (), path: str = "") -> Prompt:
    """Token ids for the context, prefix and suffix in the template's order (see the module docstring).

    `files` ((path, code) pairs) and `path` replace `header` where the
    template has the repository format's separator.
    """
    parts: list[tuple[str, list[int]]] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        parts.append(("bos", [tokenizer.bos_id]))

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text) if text else []

    if template is not None and template.file_sep_id >= 0 and (files or path):
        for name, code in files:
            body = code.rstrip("\n")
            parts.append(("file", [template.file_sep_id] + enc(f"{name}\n{body}\n")))
        parts.append(("file", [template.file_sep_id] + enc(f"{path or 'file'}\n")))
        header = ""
    head = ("header", enc(header))
    if template is None:
        parts += [head, ("prefix", enc(prefix))]
    else:
        suf = ("suffix", enc(suffix))
        p, s, m = (("fim_prefix", [template.prefix_id]), ("fim_suffix", [template.suffix_id]),
                   ("fim_middle", [template.middle_id]))
        if template.order == "spm":
            parts += [p, s, suf, m, head, ("prefix", enc(prefix))]
        else:
            cut = prefix.rfind("\n") + 1
            parts += [p, head, ("lines", enc(prefix[:cut])), s, suf, m, ("prefix", enc(prefix[cut:]))]
    ids = [i for _, part in parts for i in part]
    return Prompt(ids=ids, parts=parts, template=template)
