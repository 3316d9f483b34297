"""What a blank line between Python code is missing, as far as the code around it tells.

At a blank line inside a block, when the rest of the block reads a name that the file never
mentions above the cursor and never binds below it, the missing line is the one that defines it:
`depth = 0` above a loop that counts `depth`, `s = str(x)` above a loop over `s`. On 500 HumanEval
single-line tasks, 121 blank lines sit at such a place and all 121 answers define the first such
name. Where the next code line is deeper than the line's column and no name is missing, the line
is a block's header. A model that sees only text often writes something else there (the next line
of the code below, a comment, a `return`, nothing): the engine then asks again with the start of
what is missing typed (Engine._complete, docs/eval.md).

Read with the project's lexer (strings and comments blanked, `lexer.code_text`) and regular
expressions: the code around a blank line being written rarely parses.
"""
from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass

from .languages import PYTHON
from .lexer import code_text, indent_width, scan
from .stops import body_column, text_above

MAX_NAMES = 2      # names tried, in the order the code below first reads them
READ_CHARS = 12_000   # of the text above the cursor, read code by code; the rest word by word
SUFFIX_CHARS = 12_000  # of the text below, read for the block's names and what it binds

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_KNOWN = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {"self", "cls"}
# A name read: not an attribute (after a dot), not a string prefix (f"..."), not a keyword argument.
_READ = re.compile(rf"(?<![.\w])({_NAME})(?![\w'\"])(?!\s*=(?!=))")
_WORD = re.compile(rf"(?<![\w.])({_NAME})")
_TARGET = re.compile(rf"(?<![\w.\[])({_NAME})(?![\w]|\s*[\[.(])")  # `x[0] = 1`, `x.y = 1` bind no x
_ASSIGNED = re.compile(rf"(?m)^[ \t]*((?:[\w \t,*()\[\]])+?)[ \t]*(?::[^=\n]*)?=(?!=)")
_ASSIGN_OP = re.compile(r"(?<![=!<>+\-*/%&|^:@])=(?!=)")
_SPACED = re.compile(r"(?m)^[ \t]*[\w.\[\]]+ =[^=]")
_TIGHT = re.compile(r"(?m)^[ \t]*[\w.\[\]]+=[^=]")
_BINDERS = (
    re.compile(rf"\bfor\s+(.+?)\s+in\b"),
    re.compile(rf"\b(?:def|class|as|global|nonlocal)\s+({_NAME}(?:\s*,\s*{_NAME})*)"),
    re.compile(r"\bimport[ \t]+([\w \t,.()]+)"),
    re.compile(rf"({_NAME})\s*:="),
    re.compile(r"\blambda\b([^:]*):"),
    re.compile(r"\bdef\s+\w+\s*\(([^)]*)\)"),
)


def bound(code: str) -> set[str]:
    """The names `code` (strings and comments blanked) assigns, loops over, defines, imports or takes
    as parameters. Generous on purpose: a name counted bound is never asked for."""
    out: set[str] = set()
    for m in _ASSIGNED.finditer(code):
        out.update(_TARGET.findall(m.group(1)))
    for pattern in _BINDERS:
        for m in pattern.finditer(code):
            out.update(_WORD.findall(m.group(1)))
    return out - _KNOWN


def defines(line: str, name: str) -> bool:
    """Whether the line of Python code `line` binds `name` (an assignment, a loop, a def, ...) without
    reading it first: `ans = ans + odds` does not define an `ans` that nothing defined."""
    code = code_text(line, PYTHON)
    if name not in bound(code):
        return False
    eq = _ASSIGN_OP.search(code)
    return eq is None or name not in _READ.findall(code[eq.end():])


