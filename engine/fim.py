"""Prompt layout: a model's fill-in-the-middle template, or plain left-to-right.

Templates are recognised by the special tokens a tokenizer declares:

| family | tokens | order used |
| --- | --- | --- |
| StarCoder / StarCoder2 | `<fim_prefix>` `<fim_suffix>` `<fim_middle>` | SPM (trained on PSM and SPM) |
| CodeLlama | `<PRE>` `<SUF>` `<MID>` (or `▁<PRE>` ...) | SPM (trained on PSM and SPM) |
| Qwen2.5-Coder (also CodeGemma) | `<\\|fim_prefix\\|>` `<\\|fim_suffix\\|>` `<\\|fim_middle\\|>` | PSM (the only order documented) |
| DeepSeek-Coder | `<｜fim▁begin｜>` `<｜fim▁hole｜>` `<｜fim▁end｜>` | PSM (trained on PSM only) |

Orders, with the header put right before the prefix text in every case:

- PSM: `[BOS] <prefix> header prefix <suffix> suffix <middle>`
- SPM: `[BOS] <prefix> <suffix> suffix <middle> header prefix`
- plain: `[BOS] header prefix` (no FIM tokens: both shipped models, Gemma 3
  270M and SmolLM2; the server uses the suffix afterwards to trim)

SPM and plain put the prefix last, so typing at the cursor only appends
tokens and the KV-cache of everything before stays valid; PSM must
recompute the suffix after every keystroke, which is why SPM is preferred
where the model was trained on it. In SPM the header follows the suffix:
an edit below the cursor then recomputes the header too, but typing does not.

Each part is tokenized on its own and the ids are concatenated, template
tokens inserted by id. Why: (1) the ids of a part then depend on that
part's text only, so a keystroke in the prefix can change only the last
tokens of the prefix and never a token of the header (one `encode` of the
joined text could merge across the boundary); the KV-cache reuses the
longest common token prefix, so this stability is what makes reuse work;
(2) template tokens are never spelled in text, so the model's control
tokens come from the template only. A SentencePiece tokenizer that
prepends a space to every encoded text (`add_space_prefix`, CodeLlama's)
would put one in front of each part; CodeLlama's reference code strips it
from the suffix, which this module does not do yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

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
                return FimTemplate(name, pre, suf, mid, order, *ids)
    return None


@dataclass
class Prompt:
    """The token ids of one prompt and the parts they came from, in order.

    `parts` are (name, ids) with names among bos, fim_prefix, fim_suffix,
    fim_middle, header, prefix, suffix. `protected` is how many leading ids
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
                 suffix: str) -> Prompt:
    """Token ids for header/prefix/suffix in the template's order (see the module docstring)."""
    parts: list[tuple[str, list[int]]] = []
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        parts.append(("bos", [tokenizer.bos_id]))
    head = ("header", tokenizer.encode(header) if header else [])
    pre = ("prefix", tokenizer.encode(prefix) if prefix else [])
    if template is None:
        parts += [head, pre]
    else:
        suf = ("suffix", tokenizer.encode(suffix) if suffix else [])
        p, s, m = (("fim_prefix", [template.prefix_id]), ("fim_suffix", [template.suffix_id]),
                   ("fim_middle", [template.middle_id]))
        if template.order == "spm":
            parts += [p, s, suf, m, head, pre]
        else:
            parts += [p, head, pre, s, suf, m]
    ids = [i for _, part in parts for i in part]
    return Prompt(ids=ids, parts=parts, template=template)
