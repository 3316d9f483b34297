"""The context sources: pure functions from documents to header snippets.

Every source reads the *stable view* of the current document (its cursor
line reduced to its indentation, see `stable_view`), so what it returns does
not change while the user types on one line: the header built from it stays
byte-identical and the engine's KV-cache for it survives the keystroke.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..secrets import is_env_file
from . import similar as _similar
from .parse import language_of, outline
from .types import Import, Outline, Symbol
from .types import ContextConfig, DocumentView, Snippet
from .workspace import read_workspace_file, resolve_import, same_package_files

_NAME_USE = re.compile(r"([A-Za-z_]\w*)(?:\s*(?:\.|::|->)\s*([A-Za-z_]\w*))?")
_SCOPE_KINDS = ("function", "method", "class", "type", "impl", "module")
_CONTAINER_KINDS = ("class", "type", "impl", "module")
_MAX_MEMBERS = 12
NO_LINES = range(0)


def stable_view(doc: DocumentView, offset: int) -> tuple[DocumentView, int]:
    """`doc` with the cursor's line cut to its leading whitespace, and that line's number."""
    text = doc.text
    offset = max(0, min(offset, len(text)))
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    end = len(text) if end < 0 else end
    line = text[start:end]
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    stable = text[:start] + indent + text[end:]
    return DocumentView(doc.uri, stable, doc.language_id, doc.path), text.count("\n", 0, start)


def display_name(doc: DocumentView, root: Path | None) -> str:
    """A short, stable name for a document: its path under the workspace, else its file name."""
    if doc.path is not None:
        if root is not None:
            try:
                return doc.path.resolve().relative_to(root.resolve()).as_posix()
            except (ValueError, OSError):
                pass
        return doc.path.name
    return doc.uri.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or doc.uri


def doc_outline(doc: DocumentView) -> Outline:
    return outline(doc.text, language_of(doc.language_id, doc.path))


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def enclosing_symbol(out: Outline, lines: list[str], cursor_line: int) -> Symbol | None:
    """The innermost definition whose body holds the cursor line.

    A definition also holds the blank lines after it when the cursor is
    indented deeper than its header (typing at the end of a Python body).
    """
    cursor_indent = _indent_of(lines[cursor_line]) if cursor_line < len(lines) else 0
    best: Symbol | None = None
    for s in out.symbols:
        if s.kind not in _SCOPE_KINDS or s.start_line >= cursor_line:
            continue
        inside = cursor_line <= s.end_line
        if not inside and s.end_line < cursor_line:
            gap = lines[s.end_line + 1:cursor_line]
            header_indent = _indent_of(lines[s.start_line]) if s.start_line < len(lines) else 0
            inside = all(not g.strip() for g in gap) and cursor_indent > header_indent and out.language == "python"
        if inside and (best is None or s.start_line >= best.start_line):
            best = s
    return best


def _outside(s: Symbol, visible: range) -> bool:
    return s.end_line < visible.start or s.start_line >= visible.stop if visible else True


# --------------------------------------------------------------------------- imports

def imports_source(doc: DocumentView, cursor_line: int, visible: range = NO_LINES) -> list[Snippet]:
    """The current file's import statements that the prompt's prefix/suffix do not already show."""
    out = doc_outline(doc)
    texts = []
    for imp in out.imports:
        if imp.line in visible or imp.line == cursor_line or imp.text in texts:
            continue
        texts.append(imp.text)
    if not texts:
        return []
    return [Snippet("imports", "imports of this file", "\n".join(texts), 10.0, (0,), "this file", -1, doc.language_id)]


# --------------------------------------------------------------------------- signatures

def used_names(text: str, cursor_line: int, before: int, after: int) -> Counter:
    """(name, attribute or None) pairs used in the lines around the cursor, with counts."""
    lines = text.split("\n")
    window = lines[max(0, cursor_line - before): cursor_line + after + 1]
    uses: Counter = Counter()
    for line in window:
        code = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        for m in _NAME_USE.finditer(code):
            uses[(m.group(1), m.group(2))] += 1
    return uses


def _compact(sig: str) -> str:
    """A member's signature without its doc line, on as few lines as it takes."""
    lines = [l for l in sig.split("\n") if not l.lstrip().startswith(("//", '"""', "'''"))]
    if lines and lines[-1].strip() == "...":
        lines = lines[:-1]
        if lines:
            lines[-1] += " ..."
    return "\n".join(lines)


