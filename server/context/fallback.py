"""Outlines from indentation alone, for languages without a tree-sitter grammar (or text that does not parse)."""
from __future__ import annotations

import re

from .types import Import, Outline, Symbol


_DEF_WORDS = re.compile(
    r"^\s*(?:(?:pub|export|public|private|protected|static|async|local|abstract|final|override|default|inline)\s+)*"
    r"(?P<word>def|fn|func|function|class|struct|enum|interface|trait|type|module|sub|proc|fun|object|record|impl|macro|defn|defun)\s+"
    r"\(?(?:self\.)?([A-Za-z_][\w.!?]*)"
)
_CLASS_WORDS = ("class", "struct", "enum", "interface", "trait", "type", "module", "object", "record", "impl")
_IMPORT_LINE = re.compile(r"^\s*(?:import\s|from\s+\S+\s+import\s|#\s*include\b|use\s|using\s|require[\s(]|require_relative\s|library\(|load\(|@import\s|open\s)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t").lstrip("\t"))


def fallback_outline(text: str, language: str) -> Outline:
    """Definitions from indentation: a named header line followed by more-indented lines."""
    lines = text.split("\n")
    imports = [Import(" ".join(l.split()), i, "") for i, l in enumerate(lines) if _IMPORT_LINE.match(l)]
    symbols: list[Symbol] = []
    stack: list[tuple[int, str]] = []  # (indent, name) of open definitions
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        ind = _indent(line)
        while stack and stack[-1][0] >= ind:
            stack.pop()
        m = _DEF_WORDS.match(line)
        if not m:
            continue
        end = i
        for j in range(i + 1, len(lines)):
            if not lines[j].strip():
                continue
            if _indent(lines[j]) <= ind:
                # a closing bracket at the header's indentation still belongs to it
                end = j if lines[j].strip()[:1] in ")]}" or lines[j].strip() in ("end", "fi", "done") else end
                break
            end = j
        parent = stack[-1][1] if stack else None
        header = line.strip()
        body = "" if end == i else (" ..." if header.endswith(("{", ":", "do", "=")) else "\n    ...")
        name = m.group(2)
        kind = "class" if m.group("word") in _CLASS_WORDS else ("function" if parent is None else "method")
        symbols.append(Symbol(name, kind, header + body, i, end, parent, i))
        stack.append((ind, name))
    return Outline(language, tuple(imports), tuple(symbols), parsed=False)


