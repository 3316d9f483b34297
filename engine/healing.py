"""Token healing: when the cursor may sit inside a token, back up over it.

A prompt that ends in `getUs` ends with a token like `Us`, and a model
trained on whole words rarely continues `Us` with `er`: it would have
written `User` as one token. So the last token of the prompt is removed and
the first generated token is constrained to one whose text starts with the
removed text (`Us`, `User`, `UserName`, ...); the caller then strips the
removed text from the front of the completion, so it is never typed twice.

The same covers a partial indentation run (`\\n  ` where `\\n    ` is one
token) and a partial operator (`=` before `==`). Healing happens only when
another token extends the last one, never reaches into the first
`protected` ids (BOS, header, template tokens) and never removes a special
token.

The vocabulary index (every token's text, sorted) is built once per
tokenizer and cached; tokens whose text starts with a given string are then
one contiguous range of it, found by two binary searches.
"""
from __future__ import annotations

import bisect
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

_MAX_CHAR = "\U0010ffff"


class VocabIndex:
    """Token texts sorted, for 'which tokens start with s' queries."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        t0 = time.perf_counter()
        strings = tokenizer.token_strings()
        excluded = _control_ids(tokenizer)
        by_text = tokenizer.ids_by_text()
        self.ids = by_text[~np.isin(by_text, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))]
        self.texts = _InOrder(strings, self.ids)   # what bisect reads: a few lookups a query
        self.strings = strings
        self.excluded = excluded
        self.size = max(len(strings), tokenizer.vocab_size)
        self.build_seconds = time.perf_counter() - t0
        self._line_breaks: torch.Tensor | None = None
        self._content_starts: torch.Tensor | None = None

    def line_breaks(self, size: int | None = None) -> torch.Tensor:
        """(size,) bool: True for the tokens whose text is blanks and then a line break, or starts with one."""
        if self._line_breaks is None:
            out = np.zeros(self.size, dtype=np.bool_)
            for i, s in enumerate(self.strings):
                if s.lstrip(" \t")[:1] in ("\n", "\r"):
                    out[i] = True
            self._line_breaks = torch.from_numpy(out)
        return _sized(self._line_breaks, size or self.size)

    def content_starts(self, size: int | None = None) -> torch.Tensor:
        """(size,) bool: True for the tokens whose text starts with a character that is not blank."""
        if self._content_starts is None:
            self._content_starts = torch.from_numpy(np.array(
                [bool(s) and not s[0].isspace() and i not in self.excluded for i, s in enumerate(self.strings)],
                dtype=np.bool_))
        return _sized(self._content_starts, size or self.size)

    def extending(self, text: str) -> np.ndarray:
        """Ids of the tokens whose text starts with `text`."""
        lo = bisect.bisect_left(self.texts, text)
        hi = bisect.bisect_left(self.texts, text + _MAX_CHAR, lo)
        return self.ids[lo:hi]

    def extended_by_longer(self, text: str) -> bool:
        """Whether some token's text starts with `text` and is longer."""
        hi = bisect.bisect_left(self.texts, text + _MAX_CHAR)
        return hi > bisect.bisect_right(self.texts, text)

    def exactly(self, text: str) -> np.ndarray:
        """Ids of the tokens whose text is exactly `text`."""
        lo = bisect.bisect_left(self.texts, text)
        hi = bisect.bisect_right(self.texts, text, lo)
        return self.ids[lo:hi]

    def mask(self, text: str, size: int | None = None, content_after: bool = False,
             piece: str | None = None) -> torch.Tensor:
        """(size,) bool: True for the tokens that can begin `text` or go beyond it.

        That is the tokens whose text starts with `text`, and those whose text
        is a non-empty proper prefix of it (the rest is constrained next step);
        given `piece`, of those shorter ones only the token that is `piece`.
        With `content_after`, a token that goes beyond `text` must go on with a
        character that is not blank, and a token that is `text` exactly is
        allowed only where no token does (then the next token must start with
        content, `content_starts`).
        """
        out = np.zeros(size or self.size, dtype=np.bool_)  # numpy: torch's threaded fill costs ms here
        longer = self.extending(text)
        if content_after:
            ends = [self.strings[i][len(text):len(text) + 1] for i in longer.tolist()]
            longer = longer[np.array([c != "" and not c.isspace() for c in ends], dtype=np.bool_)]
        # With content after, `text` exactly only where no token goes on from it: then the model
        # must start content on its next token, where it had blanks in mind (HumanEval: a lone `1`).
        exact = int(content_after and not len(longer))
        shorter = [piece] if piece is not None else [text[:k] for k in range(1, len(text))]
        parts = [longer] + [self.exactly(t) for t in shorter + ([text] if exact else [])]
        ids = np.concatenate(parts)
        out[ids[ids < out.shape[0]]] = True
        return torch.from_numpy(out)


class _InOrder(Sequence[str]):
    """`strings` read in the order of the ids `order`, without a list of them."""

    def __init__(self, strings: Sequence[str], order: np.ndarray) -> None:
        self._strings, self._order = strings, order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, k: int) -> str:  # type: ignore[override]
        return self._strings[int(self._order[k])]


