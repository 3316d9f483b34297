"""An outline of one document: its imports and its definitions with signatures.

tree-sitter parses the languages we know (one grammar wheel per language, all
offline); anything else, or a parse that fails, falls back to reading the
indentation. The outline is plain data, cached by text, so sources can ask
for it on every keystroke.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import PurePath

from keystroke.engine import languages

from .fallback import fallback_outline
from .imports import js_import, python_import, rust_import
from .types import Import, Outline, Symbol

MAX_SIGNATURE_LINES = 12   # a header longer than this is cut
SHORT_TYPE_LINES = 10      # type/struct/interface bodies up to this are kept whole


def language_of(language_id: str, path: str | PurePath | None = None) -> str:
    """The grammar name for an LSP languageId, else from the file extension, else the id itself."""
    lang = languages.language(language_id).grammar
    if lang is None:
        by_path = languages.language_of_path(path)
        lang = by_path.grammar if by_path is not None else None
    return lang or language_id.lower() or "text"


# --------------------------------------------------------------------------- tree-sitter

def _load_language(lang: str):
    import tree_sitter

    if lang == "python":
        import tree_sitter_python as m
        return tree_sitter.Language(m.language())
    if lang == "javascript":
        import tree_sitter_javascript as m
        return tree_sitter.Language(m.language())
    if lang in ("typescript", "tsx"):
        import tree_sitter_typescript as m
        return tree_sitter.Language(m.language_typescript() if lang == "typescript" else m.language_tsx())
    if lang == "go":
        import tree_sitter_go as m
        return tree_sitter.Language(m.language())
    if lang == "rust":
        import tree_sitter_rust as m
        return tree_sitter.Language(m.language())
    if lang == "java":
        import tree_sitter_java as m
        return tree_sitter.Language(m.language())
    if lang == "c":
        import tree_sitter_c as m
        return tree_sitter.Language(m.language())
    if lang == "cpp":
        import tree_sitter_cpp as m
        return tree_sitter.Language(m.language())
    return None


@functools.lru_cache(maxsize=None)
def parser_for(lang: str):
    """A tree-sitter parser for `lang`, or None when no grammar is installed for it."""
    try:
        language = _load_language(lang)
        if language is None:
            return None
        import tree_sitter

        return tree_sitter.Parser(language)
    except Exception:  # a missing or incompatible grammar wheel: use the fallback
        return None


@dataclass(frozen=True)
class _Spec:
    defs: dict[str, str]            # node type -> kind
    containers: frozenset[str]      # defs whose body holds members
    transparent: frozenset[str]     # walk through these looking for defs and imports
    imports: frozenset[str]
    keep_whole: frozenset[str] = frozenset()  # short declarations shown as written


_SPECS: dict[str, _Spec] = {
    "python": _Spec(
        defs={"function_definition": "function", "class_definition": "class",
              "expression_statement": "variable"},
        containers=frozenset({"class_definition"}),
        transparent=frozenset({"decorated_definition", "if_statement", "try_statement", "else_clause",
                               "except_clause", "finally_clause", "block", "with_statement"}),
        imports=frozenset({"import_statement", "import_from_statement", "future_import_statement"}),
    ),
    "javascript": _Spec(
        defs={"function_declaration": "function", "generator_function_declaration": "function",
              "class_declaration": "class", "method_definition": "method", "variable_declarator": "variable",
              "field_definition": "variable"},
        containers=frozenset({"class_declaration"}),
        transparent=frozenset({"export_statement", "lexical_declaration", "variable_declaration", "class_body"}),
        imports=frozenset({"import_statement"}),
    ),
    "go": _Spec(
        defs={"function_declaration": "function", "method_declaration": "method", "type_spec": "type",
              "const_spec": "variable", "var_spec": "variable"},
        containers=frozenset(),
        transparent=frozenset({"type_declaration", "const_declaration", "var_declaration"}),
        imports=frozenset({"import_declaration"}),
        keep_whole=frozenset({"type_spec", "const_spec", "var_spec"}),
    ),
    "rust": _Spec(
        defs={"function_item": "function", "function_signature_item": "function", "struct_item": "type",
              "enum_item": "type", "trait_item": "type", "impl_item": "impl", "type_item": "type",
              "const_item": "variable", "static_item": "variable", "mod_item": "module",
              "macro_definition": "function"},
        containers=frozenset({"impl_item", "trait_item", "mod_item"}),
        transparent=frozenset(),
        imports=frozenset({"use_declaration", "extern_crate_declaration"}),
        keep_whole=frozenset({"struct_item", "enum_item", "type_item", "const_item", "static_item"}),
    ),
    "java": _Spec(
        defs={"class_declaration": "class", "interface_declaration": "class", "enum_declaration": "class",
              "record_declaration": "class", "method_declaration": "method",
              "constructor_declaration": "method", "field_declaration": "variable"},
        containers=frozenset({"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}),
        transparent=frozenset(),
        imports=frozenset({"import_declaration"}),
        keep_whole=frozenset({"field_declaration"}),
    ),
    "c": _Spec(
        defs={"function_definition": "function", "declaration": "function", "struct_specifier": "type",
              "union_specifier": "type", "enum_specifier": "type", "type_definition": "type",
              "preproc_function_def": "function", "preproc_def": "variable"},
        containers=frozenset(),
        transparent=frozenset({"preproc_ifdef", "preproc_if", "preproc_else", "preproc_elif",
                               "linkage_specification", "declaration_list"}),
        imports=frozenset({"preproc_include"}),
        keep_whole=frozenset({"declaration", "struct_specifier", "union_specifier", "enum_specifier",
                              "type_definition", "preproc_function_def", "preproc_def"}),
    ),
}
_SPECS["typescript"] = _Spec(
    defs={**_SPECS["javascript"].defs, "interface_declaration": "type", "type_alias_declaration": "type",
          "enum_declaration": "type", "abstract_class_declaration": "class", "function_signature": "function",
          "public_field_definition": "variable", "method_signature": "method",
          "abstract_method_signature": "method"},
    containers=frozenset({"class_declaration", "abstract_class_declaration"}),
    transparent=_SPECS["javascript"].transparent | {"ambient_declaration", "internal_module", "statement_block"},
    imports=frozenset({"import_statement"}),
    keep_whole=frozenset({"interface_declaration", "type_alias_declaration", "enum_declaration",
                          "public_field_definition", "method_signature", "abstract_method_signature",
                          "function_signature"}),
)
_SPECS["tsx"] = _SPECS["typescript"]
_SPECS["cpp"] = _Spec(
    defs={**_SPECS["c"].defs, "class_specifier": "class", "field_declaration": "variable",
          "alias_declaration": "type"},
    containers=frozenset({"class_specifier", "struct_specifier"}),
    transparent=_SPECS["c"].transparent | {"namespace_definition", "template_declaration",
                                           "field_declaration_list", "access_specifier"},
    imports=frozenset({"preproc_include", "using_declaration"}),
    keep_whole=_SPECS["c"].keep_whole | {"field_declaration", "alias_declaration"},
)

_BODY_TYPES = frozenset({
    "block", "statement_block", "class_body", "compound_statement", "field_declaration_list",
    "declaration_list", "constructor_body", "interface_body", "enum_body", "object_type",
    "enum_variant_list", "struct_type", "interface_type",
})


class _Walker:
    def __init__(self, text: str, lang: str):
        self.data = text.encode("utf-8")
        self.lang = lang
        self.spec = _SPECS[lang]
        self.imports: list[Import] = []
        self.symbols: list[Symbol] = []

    def src(self, node) -> str:
        return self.data[node.start_byte:node.end_byte].decode("utf-8", "replace")

    def walk(self, node, parent: str | None, depth: int = 0) -> None:
        if depth > 8:
            return
        for child in node.named_children:
            t = child.type
            if t in self.spec.imports:
                self.imports.extend(self.read_import(child))
            elif t == "lexical_declaration" and self.lang in ("javascript", "typescript", "tsx") and self.is_require(child):
                self.imports.extend(self.read_import(child))
            elif t == "mod_item" and child.child_by_field_name("body") is None:
                name = child.child_by_field_name("name")
                if name is not None:  # `mod util;` pulls in util.rs
                    self.imports.append(Import(" ".join(self.src(child).split()), child.start_point[0],
                                               "mod::" + self.src(name), ((self.src(name), None),)))
            elif t in self.spec.defs:
                self.add_def(child, parent, depth)
            elif t in self.spec.transparent:
                self.walk(child, parent, depth + 1)

    # -- definitions

    def add_def(self, node, parent: str | None, depth: int) -> None:
        kind = self.spec.defs[node.type]
        t = node.type
        if t == "declaration" and not self.find(node, "function_declarator"):
            return  # a C variable declaration, not a prototype
        if t == "field_declaration" and self.lang == "cpp" and self.find(node, "function_declarator"):
            kind = "method"
        if t == "variable_declarator" and self.lang in ("javascript", "typescript", "tsx"):
            value = node.child_by_field_name("value")
            if value is not None and value.type in ("arrow_function", "function_expression", "function"):
                kind = "function"
            elif parent is not None or depth > 2:
                return
        if t == "expression_statement":
            self.add_python_variable(node, parent)
            return
        if t in ("struct_specifier", "union_specifier", "enum_specifier") and node.child_by_field_name("body") is None:
            return
        if t == "preproc_def" and node.child_by_field_name("value") is None:
            return  # an include guard
        if t == "mod_item" and node.child_by_field_name("body") is None:
            return  # `mod foo;` is an import of a file, not a definition here
        name = self.name_of(node)
        if not name:
            return
        if parent is not None and kind == "function":
            kind = "method"
        start = self.outer_start(node)
        signature = self.signature(node, start)
        header_end = node.start_point[0]
        body = self.body_of(node)
        if body is not None:
            header_end = body.start_point[0]
        self.symbols.append(Symbol(name, kind, signature, start.start_point[0], node.end_point[0],
                                   parent, header_end))
        if t in self.spec.containers and body is not None and depth < 4:
            self.walk(body, name, depth + 1)

    def add_python_variable(self, node, parent: str | None) -> None:
        """`NAME = value` or `field: type = value` at module or class level."""
        assign = node.named_children[0] if node.named_children else None
        if assign is None or assign.type != "assignment":
            return
        left = assign.child_by_field_name("left")
        if left is None or left.type != "identifier":
            return
        first = self.src(node).split("\n", 1)[0]
        if len(first) > 120:
            first = first[:117] + "..."
        line = node.start_point[0]
        self.symbols.append(Symbol(self.src(left), "variable", first, line, node.end_point[0], parent, line))

    def name_of(self, node) -> str:
        t = node.type
        if t == "impl_item":
            n = node.child_by_field_name("type")
            return self.src(n) if n is not None else ""
        if t == "method_declaration" and self.lang == "go":
            n = node.child_by_field_name("name")
            return self.src(n) if n is not None else ""
        if t == "type_definition":
            n = node.child_by_field_name("declarator")
            return self.src(n) if n is not None else ""
        if t in ("field_declaration", "const_item", "static_item") and self.lang in ("java",):
            n = self.find(node, "variable_declarator")
            n = n.child_by_field_name("name") if n is not None else None
            return self.src(n) if n is not None else ""
        n = node.child_by_field_name("name")
        if n is not None:
            return self.src(n)
        decl = node.child_by_field_name("declarator")
        while decl is not None and decl.child_by_field_name("declarator") is not None and decl.type != "function_declarator":
            decl = decl.child_by_field_name("declarator")
        if decl is not None and decl.type == "function_declarator":
            decl = decl.child_by_field_name("declarator")
        if decl is not None and decl.type in ("identifier", "field_identifier", "qualified_identifier",
                                              "destructor_name", "operator_name", "type_identifier"):
            return self.src(decl)
        return ""

    def find(self, node, type_: str, depth: int = 4):
        if depth < 0:
            return None
        for c in node.named_children:
            if c.type == type_:
                return c
            hit = self.find(c, type_, depth - 1)
            if hit is not None:
                return hit
        return None

    def outer_start(self, node):
        """Include decorators, `export`, `template <...>` wrapping a definition."""
        p = node.parent
        while p is not None and p.type in ("decorated_definition", "export_statement", "template_declaration",
                                           "lexical_declaration", "variable_declaration", "type_declaration",
                                           "const_declaration", "var_declaration") \
                and p.start_point[0] >= node.start_point[0] - 3 and len(p.named_children) <= 2:
            node, p = p, p.parent
        return node

    def body_of(self, node):
        if node.type in self.spec.keep_whole and node.end_point[0] - node.start_point[0] < SHORT_TYPE_LINES:
            return None
        if node.type == "variable_declarator":
            value = node.child_by_field_name("value")
            return value.child_by_field_name("body") if value is not None else None
        body = node.child_by_field_name("body")
        if body is None and node.type == "type_spec":
            typ = node.child_by_field_name("type")
            if typ is not None and typ.type in ("struct_type", "interface_type"):
                body = typ
        if body is not None and (body.type in _BODY_TYPES or self.lang == "python"):
            return body
        return None

    def signature(self, node, start) -> str:
        body = self.body_of(node)
        indent = start.start_point[1]
        if body is None:
            text = self.data[start.start_byte:node.end_byte].decode("utf-8", "replace")
            if node.type == "variable_declarator":
                text = self.data[start.start_byte:start.end_byte].decode("utf-8", "replace")
            head, tail = text, ""
        else:
            head = self.data[start.start_byte:body.start_byte].decode("utf-8", "replace").rstrip()
            if self.lang == "python":
                doc = self.python_doc(body)
                inner = " " * 4
                tail = (f"\n{inner}\"\"\"{doc}\"\"\"" if doc else "") + f"\n{inner}..."
            else:
                tail = " { ... }"
        lines = _dedent(head, indent).split("\n")
        if len(lines) > MAX_SIGNATURE_LINES:
            lines = lines[:MAX_SIGNATURE_LINES] + [" " * 4 + "..."]
        doc = "" if self.lang == "python" else self.comment_doc(start)
        return ((doc + "\n" if doc else "") + "\n".join(lines)).rstrip() + tail

    def python_doc(self, body) -> str:
        first = body.named_children[0] if body.named_children else None
        if first is None or first.type != "expression_statement" or not first.named_children:
            return ""
        s = first.named_children[0]
        if s.type != "string":
            return ""
        text = self.src(s).lstrip("rbuRBU").strip("\"'").strip()
        return text.split("\n", 1)[0].strip()

    def comment_doc(self, node) -> str:
        """The first line of a comment that ends on the line just above `node`."""
        prev = node.prev_named_sibling
        if prev is None or "comment" not in prev.type or prev.end_point[0] < node.start_point[0] - 1:
            return ""
        while True:  # walk up a run of // lines to its first
            before = prev.prev_named_sibling
            if before is None or "comment" not in before.type or before.end_point[0] != prev.start_point[0] - 1:
                break
            prev = before
        for line in self.src(prev).split("\n"):
            line = line.strip().lstrip("/*!").strip()
            if line:
                return "// " + line.rstrip("*/").strip()
        return ""

    # -- imports

    def is_require(self, node) -> bool:
        return bool(re.search(r"\brequire\s*\(\s*['\"]", self.src(node)))

    def read_import(self, node) -> list[Import]:
        text = " ".join(self.src(node).split())
        line = node.start_point[0]
        lang = self.lang
        if lang == "python":
            return [python_import(text, line)]
        if lang in ("javascript", "typescript", "tsx"):
            return [js_import(text, line)]
        if lang == "go":
            specs = re.findall(r'(?:([A-Za-z_.]\w*)\s+)?"([^"]+)"', text)
            return [Import(f'import {alias + " " if alias else ""}"{path}"', line, path,
                           ((alias or path.rsplit("/", 1)[-1], None),)) for alias, path in specs]
        if lang == "rust":
            return [rust_import(text, line)]
        if lang == "java":
            m = re.match(r"import\s+(static\s+)?([\w.]+)(\.\*)?\s*;", text)
            if not m:
                return [Import(text, line, "")]
            full = m.group(2)
            if m.group(3):
                return [Import(text, line, full)]
            module, _, name = full.rpartition(".")
            return [Import(text, line, full if not m.group(1) else module, ((name, None),))]
        if lang in ("c", "cpp"):
            m = re.search(r'#\s*include\s*([<"])([^>"]+)[>"]', text)
            if m:
                return [Import(text, line, m.group(2) if m.group(1) == '"' else "<" + m.group(2) + ">")]
            return [Import(text, line, "")]
        return [Import(text, line, "")]


def _dedent(text: str, first_indent: int) -> str:
    """Dedent the continuation lines of a header by the indentation of its first line."""
    lines = text.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        cut = min(first_indent, len(line) - len(line.lstrip()))
        out.append(line[cut:])
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point

@functools.lru_cache(maxsize=128)
def outline(text: str, language: str) -> Outline:
    """The outline of `text` in `language` (a name from `language_of`)."""
    parser = parser_for(language) if language in _SPECS else None
    if parser is not None:
        try:
            tree = parser.parse(text.encode("utf-8"))
            walker = _Walker(text, language)
            walker.walk(tree.root_node, None)
            if language == "go":  # methods belong to their receiver's type
                walker.symbols = [
                    Symbol(s.name, s.kind, s.signature, s.start_line, s.end_line,
                           _go_receiver(s.signature), s.header_end_line) if s.kind == "method" else s
                    for s in walker.symbols
                ]
            if tree.root_node.has_error:  # recovery may swallow later definitions: add them from indentation
                known = {(s.name, s.parent) for s in walker.symbols}
                extra = [s for s in fallback_outline(text, language).symbols if (s.name, s.parent) not in known]
                walker.symbols = sorted(walker.symbols + extra, key=lambda s: s.start_line)
            return Outline(language, tuple(walker.imports), tuple(walker.symbols), parsed=True)
        except Exception:
            pass
    return fallback_outline(text, language)


def _go_receiver(signature: str) -> str | None:
    m = re.search(r"func\s*\(\s*\w*\s*\*?\s*([A-Za-z_]\w*)", signature)
    return m.group(1) if m else None
