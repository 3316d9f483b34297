"""The cursor's syntactic situation, from text alone.

No parser is needed (tree-sitter may be missing and the text being typed
rarely parses): a small lexer per language family skips strings and comments
with regular expressions and keeps a stack of open brackets. That is enough
to tell whether the cursor sits in a string, a comment or an open bracket,
and whether it follows a block opener (a line ending in ':' in Python or
'{' in brace languages), which is what decides single-line or block mode.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["line", "block"]

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}


@dataclass(frozen=True)
class Lexicon:
    """How one language family writes comments and strings."""

    line_comments: tuple[str, ...] = ()
    block_comments: tuple[tuple[str, str], ...] = ()
    strings: tuple[str, ...] = ('"',)      # delimiters, longest first
    multiline: tuple[str, ...] = ()         # delimiters whose strings span lines
    skip: str = ""                          # extra regex of tokens to ignore
    block_opener: str = "{"                 # '' when blocks are keywords (Lua, Ruby)


_C_LIKE = Lexicon(("//",), (("/*", "*/"),), ('"', "'"))
_HASH = Lexicon(("#",), (), ('"', "'"), block_opener="")

LEXICONS: dict[str, Lexicon] = {
    "python": Lexicon(("#",), (), ('"""', "'''", '"', "'"), ('"""', "'''"), block_opener=":"),
    "javascript": Lexicon(("//",), (("/*", "*/"),), ('"', "'", "`"), ("`",)),
    "rust": Lexicon(("//",), (("/*", "*/"),), ('"',), ('"',), skip=r"'(?:\\.[^']{0,8}|[^'\\\n])'"),
    "shellscript": Lexicon(("#",), (), ('"', "'"), ('"', "'")),
    "lua": Lexicon(("--",), (("--[[", "]]"),), ('"', "'"), block_opener=""),
    "sql": Lexicon(("--",), (("/*", "*/"),), ("'", '"'), block_opener=""),
    "html": Lexicon((), (("<!--", "-->"),), ('"',), block_opener=""),
    "css": Lexicon((), (("/*", "*/"),), ('"', "'")),
}
for _lang in ("typescript", "javascriptreact", "typescriptreact", "vue", "svelte"):
    LEXICONS[_lang] = LEXICONS["javascript"]
LEXICONS["go"] = Lexicon(("//",), (("/*", "*/"),), ('"', "'", "`"), ("`",))
for _lang in ("c", "cpp", "objective-c", "java", "csharp", "kotlin", "swift", "php",
              "scala", "dart", "groovy", "zig", "json", "jsonc", "scss", "less"):
    LEXICONS[_lang] = _C_LIKE
LEXICONS["scss"] = LEXICONS["less"] = Lexicon(("//",), (("/*", "*/"),), ('"', "'"))
for _lang in ("ruby", "perl", "r", "yaml", "toml", "makefile", "dockerfile", "powershell",
              "elixir", "julia", "nim", "coffeescript"):
    LEXICONS[_lang] = _HASH
LEXICONS["haskell"] = Lexicon(("--",), (("{-", "-}"),), ('"',), block_opener="")
LEXICONS["shellscript"] = Lexicon(("#",), (), ('"', "'"), ('"', "'"))

# Unknown languages: double-quoted strings and brackets only, since a lone
# apostrophe in prose or a '#' that is not a comment would derail the count.
GENERIC = Lexicon()