def _sized(mask: torch.Tensor, size: int) -> torch.Tensor:
    """`mask` cut or padded with False to `size` (the model's vocabulary may be longer or shorter)."""
    if size <= mask.shape[0]:
        return mask[:size]
    return torch.cat([mask, torch.zeros(size - mask.shape[0], dtype=torch.bool)])


def _control_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """BOS, EOS/stop tokens and special tokens spelled like `<...>` (never a healed continuation).

    Added tokens made of plain text (Gemma's whitespace runs) stay in.
    """
    ids = set(tokenizer.eos_ids)
    if tokenizer.bos_id is not None:
        ids.add(tokenizer.bos_id)
    for content, i in tokenizer.special_tokens().items():
        body = content.strip().lstrip("▁")
        if len(body) > 2 and body[0] in "<[" and body[-1] in ">]":
            ids.add(i)
    return frozenset(ids)


_indexes: "weakref.WeakKeyDictionary[object, VocabIndex]" = weakref.WeakKeyDictionary()
_indexes_by_id: dict[int, tuple[object, VocabIndex]] = {}
_lock = threading.Lock()


def vocab_index(tokenizer: Tokenizer) -> VocabIndex:
    """The cached index of `tokenizer` (built on first use)."""
    with _lock:
        try:
            found = _indexes.get(tokenizer)
        except TypeError:  # not weak-referenceable: keep it alive with its index
            entry = _indexes_by_id.get(id(tokenizer))
            found = entry[1] if entry and entry[0] is tokenizer else None
        if found is not None:
            return found
        index = VocabIndex(tokenizer)
        try:
            _indexes[tokenizer] = index
        except TypeError:
            _indexes_by_id[id(tokenizer)] = (tokenizer, index)
        return index


@dataclass
class HealPlan:
    """What healing did to a prompt: `ids` to prefill, and the text it took off the end.

    `lead` is text the completion must begin with after the removed text and keep (it is not
    typed yet), followed by content (`VocabIndex.mask`'s `content_after`). It puts a first line
    at a column (`stops.body_column`)."""

    ids: list[int]
    removed_text: str = ""
    removed_ids: tuple[int, ...] = ()
    lead: str = ""

    @property
    def active(self) -> bool:
        return bool(self.removed_text or self.lead)

    @property
    def pending(self) -> str:
        """All the text the first tokens must re-type: the removed text, then the lead."""
        return self.removed_text + self.lead

    def allowed_mask(self, tokenizer: Tokenizer, size: int | None = None,
                     pending: str | None = None) -> torch.Tensor | None:
        """(V,) bool of the tokens allowed next while `pending` (default: all of `self.pending`) is unmatched.

        Allowed: tokens whose text starts with `pending`, or is a shorter piece
        of it (`\n` + 7 spaces for a removed `\n` + 8 spaces; the remainder is
        constrained on the next step). The removed token itself is always
        allowed first. None when nothing is pending. `size` pads or cuts to
        the model's vocabulary size.
        """
        pending = self.pending if pending is None else pending
        if not pending:
            return None
        index = vocab_index(tokenizer)
        mask = index.mask(pending, size, content_after=bool(self.lead), piece=blank_piece(tokenizer, pending))
        if pending == self.pending:
            for i in self.removed_ids:
                if i < mask.shape[0]:
                    mask[i] = True
        return mask

    @staticmethod
    def consume(tokenizer: Tokenizer, pending: str, token: int) -> str:
        """What is still unmatched of `pending` after `token`."""
        strings = vocab_index(tokenizer).strings
        text = strings[token] if 0 <= token < len(strings) else ""
        if text and pending.startswith(text) and len(text) < len(pending):
            return pending[len(text):]
        return ""

    def strip(self, text: str) -> str:
        """The completion without the removed text at its front (it is already typed)."""
        if self.removed_text and text.startswith(self.removed_text):
            return text[len(self.removed_text):]
        return text


def blank_piece(tokenizer: Tokenizer, pending: str) -> str | None:
    """For blanks still to type, the first token the tokenizer itself cuts them into when code
    follows, where that is shorter than them; else None.

    Code is tokenized as a run of blanks and then a token that starts with the last one (Qwen:
    11 spaces, then ` odd`). Left to choose any shorter piece, greedy decoding takes the piece of
    the indentation it wanted (3 spaces, for a line at column 4), then single spaces: a split the
    model never saw, after which it wrote blanks to the end (HumanEval, a body at column 12)."""
    if not pending or pending.strip(" \t\n"):
        return None
    ids = tokenizer.encode(pending + "x")
    strings = vocab_index(tokenizer).strings
    first = strings[ids[0]] if ids and 0 <= ids[0] < len(strings) else ""
    return first if first and len(first) < len(pending) and pending.startswith(first) else None


def heal(tokenizer: Tokenizer, ids: list[int], protected: int) -> HealPlan:
    """Remove the last token of `ids` when another token extends its text; keep the first `protected`."""
    ids = list(ids)
    if len(ids) <= max(protected, 0):
        return HealPlan(ids)
    last = ids[-1]
    index = vocab_index(tokenizer)
    if last in index.excluded or not (0 <= last < len(index.strings)):
        return HealPlan(ids)
    text = index.strings[last]
    if not text:
        return HealPlan(ids)
    if not index.extended_by_longer(text):
        return HealPlan(ids)
    return HealPlan(ids[:-1], text, (last,))