def render_symbol(sym: Symbol, out: Outline) -> str:
    """A symbol's signature; a class also lists its members' signatures."""
    if sym.kind not in _CONTAINER_KINDS:
        return sym.signature
    members = [m for m in out.symbols if m.parent == sym.name and m is not sym
               and not (out.language == "python" and m.name.startswith("_") and m.name != "__init__")]
    if out.language == "go" and sym.kind == "type":
        members = [m for m in out.symbols if m.parent == sym.name and m.kind == "method"]
    if not members:
        return sym.signature
    members = members[:_MAX_MEMBERS]
    body = "\n".join("    " + line for m in members for line in _compact(m.signature).split("\n"))
    sig = sym.signature
    if sig.endswith("\n    ..."):  # Python, and the indentation fallback
        return sig[: -len("\n    ...")] + "\n" + body
    if sig.endswith(" { ... }"):
        return sig[: -len(" { ... }")] + " {\n" + body + "\n}"
    if out.language == "rust":
        return sig + f"\nimpl {sym.name} {{\n" + body + "\n}"
    return sig + "\n" + "\n".join(_compact(m.signature) for m in members)


def _lookup(out: Outline, name: str) -> Symbol | None:
    """The top-level definition of `name`, a type or function before an impl block."""
    hits = [s for s in out.symbols if s.name == name and s.parent is None]
    hits.sort(key=lambda s: (s.kind == "impl", s.start_line))
    return hits[0] if hits else None


def _module_stem(module: str) -> str:
    stem = re.split(r"[./:\\]+", module.strip("./"))[-1] if module.strip("./") else ""
    return stem


class _Resolver:
    """Finds documents by path among the open ones first, then on disk."""

    def __init__(self, doc: DocumentView, others: list[DocumentView], root: Path | None, config: ContextConfig):
        self.doc, self.root, self.config = doc, root, config
        self.others = [o for o in others if o.uri != doc.uri and not excluded(o, config)]
        self.by_path: dict[Path, DocumentView] = {}
        for o in self.others:
            if o.path is not None:
                try:
                    self.by_path[o.path.resolve()] = o
                except OSError:
                    pass

    def open_file(self, path: Path) -> DocumentView | None:
        try:
            real = path.resolve()
        except OSError:
            return None
        if real in self.by_path:
            return self.by_path[real]
        text = read_workspace_file(real, self.root, self.config.max_workspace_file_bytes)
        if text is None:
            return None
        return DocumentView(real.as_uri(), text, "", real)

    def module_docs(self, imp: Import, lang: str) -> dict[str | None, DocumentView]:
        """{None: the imported module, name: a module imported by name} as documents."""
        memo = self.__dict__.setdefault("_memo", {})
        if imp not in memo:
            memo[imp] = self._module_docs(imp, lang)
        return memo[imp]

    def _module_docs(self, imp: Import, lang: str) -> dict[str | None, DocumentView]:
        found: dict[str | None, DocumentView] = {}
        if self.doc.path is not None and self.root is not None:
            for key, path in resolve_import(imp, lang, self.doc.path, self.root, self.doc.text).items():
                d = self.open_file(path)
                if d is not None:
                    found[key] = d
        if None not in found:  # an unsaved or out-of-workspace module: match open documents by name
            stem = _module_stem(imp.module)
            for o in self.others:
                if stem and o.path is not None and o.path.stem == stem:
                    found[None] = o
                    break
                if stem and o.path is None and o.uri.rsplit("/", 1)[-1].split(".")[0] == stem:
                    found[None] = o
                    break
        return found


def excluded(doc: DocumentView, config: ContextConfig) -> bool:
    return is_env_file(doc.path or doc.uri) or len(doc.text) > config.max_document_chars