def lexicon(language_id: str) -> Lexicon:
    return LEXICONS.get((language_id or "").lower(), GENERIC)


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
        parts.append(r"(?P<br>[()\[\]{}])")
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
    `broken_strings` (single-line strings cut by a newline). The counters and
    `outer_closers` accumulate over the scans chained through `start`, except
    that `outer_closers` only covers the last scanned text.
    """

    brackets: tuple[str, ...] = ()
    string: str | None = None
    comment: str | None = None
    last_code: str = ""
    extra_closers: int = 0
    skipped_openers: int = 0
    broken_strings: int = 0
    outer_closers: tuple[int, ...] = ()  # offsets of closers that closed text before this scan

    @property
    def in_string(self) -> bool:
        return self.string is not None

    @property
    def in_comment(self) -> bool:
        return self.comment is not None


def _string_end(text: str, pos: int, delim: str, multiline: bool) -> tuple[int, bool] | None:
    """Where the string that starts at `pos` (after its opening delimiter) ends.

    Returns (index after the string, closed properly?) or None when the text
    ends inside the string. A single-line string ends, broken, at a newline.
    """
    i = pos
    while True:
        j = text.find(delim, i)
        if not multiline:
            nl = text.find("\n", i)
            if nl != -1 and (j == -1 or nl < j):
                return nl, False
        if j == -1:
            return None
        k = j
        while k > pos and text[k - 1] == "\\":
            k -= 1
        if (j - k) % 2 == 0:
            return j + len(delim), True
        i = j + 1


def _last_nonspace(chunk: str, default: str) -> str:
    stripped = chunk.rstrip()
    return stripped[-1] if stripped else default


def scan(text: str, language_id: str = "python", start: ScanState | None = None) -> ScanState:
    """Scan `text`, continuing from `start` (the state after earlier text)."""
    lex = lexicon(language_id)
    token_re = _token_re(lex)
    st = start or ScanState()
    stack = list(st.brackets)
    extra, skipped, broken = st.extra_closers, st.skipped_openers, st.broken_strings
    own = 0  # openers on top of `stack` that this text opened
    outer: list[int] = []
    pos = 0
    # `last_code` is settled lazily: code runs from `code_from` up to the next
    # comment; only then (or at the end) is its last non-space char looked up.
    last = [st.last_code]
    code_from = 0

    def settle(upto: int) -> None:
        last[0] = _last_nonspace(text[code_from:upto], last[0])

    def state(string: str | None = None, comment: str | None = None) -> ScanState:
        return ScanState(tuple(stack), string, comment, last[0], extra, skipped, broken, tuple(outer))

    if st.string is not None:
        end = _string_end(text, 0, st.string, st.string in lex.multiline)
        if end is None:
            return state(string=st.string)
        pos, closed = end
        broken += not closed
        last[0] = st.string[-1]
        code_from = pos
    elif st.comment is not None:
        end = text.find(st.comment)
        if end == -1:
            return state(comment=st.comment)
        pos = code_from = end + (0 if st.comment == "\n" else len(st.comment))

    n = len(text)
    while pos < n:
        m = token_re.search(text, pos)
        if m is None:
            break
        kind, tok = m.lastgroup, m.group()
        pos = m.end()
        if kind == "lc" or kind == "bc":
            settle(m.start())
            closer = "\n" if kind == "lc" else dict(lex.block_comments)[tok]
            end = text.find(closer, pos)
            if end == -1:
                return state(comment=closer)
            pos = code_from = end + (0 if kind == "lc" else len(closer))
        elif kind == "q":
            end = _string_end(text, pos, tok, tok in lex.multiline)
            if end is None:
                settle(m.start())
                return state(string=tok)
            pos, closed = end
            broken += not closed
        elif kind == "br":
            if tok in OPENERS:
                stack.append(tok)
                own += 1
                continue
            if CLOSERS[tok] in stack:
                depth = len(stack) - 1 - stack[::-1].index(CLOSERS[tok])
                skipped += len(stack) - 1 - depth
                removed = len(stack) - depth
                del stack[depth:]
            else:
                extra += 1
                removed = 0
            if own < removed or removed == 0:
                outer.append(m.start())
            own = max(0, own - removed)
    settle(n)
    return state()


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


def indent_width(line: str) -> int:
    """Columns of leading whitespace (tabs to the next multiple of 8, as Python does)."""
    ws = line[: len(line) - len(line.lstrip(" \t"))]
    return len(ws.expandtabs(8))


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
            empty_body = True
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
    """'block' right after a block opener or at the start of an empty body, else 'line'.

    Block mode is for a cursor on a blank line that follows a block opener
    (or a docstring that is the whole body so far), and for a cursor at the
    end of an opener line. Anywhere else (mid-line, inside a string, comment
    or open bracket, a blank line among statements) one line is suggested.
    """
    ctx = analyze(prefix, suffix, language_id)
    if ctx.in_string or ctx.in_comment or ctx.code_after_cursor:
        return "line"
    if ctx.blank_line and (ctx.after_block_opener or ctx.in_empty_body):
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
