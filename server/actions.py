"""Code actions: which ones a cursor offers, what to ask the engine, how to apply the answer.

Three actions, each in three pure steps (the LSP layer runs the model in
between, only when the user picks the action):

- `find_actions(text, language_id, start, end)` lists the actions the range
  offers, as `ActionSpec`s that carry the offsets they need;
- `action_request(spec, text)` and `apply_action(spec, text, completion)`
  (in `action_edits`) give what to send to the engine and the replacement
  its answer makes.

"Implement function" and "Write docstring" need Python's `ast` and are offered
for Python only; other languages are not supported yet. "Complete block"
works from text alone and is offered in any language whose blocks open with
':' or '{' (see keystroke.engine.languages).

For Python the edit keeps a document that parsed parsing. When the model's
text does not parse, the edit keeps the longest run of whole leading lines
that does and says so in `ActionEdit.note`; when no line survives,
"Implement function" keeps the stub and puts the suggestion above it as
comments, and the other actions change nothing. `ActionEdit.complete` is
False in all these cases.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import asdict, dataclass, fields
from typing import Literal

from keystroke.engine.errors import PositionError

from .syntax import (analyze, indent_width, indent_unit, leading_ws, lexicon,
                     only_docstring_since_opener, opens_block)

ActionKind = Literal["implement", "docstring", "complete_block"]
KINDS = ("implement", "docstring", "complete_block")

IMPLEMENT_MAX_TOKENS = 256
DOCSTRING_MAX_TOKENS = 128
BLOCK_MAX_TOKENS = 192

_TODO = re.compile(r"#\s*(?:TODO|FIXME|XXX)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ActionSpec:
    """One offered action. The edit will replace text[start:end].

    `indent` is the indentation of the lines the model writes; `lead` is text
    the new body starts with before the model's (a docstring moved off a
    one-line def, followed by a newline and `indent`); `name` the function or
    class the action is about ('' for a block). The spec is plain
    data so that it survives a round trip through codeAction's `data`
    (`to_data` / `from_data`).
    """

    kind: ActionKind
    title: str
    start: int
    end: int
    indent: str
    name: str = ""
    language_id: str = "python"
    lead: str = ""

    def to_data(self) -> dict:
        return asdict(self)

    @classmethod
    def from_data(cls, data: object) -> "ActionSpec":
        """Rebuild a spec from `to_data`'s dict; ValueError with a reason otherwise."""
        if not isinstance(data, dict):
            raise ValueError("code action data is not an object")
        try:
            spec = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except TypeError as exc:
            raise ValueError(f"code action data is incomplete: {exc}") from None
        if spec.kind not in KINDS:
            raise ValueError(f"unknown code action kind {spec.kind!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (spec.start, spec.end)):
            raise ValueError("code action offsets are not integers")
        if not 0 <= spec.start <= spec.end:
            raise ValueError(f"code action offsets {spec.start}..{spec.end} are not a range of a document")
        if not isinstance(spec.indent, str) or spec.indent.strip(" \t"):
            raise ValueError("code action indent is not whitespace")
        if not all(isinstance(v, str) for v in (spec.title, spec.name, spec.language_id, spec.lead)):
            raise ValueError("code action data holds a non-text field")
        return spec


@dataclass(frozen=True)
class ActionEdit:
    """The replacement of text[start:end] by new_text, and how faithful it is to the model."""

    start: int
    end: int
    new_text: str
    complete: bool = True   # False: the model's text was cut, commented out or dropped
    note: str = ""          # why, for the user
    title: str = ""         # the action's title, with the note when there is one


# ---------------------------------------------------------------- text geometry

class _Lines:
    """Line starts of a text, to turn ast's (line, UTF-8 byte column) into str offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def __len__(self) -> int:
        return len(self.starts)

    def start(self, lineno: int) -> int:
        return self.starts[lineno - 1]

    def end(self, lineno: int) -> int:
        """Offset of the newline ending line `lineno` (1-based), or the text's end."""
        return self.starts[lineno] - 1 if lineno < len(self.starts) else len(self.text)

    def line(self, lineno: int) -> str:
        return self.text[self.start(lineno): self.end(lineno)]

    def offset(self, lineno: int, col_bytes: int) -> int:
        prefix = self.line(lineno).encode("utf-8")[:col_bytes]
        return self.start(lineno) + len(prefix.decode("utf-8", errors="ignore"))

    def lineno_at(self, offset: int) -> int:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


_INDENTED_BLOCK = re.compile(r"expected an indented block after .* on line (\d+)")


def _parse_lenient(text: str, tries: int = 12) -> tuple[ast.Module | None, bool]:
    """Parse, repairing lines (never adding or removing any) until it works.

    Returns (tree, parsed_as_is). Line numbers in the tree hold for `text`;
    columns hold on every line that was not repaired. A line with an error
    becomes `pass` at its indentation; an opener with no body gets ' pass'.
    """
    try:
        return ast.parse(text), True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        pass
    lines = text.split("\n")
    for _ in range(tries):
        try:
            return ast.parse("\n".join(lines)), False
        except SyntaxError as exc:
            opener = _INDENTED_BLOCK.search(exc.msg or "")
            lineno = int(opener.group(1)) if opener else exc.lineno
            if not lineno or lineno > len(lines):
                return None, False
            if opener:  # the header may span lines: find the one ending in ':'
                lineno = next((k for k in range(lineno, min(lineno + 50, len(lines)) + 1)
                               if opens_block("\n".join(lines[int(opener.group(1)) - 1:k]))), lineno)
            line = lines[lineno - 1]
            if opener and not line.rstrip().endswith(" pass"):
                code = line.split("#", 1)[0].rstrip()
                lines[lineno - 1] = code + " pass"
            else:
                ws = leading_ws(line)
                lines[lineno - 1] = ws + "pass" if line.strip() != "pass" else ""
        except (ValueError, MemoryError, RecursionError):
            return None, False
    return None, False


# ---------------------------------------------------------------- finding actions

def _scopes(tree: ast.AST) -> list[tuple[int, ast.AST]]:
    """(depth, node) for every function and class, parents before children."""
    out: list[tuple[int, ast.AST]] = []

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.append((depth, child))
                visit(child, depth + 1)
            else:
                visit(child, depth)

    visit(tree, 0)
    return out


def _first_line(node: ast.AST) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _header_colon(lines: _Lines, node: ast.AST) -> tuple[int, int] | None:
    """(line, str column) of the ':' that ends a def/class header, via tokenize."""
    first, body_line = node.lineno, node.body[0].lineno
    segment = "\n".join(lines.line(n) for n in range(first, body_line + 1)) + "\n"
    found, depth = None, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(segment).readline):
            if tok.type != tokenize.OP:
                continue
            if tok.string in "([{":
                depth += 1
            elif tok.string in ")]}":
                depth -= 1
            elif tok.string == ":" and depth == 0:
                found = (first + tok.start[0] - 1, tok.start[1])
                break
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return found