class Finder:
    """Resolves a name used in `doc` (and the attribute after it) to its definition.

    Looked for, in order: through the current file's imports (open documents
    or workspace files), in the current file, in the files every name may
    come from (C/C++ includes, Go package, Java package), and by name in the
    other open documents.
    """

    def __init__(self, doc: DocumentView, others: list[DocumentView], config: ContextConfig,
                 workspace_root: Path | None) -> None:
        self.doc, self.root = doc, workspace_root
        self.lang = language_of(doc.language_id, doc.path)
        self.out = doc_outline(doc)
        self.resolver = _Resolver(doc, others, workspace_root, config)
        self.bindings: dict[str, tuple[Import, str | None]] = {}
        for imp in self.out.imports:
            for alias, original in imp.names:
                self.bindings.setdefault(alias, (imp, original))
        self.implicit: list[DocumentView] = []
        if doc.path is not None and workspace_root is not None:
            if self.lang in ("c", "cpp"):
                for imp in self.out.imports:
                    self.implicit.extend(self.resolver.module_docs(imp, self.lang).values())
            for p in same_package_files(doc.path, self.lang, workspace_root):
                d = self.resolver.open_file(p)
                if d is not None:
                    self.implicit.append(d)

    def find(self, name: str, attr: str | None) -> tuple[Symbol, DocumentView, Outline, float] | None:
        """(definition, its document, that document's outline, rank base), or None."""
        lang = self.lang
        if name in self.bindings:
            imp, original = self.bindings[name]
            docs = self.resolver.module_docs(imp, lang)
            if name in docs:  # `from pkg import module` then module.attr
                target, wanted = docs[name], attr
            elif None in docs:
                target = docs[None]
                wanted = original if original is not None else attr
                if lang == "java":
                    wanted = original or name
            else:
                return None
            if not wanted:
                return None
            t_out = doc_outline(target)
            sym = _lookup(t_out, wanted)
            return (sym, target, t_out, 3.0) if sym is not None else None
        sym = _lookup(self.out, name)
        if sym is not None:
            return sym, self.doc, self.out, 1.0
        if len(name) < 3:
            return None
        for d in self.implicit:
            d_out = doc_outline(d)
            sym = _lookup(d_out, name)
            if sym is not None:
                return sym, d, d_out, 3.0
        if lang == "java" and self.doc.path is not None and name[:1].isupper():
            d = self.resolver.open_file(self.doc.path.parent / f"{name}.java")
            if d is not None:
                d_out = doc_outline(d)
                sym = _lookup(d_out, name)
                if sym is not None:
                    return sym, d, d_out, 3.0
        for o in self.resolver.others:
            o_out = doc_outline(o)
            sym = _lookup(o_out, name)
            if sym is not None and sym.kind != "variable":
                return sym, o, o_out, 2.0
        return None

    def module_members(self, name: str) -> tuple[DocumentView, Outline] | None:
        """The module that `name` is bound to by `from pkg import module` / `import module`, if local."""
        if name not in self.bindings:
            return None
        imp, original = self.bindings[name]
        docs = self.resolver.module_docs(imp, self.lang)
        target = docs.get(name) or (docs.get(None) if original is None else None)
        return (target, doc_outline(target)) if target is not None else None


