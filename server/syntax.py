"""The cursor's syntactic situation, from text alone, and the mode it calls for.

The engine's lexer (`keystroke.engine.lexer`, one `Lexicon` per language in
`keystroke.engine.languages`) tells whether the cursor sits in a string, a
comment or an open bracket; this module adds whether it follows a block
opener (a line ending in ':' in Python or '{' in brace languages), which is
what decides single-line or block mode.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from keystroke.engine import lexer
from keystroke.engine.languages import lexicon
from keystroke.engine.lexer import Lexicon, ScanState, indent_width

__all__ = ["CursorContext", "Mode", "SCAN_WINDOW", "ScanState", "analyze", "choose_mode", "indent_unit",
           "indent_width", "leading_ws", "lexicon", "only_docstring_since_opener", "opens_block", "scan",
           "scan_tail"]

Mode = Literal["line", "block"]


def scan(text: str, language_id: str = "python", start: ScanState | None = None) -> ScanState:
    """Scan `text` with the language's lexicon, continuing from `start` (the state after earlier text)."""
    return lexer.scan(text, lexicon(language_id), start)


# Scans of long prefixes start this far back, at a line that begins at column
# 0 with a name (a def, a class, a statement): such a line is almost never
# inside a string or a bracket, and skipping the rest keeps keystrokes cheap.
SCAN_WINDOW = 16_000
_TOP_LEVEL_START = re.compile(r"[A-Za-z_@]")


def scan_tail(text: str, language_id: str = "python") -> ScanState:
    """`scan(text)`, reading only the end of a long text (see SCAN_WINDOW)."""
    if len(text) <= 2 * SCAN_WINDOW:
        return scan(text, language_id)
    pos = len(text) - SCAN_WINDOW
    while pos > 0:
        pos = text.rfind("\n", 0, pos)
        if pos == -1:
            break
        if _TOP_LEVEL_START.match(text, pos + 1):
            return scan(text[pos + 1:], language_id)
    return scan(text, language_id)


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


@dataclass(frozen=True)
class CursorContext:
    """Where the cursor is, in the terms that choose and shape a suggestion."""

    language_id: str
    line_prefix: str            # the cursor's line, before the cursor
    line_suffix: str            # the cursor's line, after the cursor
    in_string: bool
    in_comment: bool
    brackets: tuple[str, ...]   # unclosed openers before the cursor, innermost last
    blank_line: bool            # the cursor's line is empty or whitespace-only
    after_block_opener: bool    # the previous code line opens a block
    on_block_opener: bool       # the text before the cursor on this line opens a block
    in_empty_body: bool         # blank line in a block with no statement yet
    in_indented_body: bool      # blank line indented deeper than the previous code line's block
    code_after_cursor: bool     # text (code or comment) follows on the cursor's line

    @property
    def in_bracket(self) -> bool:
        return bool(self.brackets)


def _opens_block(st: ScanState, lex: Lexicon) -> bool:
    """Does text scanned into `st` end with a block opener?"""
    if not lex.block_opener or st.in_string or st.in_comment and st.comment != "\n":
        return False
    if lex.block_opener == ":":
        return st.last_code == ":" and not st.brackets
    return st.last_code == "{" and bool(st.brackets) and st.brackets[-1] == "{"


def opens_block(text: str, language_id: str = "python") -> bool:
    """Does `text` end (ignoring whitespace and comments) with a block opener?"""
    return _opens_block(scan(text, language_id), lexicon(language_id))


def only_docstring_since_opener(before: str, language_id: str = "python") -> bool:
    """Python: does `before` end with an opener line followed only by a docstring?"""
    if lexicon(language_id).block_opener != ":":
        return False
    stripped = before.rstrip()
    for quote in ('"""', "'''"):
        if stripped.endswith(quote) and len(stripped) >= 6:
            start = stripped.rfind(quote, 0, len(stripped) - 3)
            if start == -1:
                return False
            line_start = stripped.rfind("\n", 0, start) + 1
            if stripped[line_start:start].strip(" \t").lower() not in ("", "r", "u"):
                return False
            head = scan_tail(stripped[:line_start], language_id)
            return _opens_block(head, lexicon(language_id))
    return False


