"""The decode loop: from the prompt's last logits to candidate texts.

`generate` samples a token per row, decodes text incrementally, asks each
row's `StopChecker`, and feeds the sampled tokens back through the model
until every row has stopped. One loop serves one candidate (in the caller's
cache) and n candidates (one batch, sharing the prefill).

Cancellation and the deadline are checked at the top of every step, before
a token is sampled and the model runs on it, so a cancelled request costs
at most the model step already under way.

What ends up in the cache, for n == 1: exactly the generated tokens the
model ran on, `Generated.fed` of them (`cache.length` grows by that much).
The last sampled token is never run (its logits are not needed), so `fed`
is `len(ids) - 1` when a stop rule or max tokens ended the row, and
`len(ids)` when it ended on EOS (EOS is neither kept in `ids` nor run), on
cancellation or on the deadline. The cache may therefore hold tokens beyond the returned text (a stop string,
line end or block end cuts text, not tokens): callers match the next prompt
against these ids by their longest common prefix anyway. For n > 1 the
loop works on `cache.expanded(n)` and leaves the caller's cache untouched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .api import SamplingParams, StopPolicy, StopReason
from .healing import HealPlan, vocab_index
from .languages import code_lexicon
from .lexer import scan
from .lookup import Drafter
from .cache.kvcache import KVCache
from .sampling import make_generator, sample
from .stops import StopChecker, body_column

if TYPE_CHECKING:
    from .model import Transformer
    from .tokenizer import Tokenizer

REPETITION_WINDOW = 64  # prompt ids the repetition penalty looks back over


@dataclass
class Generated:
    ids: list[int]              # generated token ids (EOS excluded, healed first token included)
    text: str                   # the completion text at the cursor, cut by the stop rule
    stop_reason: StopReason
    fed: int = 0                # generated tokens run through the model (in the cache for n == 1)
    passes: int = 0             # model passes of the loop that wrote it (shared by the n candidates)

    @property
    def tokens(self) -> int:
        return len(self.ids)


class TextStream:
    """Incremental detokenization that is right across tokens splitting a UTF-8 character.

    Text is decoded from a window that starts one token back, and the part
    the previous window already produced is dropped; while the window ends
    in an incomplete character (U+FFFD) nothing is released. A context
    token from the prompt makes the first token decode as it would in the
    middle of text (SentencePiece decoders drop a leading space at the
    start of a sequence).
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context[-1:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def push(self, token: int) -> str:
        """Add a token; return the whole text released so far."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset:self.read_offset])
        after = decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
        return self.text


@dataclass
class _Row:
    stream: TextStream
    checker: StopChecker
    ids: list[int]
    reason: StopReason | None = None
    cut: int | None = None
    fed: int = 0
    pending: str = ""  # healed text (and lead) not yet matched by generated tokens
    content_next: bool = False  # a token ended the lead exactly: the next one must start with content

    def text(self, heal: HealPlan | None) -> str:
        if self.pending:  # stopped before re-typing what healing removed: nothing new
            return ""
        text = heal.strip(self.stream.text) if heal is not None else self.stream.text
        return text if self.cut is None else text[:self.cut]


def generate(model: Transformer, cache: KVCache, last_logits: torch.Tensor, tokenizer: Tokenizer, *,
             sampling: SamplingParams, stop: StopPolicy, n: int = 1,
             is_cancelled: Callable[[], bool] = lambda: False, heal: HealPlan | None = None,
             line_before_cursor: str = "", deadline: float | None = None,
             prompt_ids: Sequence[int] = (), suffix: str = "",
             on_text: Callable[[str], None] | None = None, avoid_first: int | None = None,
             draft: int = 0, above: str = "") -> list[Generated]:
    """Decode up to `stop.max_tokens` tokens per candidate after a prefilled prompt.

    `cache` (batch 1) holds the prompt and `last_logits` (1, V) are its last
    position's logits. `heal` (from `healing.heal`) constrains the first
    token and strips the removed text from the result. `deadline` is a
    `time.monotonic()` instant; without it `stop.deadline_ms` counts from
    this call. `prompt_ids` (optional; its last 64 ids) join the generated
    ids for the repetition penalty, and its last id gives the text stream
    its context. `suffix` (the text after the cursor) lets the stop rules see
    the model re-type it, and `above` (the text before the cursor's line) a
    block header that still has no body. `on_text` (n == 1) gets the text so far after each
    token. `avoid_first` is a token no row may start its content with (see
    Engine: the second try after a first one that only re-typed the suffix).
    `draft` (greedy, n == 1) is how many tokens a step may guess from the text
    itself (lookup.py): the model runs on the sampled token and the guess in
    one pass, and each guessed token the model would have chosen anyway is
    taken without a pass of its own. The result, and what stays in the cache,
    is the same as without drafting, bit for bit (model.Transformer.forward).
    Returns the candidates with distinct texts, in order.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if deadline is None and stop.deadline_ms is not None:
        deadline = time.monotonic() + stop.deadline_ms / 1000.0
    if heal is not None and not heal.active:
        heal = None
    if lead := body_lead(line_before_cursor, above, suffix, stop.language_id):
        heal = replace(heal, lead=lead) if heal is not None else HealPlan(list(prompt_ids), lead=lead)
    context = list(heal.ids if heal is not None else prompt_ids)
    rows = [_Row(TextStream(tokenizer, context), StopChecker(stop, line_before_cursor, suffix, above), [])
            for _ in range(n)]
    work = cache if n == 1 else cache.expanded(n)
    logits = last_logits.reshape(1, -1).expand(n, -1) if last_logits.shape[0] != n else last_logits
    generator = make_generator(sampling.seed, logits.device)
    for row in rows:
        row.pending = heal.pending if heal is not None else ""
    allowed = heal.allowed_mask(tokenizer, logits.shape[-1]) if heal is not None else None
    tail = list(prompt_ids)[-REPETITION_WINDOW:]
    eos = tokenizer.eos_ids
    # In line mode a completion that starts with a line break shows nothing: where the code before the
    # cursor is left open, or the cursor's line is blank, the model is asked for its best on this line.
    stay_on_line = stop.mode == "line" and (not line_before_cursor.strip()
                                            or continues_on_line(line_before_cursor, stop.language_id))
    avoided = None
    if avoid_first is not None and 0 <= avoid_first < logits.shape[-1]:
        avoided = torch.zeros(logits.shape[-1], dtype=torch.bool)
        avoided[avoid_first] = True

    drafter = (Drafter(prompt_ids or context, draft)
               if draft > 0 and n == 1 and sampling.temperature <= 0 else None)
    base = work.length if drafter is not None else 0   # where the generated tokens' K/V start
    guessed: list[int] = []        # drafted tokens the model has run on, not yet sampled
    ahead: list[torch.Tensor] = []  # the logits after each of them
    passes = 0

    def finish(reason: StopReason) -> None:
        for row in rows:
            if row.reason is None:
                row.reason = reason

    if stop.max_tokens <= 0:
        finish("max_tokens")
    while any(row.reason is None for row in rows):
        if is_cancelled():
            finish("cancelled")
            break
        if deadline is not None and time.monotonic() >= deadline:
            finish("deadline")
            break
        prev = [tail + row.ids for row in rows] if sampling.repetition_penalty != 1.0 else None
        if stay_on_line:
            allowed = _before_content(rows, allowed, vocab_index(tokenizer).line_breaks(logits.shape[-1]))
        if avoided is not None:
            allowed = _before_content(rows, allowed, avoided)
        tokens = sample(logits, sampling, generator, prev, allowed)
        for row, token in zip(rows, tokens.tolist()):
            if row.reason is not None:
                continue
            if token in eos:
                row.reason = "eos"
                hit = row.checker.finish() if not row.pending else None   # the last line's suffix rules
                if hit is not None:
                    row.reason, row.cut = hit.reason, hit.cut
                continue
            row.ids.append(token)
            text = row.stream.push(token)
            row.content_next = False
            if row.pending:
                before, row.pending = row.pending, HealPlan.consume(tokenizer, row.pending, token)
                row.content_next = bool(heal.lead) and vocab_index(tokenizer).strings[token] == before
            if row.pending:  # still re-typing the healed text: nothing to judge yet
                if len(row.ids) >= stop.max_tokens:
                    row.reason = "max_tokens"
                continue
            if heal is not None:
                text = heal.strip(text)
            if on_text is not None and n == 1:
                on_text(text)
            hit = row.checker.check(text)
            if hit is not None:
                row.reason, row.cut = hit.reason, hit.cut
            elif len(row.ids) >= stop.max_tokens:
                row.reason = "max_tokens"
        if all(row.reason is not None for row in rows):
            break
        if drafter is None:
            logits = model(tokens.view(n, 1), work, decode=True)
            passes += 1
        else:
            token = int(tokens[0])
            drafter.push(token)
            if guessed and guessed[0] == token:   # the model already ran on this token
                guessed.pop(0)
                logits = ahead.pop(0)
            else:
                work.truncate(base + rows[0].fed)   # drop the K/V of guesses that were wrong
                guessed = drafter.draft()
                # A pass over guesses is longer than a one-token step: cancellation may stop it
                # between layers, so that it never delays another request by more than a step.
                out = model(torch.tensor([[token] + guessed]), work, decode=True, last_only=False,
                            stop=is_cancelled if guessed else None)
                passes += 1
                if out is None:
                    finish("cancelled")
                    break
                logits, ahead = out[:, 0], [out[:, i] for i in range(1, out.shape[1])]
        allowed = _healing_mask(rows, heal, tokenizer, logits.shape[-1])
        for row in rows:
            if row.reason is None:
                row.fed += 1
    if drafter is not None:
        work.truncate(base + rows[0].fed)
    out: list[Generated] = []
    seen: set[str] = set()
    for row in rows:
        text = row.text(heal)
        if lead and not any(c.isalnum() for c in text.split("\n", 1)[0]):
            text = ""   # at the column it was put at, the model had nothing: `(  (  (`, a lone `.`
        if text in seen:
            continue
        seen.add(text)
        out.append(Generated(row.ids, text, row.reason or "max_tokens", row.fed, passes))
    return out


def body_lead(line_before_cursor: str, above: str, suffix: str = "", language_id: str = "") -> str:
    """The blanks a completion starts with at an empty cursor line right under a block header with
    no body yet (`stops.body_column`, Python), else "".

    There a FIM model often writes its first line at or left of the header (`def main():` or
    `if __name__ == "__main__":` at column 0 after a docstring, the next `elif` after a bare
    `elif x:`), which leaves the block empty: the stop rules cut that to nothing (`StopChecker`).
    An editor's auto-indent would have put the cursor at the body's column; so does this. On 500
    HumanEval single-line tasks (246 of them at such a line) empty suggestions went from 92 to 47
    and 9 tasks were won, none lost (docs/eval.md). A first line put there that holds no letter or
    digit is dropped: the model had nothing to write at that column. Blanks the user typed are
    theirs: then nothing is added."""
    if line_before_cursor:
        return ""
    column = body_column(above, code_lexicon(language_id), suffix)
    return " " * column if column else ""


_OPEN_ENDS = frozenset("([{,.=+-*/%&|^<>")


def continues_on_line(line_before_cursor: str, language_id: str = "") -> bool:
    """Whether the code before the cursor is left open (a bracket, a comma, an operator, a dot).

    There a line-mode completion that starts with a line break would show
    nothing, although the user is visibly in the middle of something: the
    model is then asked for its best continuation on the same line
    (Black-formatted code teaches a model to break after `name(`). The line
    is read with the stop checker's lexer: a comment ends with its line
    anyway, and a one-line string left open must go on on this line.
    """
    lex = code_lexicon(language_id)
    st = scan(line_before_cursor, lex)
    if st.in_comment:
        return False
    if st.in_string:
        return st.string not in lex.multiline
    return st.last_code in _OPEN_ENDS


def _before_content(rows: list[_Row], allowed: torch.Tensor | None, banned: torch.Tensor) -> torch.Tensor | None:
    """`allowed`, without the `banned` tokens for the rows that have written nothing but blanks yet.

    A row still re-typing healed text is included: the token that finishes the healed blanks may
    be the content token to avoid (at an indented blank line, a docstring's quotes after three
    spaces), and sparing it let a retry write what it was asked not to. A ban that would leave a
    row no token at all is not applied."""
    waiting = [row.reason is None and not row.checker.seen_content for row in rows]
    if not any(waiting):
        return allowed
    size = banned.shape[0]
    base = allowed if allowed is not None else torch.ones(size, dtype=torch.bool)
    if base.dim() == 1:
        base = base.expand(len(rows), size)
    out = []
    for b, w in zip(base, waiting):
        kept = b & ~banned if w else b
        out.append(kept if bool(kept.any()) else b)
    return torch.stack(out)


def _healing_mask(rows: list[_Row], heal: HealPlan | None, tokenizer: Tokenizer,
                  size: int) -> torch.Tensor | None:
    """(B, V) constraint for rows still re-typing healed text or its lead, or None when no row is."""
    if heal is None or not any(row.pending or row.content_next for row in rows):
        return None
    free = torch.ones(size, dtype=torch.bool)
    masks = [heal.allowed_mask(tokenizer, size, row.pending) if row.pending
             else vocab_index(tokenizer).content_starts(size) if row.content_next else free for row in rows]
    return torch.stack(masks)
