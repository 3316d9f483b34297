"""One lexer for code being typed: strings, comments and brackets, from text alone.

No parser is needed (tree-sitter may be missing and the text being typed
rarely parses): a `Lexicon` per language family names its comment and
string delimiters, and a scan skips strings and comments with regular
expressions while it keeps a stack of open brackets. Mode choice and
post-processing (`keystroke.server.syntax`) and the stop checker (`stops`)
all read code through this module.

`Scanner` is incremental: `feed` it text as it arrives (a token at a time)
and `state()` is what one scan of all the text so far would say. It holds
back at most `HOLD` characters at the end, where a longer delimiter may
still be arriving (two quotes may be the start of three), so a feed costs
the new text plus that tail. The scan is linear in the text whatever the nesting: each kind
of opener keeps the stack positions where it stands.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cached_property

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
# No token a lexicon's regex matches is longer (a Rust char literal '\u{10FFFF}' is the longest).
HOLD = 12


@dataclass(frozen=True)
class Lexicon:
    """How one language family writes comments and strings."""

    line_comments: tuple[str, ...] = ()
    block_comments: tuple[tuple[str, str], ...] = ()
    strings: tuple[str, ...] = ('"',)      # delimiters, longest first
    multiline: tuple[str, ...] = ()         # delimiters whose strings span lines
    skip: str = ""                          # extra regex of tokens to ignore (at most HOLD long)
    block_opener: str = "{"                 # '' when blocks are keywords (Lua, Ruby)
    jumps: tuple[str, ...] = ()             # statements after which the rest of their block is dead code


_TOKEN_RES: dict[Lexicon, re.Pattern[str]] = {}


def _token_re(lex: Lexicon) -> re.Pattern[str]:
    pattern = _TOKEN_RES.get(lex)
    if pattern is None:
        parts = []
        if lex.skip:
            parts.append(f"(?P<skip>{lex.skip})")
        if lex.block_comments:  # before line comments: Lua's '--[[' starts with '--'
            parts.append("(?P<bc>" + "|".join(re.escape(a) for a, _ in lex.block_comments) + ")")
        if lex.line_comments:
            parts.append("(?P<lc>" + "|".join(re.escape(c) for c in lex.line_comments) + ")")
        if lex.strings:
            parts.append("(?P<q>" + "|".join(re.escape(s) for s in lex.strings) + ")")
        # A run of brackets is one token, but a bracket that begins another token (Haskell's '{-')
        # stands alone, so that the other token is still tried where it starts.
        starts = {t[0] for t in lex.strings + lex.line_comments + tuple(a for a, _ in lex.block_comments)}
        runs = re.escape("".join(b for b in "()[]{}" if b not in starts))
        alone = re.escape("".join(b for b in "()[]{}" if b in starts))
        parts.append(f"(?P<br>[{runs}]+" + (f"|[{alone}])" if alone else ")"))
        pattern = _TOKEN_RES[lex] = re.compile("|".join(parts))
    return pattern


@dataclass(frozen=True)
class ScanState:
    """What a left-to-right scan knows at the end of a text.

    `brackets` holds the unclosed openers, innermost last. `string` is the
    delimiter of a string still open at the end; `comment` is the closing
    marker of an open block comment, or '\\n' for a line comment. Counters of
    damage: `extra_closers` (closers with no opener of their kind),
    `skipped_openers` (openers abandoned when a closer matched a deeper one),
    `broken_strings` (single-line strings cut by a newline). The counters
    accumulate over the scans chained through a start state. `outer_closers`
    (offsets of closers that closed brackets opened before the scanned text),
    `opened` (brackets the scanned text opened that are still open) and
    `most_opened` (the most of those open at once) only cover the last
    scanned text.
    """

    brackets: tuple[str, ...] = ()
    string: str | None = None
    comment: str | None = None
    last_code: str = ""
    extra_closers: int = 0
    skipped_openers: int = 0
    broken_strings: int = 0
    outer_closers: tuple[int, ...] = ()
    opened: int = 0
    most_opened: int = 0

    @property
    def in_string(self) -> bool:
        return self.string is not None

    @property
    def in_comment(self) -> bool:
        return self.comment is not None

    @cached_property
    def opener_positions(self) -> dict[str, tuple[int, ...]]:
        """For each opener, where it stands in `brackets` (computed once: chained scans share it)."""
        return {k: tuple(i for i, b in enumerate(self.brackets) if b == k) for k in OPENERS}


def _escaped(text: str, start: int, at: int) -> bool:
    """Is text[at] escaped, by an odd run of backslashes after `start`?"""
    k = at
    while k > start and text[k - 1] == "\\":
        k -= 1
    return (at - k) % 2 == 1


def _string_end(text: str, start: int, pos: int, delim: str, multiline: bool) -> tuple[int, bool] | None:
    """Where the string whose content begins at `start` ends, looking from `pos`.

    Returns (index after the string, closed properly?) or None when the text
    ends inside the string. A single-line string ends, broken, at a newline
    that no backslash escapes.
    """
    i = pos
    while True:
        j = text.find(delim, i)
        if not multiline:
            nl = text.find("\n", i)
            if nl != -1 and (j == -1 or nl < j):
                if not _escaped(text, start, nl):
                    return nl, False
                i = nl + 1
                continue
        if j == -1:
            return None
        if not _escaped(text, start, j):
            return j + len(delim), True
        i = j + 1


def _last_nonspace(chunk: str, default: str) -> str:
    stripped = chunk.rstrip()
    return stripped[-1] if stripped else default


class Scanner:
    """`scan`, fed piece by piece: `feed(text)`, then `state()` whenever needed.

    `context` is text that comes before (the cursor's line, for a
    completion): it is read, but its brackets do not count in `opened`.
    """

    def __init__(self, lex: Lexicon, start: ScanState | None = None, context: str = "") -> None:
        st = start or ScanState()
        self.lex, self._re = lex, _token_re(lex)
        self.text = ""
        self.pos = 0                 # text[:pos] is scanned for good
        self.stack = list(st.brackets)
        self.where = {k: list(v) for k, v in st.opener_positions.items()}
        self.string, self.comment = st.string, st.comment
        self.content_start = 0       # where the open string's text begins (escapes count from there)
        self.last_code, self.code_from = st.last_code, 0
        self.extra, self.skipped, self.broken = st.extra_closers, st.skipped_openers, st.broken_strings
        self.outer: list[int] = []
        self.own = self.most_own = 0
        self.own_from = 0
        if context:
            self.feed(context)
            self.own_from = len(self.text)

    def feed(self, text: str, final: bool = False) -> None:
        """Add `text`; `final` says nothing follows it (a delimiter at the very end is complete)."""
        self.text += text
        self._advance(final)

    def state(self) -> ScanState:
        """The state at the end of all the text fed so far."""
        done = self
        if self.pos < len(self.text):
            done = copy.copy(self)
            done.stack, done.outer = list(self.stack), list(self.outer)
            done.where = {k: list(v) for k, v in self.where.items()}
            done._advance(final=True)
        return ScanState(tuple(done.stack), done.string, done.comment, done.last_code, done.extra,
                         done.skipped, done.broken, tuple(done.outer), done.own, done.most_own)

    def _settle(self, upto: int) -> None:
        """`last_code` is settled lazily, for the code from `code_from` up to a comment or a commit."""
        self.last_code = _last_nonspace(self.text[self.code_from:upto], self.last_code)
        self.code_from = upto

    def _resume(self, final: bool) -> bool:
        """Go on inside an open string or comment; False while the text still ends inside it."""
        text, n = self.text, len(self.text)
        if self.string is not None:
            end = _string_end(text, self.content_start, self.pos, self.string, self.string in self.lex.multiline)
            if end is None:
                self.pos = n if final else max(self.pos, n - len(self.string) + 1)
                return False
            self.pos, closed = end
            self.broken += not closed
            self.string = None  # the string is code: `last_code` may be its closing quote
        elif self.comment is not None:
            end = text.find(self.comment, self.pos)
            if end == -1:
                self.pos = n if final else max(self.pos, n - len(self.comment) + 1)
                return False
            self.pos = self.code_from = end + (0 if self.comment == "\n" else len(self.comment))
            self.comment = None
        return True

    def _advance(self, final: bool) -> None:
        text, n, search = self.text, len(self.text), self._re.search
        while self._resume(final):
            while True:
                m = search(text, self.pos)
                if m is None or not final and m.start() + HOLD > n:
                    # No token can start before this point but one that is still arriving.
                    commit = n if final else max(self.pos, n - HOLD + 1)
                    self._settle(commit)
                    self.pos = commit
                    return
                kind, self.pos = m.lastgroup, m.end()
                if kind == "br":
                    self._brackets(m.group(), m.start())
                elif kind != "skip":
                    break
            self._settle(m.start())
            if kind == "q":
                self.string, self.content_start = m.group(), self.pos
            else:
                self.comment = "\n" if kind == "lc" else dict(self.lex.block_comments)[m.group()]

    def _brackets(self, run: str, at: int) -> None:
        """Push and pop the brackets of `run`, which starts at offset `at`."""
        stack, where, own = self.stack, self.where, self.own
        for i, tok in enumerate(run, at):
            if tok in OPENERS:
                where[tok].append(len(stack))
                stack.append(tok)
                if i >= self.own_from:
                    own += 1
                    self.most_own = max(self.most_own, own)
                continue
            opened_at = where[CLOSERS[tok]]
            if not opened_at:
                self.extra += 1
                self.outer.append(i)
                continue
            depth = opened_at[-1]
            removed = len(stack) - depth
            if removed == 1:
                stack.pop()
                opened_at.pop()
            else:
                self.skipped += removed - 1
                for b in stack[depth:]:
                    where[b].pop()
                del stack[depth:]
            if own < removed:
                self.outer.append(i)
            own = max(0, own - removed)
        self.own = own


def scan(text: str, lex: Lexicon, start: ScanState | None = None) -> ScanState:
    """Scan `text` whole, continuing from `start` (the state after earlier text)."""
    scanner = Scanner(lex, start)
    scanner.feed(text, final=True)
    return scanner.state()


def code_text(text: str, lex: Lexicon) -> str:
    """`text` with the inside of its strings and comments blanked out, line breaks kept.

    Offsets and lines stay where they were, so a regular expression over the result sees code
    only (no names from a docstring, a comment or a string's words). Delimiters stay.
    """
    out, pos, n = [], 0, len(text)
    pattern = _token_re(lex)
    blocks = dict(lex.block_comments)
    while pos < n:
        m = pattern.search(text, pos)
        if m is None:
            break
        kind = m.lastgroup
        if kind in ("br", "skip"):
            out.append(text[pos:m.end()])
            pos = m.end()
            continue
        out.append(text[pos:m.end()])
        start = m.end()
        if kind == "q":
            delim = m.group()
            found = _string_end(text, start, start, delim, delim in lex.multiline)
            end = found[0] if found is not None else n
            inner_end = end - len(delim) if found is not None and found[1] else end
        else:
            close = "\n" if kind == "lc" else blocks[m.group()]
            end = text.find(close, start)
            end = n if end == -1 else end + (0 if close == "\n" else len(close))
            inner_end = end if close == "\n" or end == n else end - len(close)
        out.append(_blank(text[start:inner_end]) + text[inner_end:end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _blank(chunk: str) -> str:
    return "".join(c if c == "\n" else " " for c in chunk)


def indent_width(line: str) -> int:
    """Columns of leading whitespace, a tab reaching the next multiple of 8.

    This is Python's tokenizer rule, the one that decides where a Python
    block ends; in files indented with tabs only (or spaces only) every tab
    size orders lines the same way, so it is right for other languages too.
    """
    ws = line[: len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(8))