def _line_before(text: str, pos: int) -> str:
    """The last non-blank line of text[:pos], or ''."""
    while pos > 0:
        start = text.rfind("\n", 0, pos - 1) + 1
        line = text[start:pos].rstrip("\n")
        if line.strip():
            return line
        pos = start
    return ""


def _line_after(text: str, pos: int) -> str:
    """The first non-blank line of text[pos:], or ''."""
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end == -1 else end
        if text[pos:end].strip():
            return text[pos:end]
        pos = end + 1
    return ""


def analyze(prefix: str, suffix: str, language_id: str = "python") -> CursorContext:
    """Describe the cursor between `prefix` and `suffix`."""
    lex = lexicon(language_id)
    line_start = prefix.rfind("\n") + 1
    before_line, line_prefix = prefix[:line_start], prefix[line_start:]
    nl = suffix.find("\n")
    line_suffix = suffix if nl == -1 else suffix[:nl]
    head = scan_tail(before_line, language_id)
    here = scan(line_prefix, language_id, head)
    blank = not line_prefix.strip() and not line_suffix.strip()
    after_opener = not head.in_string and not head.in_comment and _opens_block(head, lex)
    on_opener = bool(line_prefix.strip()) and _opens_block(here, lex) and not here.in_comment
    prev_code_line = _line_before(before_line, len(before_line))
    next_code_line = _line_after(suffix, nl + 1) if nl != -1 else ""
    empty_body = False
    if blank and not head.in_string:
        if after_opener:
            if lex.block_opener == ":":
                empty_body = not next_code_line or indent_width(next_code_line) <= indent_width(prev_code_line)
            else:
                empty_body = next_code_line.strip().startswith("}") or not next_code_line
        elif only_docstring_since_opener(before_line, language_id):
            # the body is empty unless code below goes on at the docstring's column
            empty_body = not next_code_line or indent_width(next_code_line) < indent_width(prev_code_line)
    indented = blank and bool(prev_code_line) and (
        after_opener or indent_width(line_prefix) > 0 and indent_width(prev_code_line) > 0
    )
    return CursorContext(
        language_id=language_id,
        line_prefix=line_prefix,
        line_suffix=line_suffix,
        in_string=here.in_string,
        in_comment=here.in_comment,
        brackets=here.brackets,
        blank_line=blank,
        after_block_opener=after_opener,
        on_block_opener=on_opener,
        in_empty_body=empty_body,
        in_indented_body=indented,
        code_after_cursor=bool(line_suffix.strip()),
    )


def choose_mode(prefix: str, suffix: str, language_id: str = "python") -> Mode:
    """'block' at the start of an empty body, else 'line'.

    Block mode is for a cursor on a blank line that follows a block opener
    (or a docstring that is the whole body so far) with no body below it,
    and for a cursor at the end of an opener line. Anywhere else (mid-line,
    inside a string, comment or open bracket, a blank line among statements,
    a new first line above a body) one line is suggested: 125 of 500 HumanEval
    single-line tasks sit above a body, and line mode there won 10 of them and
    lost none (block mode got the line right, then wrote more of the body).
    """
    ctx = analyze(prefix, suffix, language_id)
    if ctx.in_string or ctx.in_comment or ctx.code_after_cursor:
        return "line"
    if ctx.blank_line and ctx.in_empty_body:
        return "block"
    if ctx.on_block_opener:
        return "block"
    return "line"


def indent_unit(text: str) -> str:
    """The document's indentation step: a tab, or the most common increase in spaces (default 4)."""
    counts: dict[int, int] = {}
    previous = 0
    for line in text.split("\n", 5000)[:5000]:
        if not line.strip():
            continue
        if line.startswith("\t"):
            return "\t"
        width = indent_width(line)
        if width > previous:
            counts[width - previous] = counts.get(width - previous, 0) + 1
        previous = width
    step = max(counts, key=lambda k: (counts[k], -k)) if counts else 4
    return " " * (step if 2 <= step <= 8 else 4)
