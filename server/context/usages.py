"""The usages note: for the call or member access at the cursor, another real call of it.

It goes right above the cursor's line (not into the header), so that when it
appears only the note and the line are recomputed; it is built from the
line up to the call, so it does not change while the arguments are typed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from . import similar as _similar
from .sources import NO_LINES, excluded, Finder, display_name
from .types import ContextConfig, DocumentView, Snippet

_CALLEE = re.compile(r"([A-Za-z_]\w*)(?:\s*\.\s*([A-Za-z_]\w*))*\s*$")
_DEFINITION_LINE = re.compile(r"[ \t]*(?:async\s+)?(?:def|class|fn|func|function)\s")
_ATTRIBUTE_AT_CURSOR = re.compile(r"([A-Za-z_]\w*)\s*\.\s*\w*$")


class CursorTarget(NamedTuple):
    """What the code before the cursor is in the middle of: a call `name(`, `name.attr(` or a member access `name.`."""

    name: str
    attr: str | None
    kind: str   # "call" or "member"
    key: str    # the callee as written, without spaces: "name(", "name.attr(", "name."
    end: int    # index in the line just after the `(` or `.`


def cursor_targets(line_before_cursor: str) -> list[CursorTarget]:
    """The member access and the call that the cursor is in, innermost first, from its line before the cursor.

    `name.` or `name.par` right before the cursor is a member access of
    `name`; the innermost call left open on the line (`name(` or
    `name.attr(`, also around an open list or dict) is the call. Strings are
    skipped so that brackets inside them do not count.
    """
    code = _mask_strings(line_before_cursor)
    targets = []
    m = _ATTRIBUTE_AT_CURSOR.search(code)
    if m is not None:
        targets.append(CursorTarget(m.group(1), None, "member", m.group(1) + ".", code.index(".", m.start()) + 1))
    opened: list[int] = []
    for i, ch in enumerate(code):
        if ch in "([{":
            opened.append(i)
        elif ch in ")]}" and opened:
            opened.pop()
    for at in reversed(opened):  # the innermost call: through a list or a dict being written as its argument
        m = _CALLEE.search(code[:at]) if code[at] == "(" else None
        if m is not None:
            chain = re.split(r"\s*\.\s*", m.group(0).strip())
            targets.append(CursorTarget(chain[0], chain[1] if len(chain) > 1 else None, "call",
                                        ".".join(chain) + "(", at + 1))
            break
    return targets


def _mask_strings(line: str) -> str:
    """`line` with the inside of its quoted strings replaced by spaces (an open string runs to the end)."""
    out, quote, i = [], "", 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                out.append("  ")
                i += 2
                continue
            out.append(quote if ch == quote else " ")
            quote = "" if ch == quote else quote
        else:
            if ch in "\"'`":
                quote = ch
            out.append(ch)
        i += 1
    return "".join(out)[: len(line)]


def usages_source(doc: DocumentView, offset: int, others: list[DocumentView], *,
                  config: ContextConfig = ContextConfig(), workspace_root: Path | None = None,
                  visible: range = NO_LINES) -> Snippet | None:
    """Another call of what the cursor is calling or reaching into: a note of a line (`usages_lines`).

    For `name(` (or `name.`) right before the cursor, where `name` is
    defined in the project (this file, an open document, a module the file
    imports), the calls of it elsewhere (this file outside the prompt's
    lines, open documents, files of the same folder), the one whose
    surroundings look most like the cursor's first. None when the prompt's
    lines already hold a call of it: that one is the better example.

    It goes right above the cursor's line, not into the header: only the
    note and the cursor's line are recomputed when it appears, the header
    and the rest of the prefix keep their KV-cache. Real calls, not the
    definition: a small model copies what it is shown, and a call shows the
    argument shapes that this code base passes (a signature made it copy
    parameter names in place of the caller's variables; docs/eval.md).
    """
    start = doc.text.rfind("\n", 0, offset) + 1
    if _DEFINITION_LINE.match(doc.text, start):
        return None
    targets = cursor_targets(doc.text[start:offset])
    if not targets:
        return None
    finder = Finder(doc, others, config, workspace_root)
    for target in targets:
        note = _usages_of(target, doc, start, finder, config, workspace_root, visible)
        if note is not None:
            return note
    return None


def _usages_of(target: CursorTarget, doc: DocumentView, start: int, finder: Finder,
               config: ContextConfig, workspace_root: Path | None, visible: range) -> Snippet | None:
    name, attr, kind, key = target.name, target.attr, target.kind, target.key
    module = finder.module_members(name) if kind == "member" else None
    hit = finder.find(name, attr) if module is None else None
    if module is None and (hit is None or hit[0].kind == "variable"):
        return None
    defining = module[0] if module is not None else hit[1]
    lines = doc.text.split("\n")
    cursor_line = doc.text.count("\n", 0, start)
    # what the cursor's line says up to the call, not the arguments being typed: the note holds still while they are
    query = _similar.identifiers("\n".join(lines[max(0, cursor_line - 5):cursor_line]) + "\n"
                                 + doc.text[start:start + target.end])
    pattern = re.compile(r"(?<![\w.])" + r"\s*\.\s*".join(map(re.escape, key[:-1].split("."))) + r"\s*" + re.escape(key[-1]))
    found: list[tuple[float, int, str, int, str]] = []
    seen_rest: set[str] = set()
    shown = False
    for rank, d in enumerate(_usage_documents(doc, defining, finder, config, workspace_root)):
        d_lines = lines if d is doc else d.text.split("\n")
        origin = "this file" if d is doc else display_name(d, workspace_root)
        for i, line in enumerate(d_lines):
            if len(line) > 200 or line.lstrip().startswith(("#", "//")):
                continue
            m = pattern.search(_mask_strings(line))
            if m is not None and d is doc and i in visible and i != cursor_line:
                shown = True
            if m is None or (d is doc and (i == cursor_line or i in visible)) or _DEFINITION_LINE.match(line):
                continue
            rest = line[m.end():].strip()
            if not rest or rest in seen_rest:
                continue
            seen_rest.add(rest)
            score = _similar.jaccard(query, _similar.identifiers("\n".join(d_lines[max(0, i - 5):i + 1])))
            found.append((-score, rank, origin, i, line.strip()))
    if not found or shown:  # a call within the prompt's lines is the better example, and the nearer one
        return None
    found.sort()
    chosen = found[:max(1, config.usages_lines)]
    text = "\n".join(line for *_, line in chosen)
    return Snippet("usages", "", text, 0.0, (), chosen[0][2], chosen[0][3], doc.language_id)


_USAGE_FOLDER_FILES = 32


def _usage_documents(doc: DocumentView, defining: DocumentView, finder: "Finder", config: ContextConfig,
                     root: Path | None) -> list[DocumentView]:
    """Where to look for uses: this file, open documents, the defining module, files beside this one."""
    docs = [doc, *finder.resolver.others, defining]
    if doc.path is not None and root is not None:
        try:
            siblings = sorted(p for p in doc.path.parent.iterdir() if p.suffix == doc.path.suffix and p != doc.path)
        except OSError:
            siblings = []
        for p in siblings[:_USAGE_FOLDER_FILES]:
            d = finder.resolver.open_file(p)
            if d is not None:
                docs.append(d)
    out, seen = [], set()
    for d in docs:
        try:
            where = d.path.resolve() if d.path is not None else d.uri
        except OSError:
            where = d.uri
        if d.uri not in seen and where not in seen:  # the editor's text of this file, never its copy on disk
            seen.update((d.uri, where))
            out.append(d)
    return out
