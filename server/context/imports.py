"""What one import statement binds, read from its text (Python, JavaScript/TypeScript, Rust)."""
from __future__ import annotations

import re

from .types import Import


def python_import(text: str, line: int) -> Import:
    m = re.match(r"from\s+(\S+)\s+import\s+\(?(.*?)\)?$", text)
    if m:
        names = []
        for part in m.group(2).split(","):
            bits = part.split()
            if not bits or bits[0] == "*":
                continue
            original = bits[0]
            alias = bits[2] if len(bits) >= 3 and bits[1] == "as" else original
            names.append((alias, original))
        return Import(text, line, m.group(1), tuple(names))
    m = re.match(r"import\s+(.*)$", text)
    names, module = [], ""
    if m:
        for part in m.group(1).split(","):
            bits = part.split()
            if not bits:
                continue
            module = module or bits[0]
            if len(bits) >= 3 and bits[1] == "as":
                names.append((bits[2], None))
            else:
                names.append((bits[0].split(".")[0], None))
    return Import(text, line, module, tuple(names))


def js_import(text: str, line: int) -> Import:
    source = re.search(r"""(?:from\s*|require\s*\(\s*|^import\s+)['"]([^'"]+)['"]""", text)
    module = source.group(1) if source else ""
    names: list[tuple[str, str | None]] = []
    braces = re.search(r"\{([^}]*)\}", text)
    if braces:
        for part in braces.group(1).split(","):
            bits = part.replace("type ", "").split()
            if bits:
                names.append((bits[-1], bits[0]))
    default = re.match(r"(?:import|const|let|var)\s+(?:type\s+)?([A-Za-z_$][\w$]*)\s*(?:,|from|=)", text)
    if default:
        names.append((default.group(1), None))
    star = re.search(r"\*\s+as\s+([A-Za-z_$][\w$]*)", text)
    if star:
        names.append((star.group(1), None))
    return Import(text, line, module, tuple(names))


def rust_import(text: str, line: int) -> Import:
    m = re.match(r"(?:pub(?:\([^)]*\))?\s+)?use\s+(.*?);?$", text)
    if not m:
        return Import(text, line, "")
    path = m.group(1)
    names: list[tuple[str, str | None]] = []
    if "{" in path:
        base, _, rest = path.partition("{")
        for part in rest.rstrip("}").split(","):
            bits = part.split()
            if bits and bits[0] != "self":
                leaf = bits[0].split("::")[-1]
                names.append((bits[-1] if len(bits) >= 3 else leaf, leaf))
        module = base.rstrip(":")
    else:
        bits = path.split()
        module, _, leaf = bits[0].rpartition("::")
        if leaf != "*":
            names.append((bits[-1] if len(bits) >= 3 else leaf, leaf))
    return Import(text, line, module, tuple(names))