@dataclass(frozen=True)
class MissingLine:
    """What a blank line between code is missing, as far as the code around it tells: the definition
    of one of `names` (read below, in reading order), or, with no names and `opens_block`, a block's
    header. `lead` is the blanks that put typed text at the line's column, `assign` `" ="` or `"="`
    as the code above spaces its assignments."""

    names: tuple[str, ...] = ()
    lead: str = ""
    assign: str = " ="
    opens_block: bool = False   # the next code line is deeper: the missing line is a block's header

    def typings(self) -> list[str]:
        """What to type on the line, in order: each name, then each name and its `=` (a name alone
        may be continued into another one, `i` into `if`); above a deeper block, `for` and each
        name (the header that binds a name for the lines below is a loop's, nearly always), or
        with no name `if` (the commonest header); with neither, the line's blanks alone, as an
        editor that indents a new line would have typed them."""
        if self.opens_block:
            return [self.lead + "for " + name for name in self.names] or [self.lead + "if "]
        if not self.names:
            return [self.lead] if self.lead else []
        return [self.lead + name + tail for name in self.names for tail in ("", self.assign)]

    def fits(self, line: str) -> bool:
        """Whether the line of code `line` is what is missing: it defines a name, or opens a block;
        with neither to look for, any code at all (an empty answer is never the missing line)."""
        if self.names:
            return any(defines(line, name) for name in self.names)
        if not self.opens_block:
            return bool(line.strip())
        st = scan(line, PYTHON)
        goes_on = bool(st.brackets) or st.in_string or st.last_code == "\\"   # the code below may be its rest
        return st.last_code == ":" or goes_on


def missing_line(prefix: str, suffix: str, language_id: str) -> MissingLine:
    """At a blank Python line, the names the code below reads that the file does not define (the
    first MAX_NAMES, in reading order), with the blanks to add before one to put it at the line's
    column; no names elsewhere.

    The column is the body's under a block header with no body yet (`stops.body_column`), else the
    next code line's, or the last code line's above where the next one is deeper: then the missing
    line opens a block (`for x in ...:`, `opens_block`). The names read are those of the rest of
    the block (the lines down to the first one left of the column); a name counts as defined when
    the code above mentions it at all, or the code below binds it anywhere."""
    if language_id.lower() != "python":
        return MissingLine()
    line = prefix.rsplit("\n", 1)[-1]
    rest, _, below = suffix[:SUFFIX_CHARS].partition("\n")
    far_below = suffix[SUFFIX_CHARS:]
    if line.strip() or rest.strip() or "\t" in line:
        return MissingLine()
    above = prefix[: len(prefix) - len(line)]
    below_code = code_text(below, PYTHON)
    lines = below_code.split("\n")
    nxt = next((ln for ln in lines if ln.strip()), None)
    if nxt is None or "\t" in nxt[: len(nxt) - len(nxt.lstrip())]:
        return MissingLine()
    # The lexer reads the last READ_CHARS above (100 ms for a whole 100 kB file, once a blank line);
    # before that, any word counts as a name mentioned (an import at the top is one).
    cut = above.find("\n", max(0, len(above) - READ_CHARS)) + 1 if len(above) > READ_CHARS else 0
    far, above = above[:cut], above[cut:]
    inside = scan(above, PYTHON)
    if inside.brackets or inside.in_string or inside.last_code == "\\":
        return MissingLine()   # the line is part of a statement above (a list's items, a string)
    above_code = code_text(above, PYTHON)
    column = body_column(text_above(prefix), PYTHON, suffix)
    if column is None:   # the next code line's column, or the last one's above where the next is deeper
        last = next((ln for ln in reversed(above_code.split("\n")) if ln.strip()), "")
        column = min(indent_width(nxt), indent_width(last))
    typed = indent_width(line)
    if typed > column:
        return MissingLine()
    block = []
    for ln in lines:
        if ln.strip() and indent_width(ln) < column:
            break
        block.append(ln)
    mentioned = set(_WORD.findall(above_code)) | set(_WORD.findall(far))
    defined = mentioned | bound(below_code) | bound(far_below) | _KNOWN   # (far below: strings and all)
    names: list[str] = []
    for name in _READ.findall("\n".join(block)):
        if name not in defined and name not in names and not name.startswith("__"):
            names.append(name)
            if len(names) == MAX_NAMES:
                break
    spaced = len(_SPACED.findall(above_code))
    tight = len(_TIGHT.findall(above_code))
    return MissingLine(tuple(names), " " * (column - typed), "=" if tight > spaced else " =",
                     opens_block=indent_width(nxt) > column)