def signatures_source(doc: DocumentView, cursor_line: int, others: list[DocumentView], *,
                      config: ContextConfig = ContextConfig(), workspace_root: Path | None = None,
                      visible: range = NO_LINES) -> list[Snippet]:
    """Signatures of the names used near the cursor, wherever they are defined (see `Finder`).

    A definition in the current file counts only outside the visible lines
    and outside the cursor's own scope. Names the file imports from local
    code come too, ranked below the ones in use.
    """
    finder = Finder(doc, others, config, workspace_root)
    lines = doc.text.split("\n")
    scope = enclosing_symbol(finder.out, lines, cursor_line)
    uses = used_names(doc.text, cursor_line, config.usage_lines_before, config.usage_lines_after)
    name_counts: Counter = Counter()
    for (name, _attr), n in uses.items():
        name_counts[name] += n

    found: dict[tuple[str, int], Snippet] = {}

    def add(sym: Symbol, where: DocumentView, where_out: Outline, base: float, count: int) -> None:
        origin = "this file" if where is doc else display_name(where, workspace_root)
        key = (origin, sym.start_line)
        if key in found:
            return
        text = render_symbol(sym, where_out)
        title = "signatures from this file" if where is doc else f"from {origin}"
        found[key] = Snippet("signatures", title, text, base + min(count, 10) / 10.0,
                             (origin == "this file", origin, sym.start_line), origin, sym.start_line,
                             where.language_id or where_out.language)

    for (name, attr), count in sorted(uses.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or "")):
        hit = finder.find(name, attr)
        if hit is None:
            continue
        sym, where, where_out, base = hit
        if where is doc and (sym is scope or not _outside(sym, visible)
                             or (scope and sym.start_line <= scope.start_line <= sym.end_line)):
            continue
        add(sym, where, where_out, base, name_counts[name])
    # Names imported from local code but not used nearby yet: the cursor's own line may be their
    # first use, and that line is left out above so that typing does not change the header.
    for alias, (imp, original) in finder.bindings.items():
        if (alias, None) in uses or not original:
            continue
        docs = finder.resolver.module_docs(imp, finder.lang)
        if None in docs and alias not in docs:
            t_out = doc_outline(docs[None])
            sym = _lookup(t_out, original)
            if sym is not None:
                add(sym, docs[None], t_out, 2.5, 0)
    ranked = sorted(found.values(), key=lambda s: (-s.rank, s.order))
    return ranked[: config.max_signatures]


# --------------------------------------------------------------------------- same-indent blocks

def siblings_source(doc: DocumentView, cursor_line: int, *, config: ContextConfig = ContextConfig(),
                    visible: range = NO_LINES) -> list[Snippet]:
    """Signatures of the blocks beside the cursor's scope: the other methods of its class, or
    the other top-level definitions, when the prompt's prefix/suffix do not show them."""
    out = doc_outline(doc)
    lines = doc.text.split("\n")
    scope = enclosing_symbol(out, lines, cursor_line)
    if scope is not None and scope.kind in _CONTAINER_KINDS:
        container: str | None = scope.name   # the cursor sits between the members
    else:
        container = scope.parent if scope is not None else None
    siblings = [s for s in out.symbols if s.parent == container and s is not scope and s.kind != "impl"
                and _outside(s, visible) and not (scope is not None and s.start_line <= scope.start_line <= s.end_line)]
    title = f"other members of {container} in this file" if container else "other definitions in this file"
    snippets = []
    for i, s in enumerate(siblings[: config.max_siblings]):
        text = _compact(s.signature) if s.kind not in ("class", "type") else s.signature
        # nearer siblings rank higher; the rendered order stays the file's order
        distance = abs(s.start_line - cursor_line)
        snippets.append(Snippet("siblings", title, text, 1.0 / (1 + distance), (s.start_line,), "this file",
                                s.start_line, doc.language_id))
    return snippets


# --------------------------------------------------------------------------- similar snippets

def similar_source(doc: DocumentView, cursor_line: int, others: list[DocumentView], *,
                   config: ContextConfig = ContextConfig(), workspace_root: Path | None = None) -> list[Snippet]:
    """The windows of other open documents most alike (Jaccard over identifiers) to the lines above the cursor."""
    lines = doc.text.split("\n")
    query_text = "\n".join(lines[max(0, cursor_line - config.similar_window_lines): cursor_line + 1])
    query = _similar.identifiers(query_text)
    if not query:
        return []
    candidates = []
    for o in others:
        if o.uri == doc.uri or excluded(o, config):
            continue
        best = _similar.best_windows(query, o.text, config.similar_window_lines, config.similar_min_score)
        if best:
            score, start, end = best[0]
            candidates.append((score, display_name(o, workspace_root), start, end, o))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    snippets = []
    for score, origin, start, end, o in candidates[: config.max_similar]:
        text = "\n".join(o.text.split("\n")[start:end]).rstrip()
        snippets.append(Snippet("similar", f"similar code in {origin}", text, score, (origin, start), origin,
                                start, o.language_id or (o.path.suffix.lstrip(".") if o.path else "")))
    return snippets