def _docstring(node: ast.AST) -> ast.Expr | None:
    first = node.body[0] if node.body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return first
    return None


def _is_stub(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis:
        return True
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _is_placeholder_return(stmt: ast.stmt) -> bool:
    """`return`, `return None`, `return []`, `return 0`...: what a TODO body returns."""
    if not isinstance(stmt, ast.Return):
        return False
    value = stmt.value
    if value is None or isinstance(value, ast.Constant):
        return True
    return isinstance(value, (ast.List, ast.Dict, ast.Tuple, ast.Set)) and not (
        getattr(value, "elts", None) or getattr(value, "keys", None))


def _is_overload(node: ast.AST) -> bool:
    for dec in node.decorator_list:
        name = dec.attr if isinstance(dec, ast.Attribute) else getattr(dec, "id", "")
        if name == "overload":
            return True
    return False


def _trailing_comment_end(lines: _Lines, last: int, min_indent: int) -> int:
    """The last line number of the comment lines that follow line `last` inside the body."""
    end = last
    for n in range(last + 1, len(lines) + 1):
        line = lines.line(n)
        if not line.strip():
            continue
        if line.lstrip().startswith("#") and indent_width(line) > min_indent:
            end = n
            continue
        break
    return end


def _body_region(lines: _Lines, node: ast.AST) -> tuple[int, int, str, str, list[ast.stmt]] | None:
    """(start, end, indent, lead, statements) of the body after the docstring, or None.

    When the body shares the header's line (`def f(): ...`, `def f(): "Doc."; ...`)
    the region starts right after the ':' and a docstring there becomes `lead`,
    to be rewritten on its own line.
    """
    colon = _header_colon(lines, node)
    if colon is None:
        return None
    doc = _docstring(node)
    rest = node.body[1:] if doc else node.body
    def_indent = indent_width(lines.line(node.lineno))
    if doc is not None:
        anchor_line = doc.end_lineno
        anchor = lines.offset(doc.end_lineno, doc.end_col_offset)
    else:
        anchor_line, anchor = colon[0], lines.start(colon[0]) + colon[1] + 1
    inline = bool(rest) and rest[0].lineno == anchor_line
    start = anchor if inline else lines.end(anchor_line)
    lead = ""
    if inline and doc is not None and doc.lineno == colon[0]:
        start = lines.start(colon[0]) + colon[1] + 1
        lead = lines.text[lines.offset(doc.lineno, doc.col_offset): anchor]
    last = rest[-1].end_lineno if rest else anchor_line
    last = _trailing_comment_end(lines, last, def_indent)
    end = lines.end(last) if last > anchor_line or inline else start
    if rest and rest[0].lineno > anchor_line:
        indent = leading_ws(lines.line(rest[0].lineno))
    elif doc is not None and doc.lineno > colon[0]:
        indent = leading_ws(lines.line(doc.lineno))
    else:
        indent = leading_ws(lines.line(node.lineno)) + indent_unit(lines.text)
    return start, end, indent, lead + "\n" + indent if lead else "", rest


def _implement_spec(lines: _Lines, node: ast.AST) -> ActionSpec | None:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _is_overload(node):
        return None
    region = _body_region(lines, node)
    if region is None:
        return None
    start, end, indent, lead, rest = region
    stub = all(_is_stub(s) for s in rest)
    todo = (len(rest) <= 1 and all(_is_stub(s) or _is_placeholder_return(s) for s in rest)
            and bool(_TODO.search(lines.text[lines.start(node.lineno): max(end, start)])))
    if not (stub or todo):
        return None
    return ActionSpec("implement", f"Implement function {node.name}", start, end, indent, node.name,
                      lead=lead)


def _docstring_spec(lines: _Lines, node: ast.AST) -> ActionSpec | None:
    if _docstring(node) is not None:
        return None
    colon = _header_colon(lines, node)
    if colon is None or node.body[0].lineno == colon[0]:
        return None  # a one-line body: no room for a docstring without restructuring
    at = lines.end(colon[0])
    indent = leading_ws(lines.line(node.body[0].lineno))
    what = "class" if isinstance(node, ast.ClassDef) else "function"
    return ActionSpec("docstring", f"Write docstring for {what} {node.name}", at, at, indent, node.name)


def _scope_at(tree: ast.AST, lines: _Lines, first: int, last: int) -> ast.AST | None:
    """The innermost function or class holding lines first..last, or one starting right below."""
    best, best_depth = None, -1
    below = None
    for depth, node in _scopes(tree):
        top = _first_line(node)
        bottom = _trailing_comment_end(lines, node.end_lineno, indent_width(lines.line(node.lineno)))
        if top <= first and last <= bottom and depth > best_depth:
            best, best_depth = node, depth
        elif top - 1 == last and below is None:
            below = node
    return best or below


def _block_spec(text: str, lines: _Lines, offset: int, language_id: str) -> ActionSpec | None:
    """'Complete block' at a block opener with an empty body, or on a blank line in one."""
    lex = lexicon(language_id)
    if not lex.block_opener:
        return None
    n = lines.lineno_at(offset)
    line = lines.line(n)
    unit = indent_unit(text)
    if line.strip():
        if not opens_block(text[: lines.end(n)], language_id):
            return None
        following = next((lines.line(k) for k in range(n + 1, len(lines) + 1) if lines.line(k).strip()), "")
        if lex.block_opener == ":":
            empty = not following or indent_width(following) <= indent_width(line)
        else:
            empty = not following or following.lstrip().startswith("}")
        if not empty:
            return None
        at = lines.end(n)
        return ActionSpec("complete_block", "Complete block", at, at, leading_ws(line) + unit,
                          language_id=language_id)
    ctx = analyze(text[: lines.start(n)], text[lines.start(n):], language_id)
    if not ctx.in_empty_body or n == 1:
        return None
    previous = next(lines.line(k) for k in range(n - 1, 0, -1) if lines.line(k).strip())
    if only_docstring_since_opener(text[: lines.start(n)], language_id):
        indent = leading_ws(previous)
    else:
        indent = leading_ws(previous) + unit
    if indent_width(line) > indent_width(previous):
        indent = leading_ws(line)
    return ActionSpec("complete_block", "Complete block", lines.end(n - 1), lines.end(n), indent,
                      language_id=language_id)


def find_actions(text: str, language_id: str, start_offset: int, end_offset: int) -> list[ActionSpec]:
    """The actions the range start_offset..end_offset offers, most specific first."""
    if not 0 <= start_offset <= len(text) or not 0 <= end_offset <= len(text):
        raise PositionError(f"range {start_offset}..{end_offset} is outside the document "
                            f"({len(text)} characters)", "the document may have changed; try again")
    start_offset, end_offset = sorted((start_offset, end_offset))
    lines = _Lines(text)
    actions: list[ActionSpec] = []
    if (language_id or "").lower() == "python":
        tree, _ = _parse_lenient(text)
        if tree is not None:
            node = _scope_at(tree, lines, lines.lineno_at(start_offset), lines.lineno_at(end_offset))
            if node is not None:
                actions += [s for s in (_implement_spec(lines, node), _docstring_spec(lines, node)) if s]
    block = _block_spec(text, lines, end_offset, (language_id or "").lower())
    if block is not None:
        actions.append(block)
    return actions
