"""Each context source alone, on small workspaces written by the tests."""
from __future__ import annotations

from pathlib import Path

from keystroke.server.context import (
    ContextConfig,
    DocumentView,
    imports_source,
    signatures_source,
    siblings_source,
    similar_source,
    stable_view,
)

MODELS = '''"""Data models for the shop."""
from dataclasses import dataclass, field


@dataclass
class Item:
    """One product in the catalogue."""
    sku: str
    name: str
    price_cents: int
    tags: list[str] = field(default_factory=list)

    def display_price(self) -> str:
        """Price formatted as dollars."""
        return f"${self.price_cents / 100:.2f}"

    def _cache_key(self):
        return self.sku


def parse_item(row: dict) -> Item:
    """Build an Item from a CSV row."""
    return Item(row["sku"], row["name"], int(row["price"]))


def unrelated_helper(x):
    return x * 2
'''

CART = '''"""The shopping cart."""
from collections import Counter

from .models import Item, parse_item
from . import pricing

TAX_RATE = 0.08


class Cart:
    """Items a customer intends to buy."""

    def __init__(self) -> None:
        self.items: Counter[str] = Counter()
        self.catalogue: dict[str, Item] = {}

    def add(self, item: Item, qty: int = 1) -> None:
        """Add qty of item."""
        self.catalogue[item.sku] = item
        self.items[item.sku] += qty

    def remove(self, sku: str) -> None:
        del self.items[sku]

    def total_cents(self) -> int:
        total = 0
        for sku, qty in self.items.items():
            item = self.catalogue[sku]
            total += pricing.with_tax(item.price_cents * qty, TAX_RATE)
        return total

    def load(self, rows):
        for row in rows:
            item = parse_item(row)
            self.add(item)
'''

PRICING = '''def with_tax(cents: int, rate: float) -> int:
    """Add tax, rounding half up."""
    return int(cents * (1 + rate) + 0.5)


def discount(cents: int, percent: int) -> int:
    return cents - cents * percent // 100
'''


def shop(tmp_path: Path) -> Path:
    pkg = tmp_path / "shop"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    (pkg / "cart.py").write_text(CART)
    (pkg / "pricing.py").write_text(PRICING)
    return tmp_path


def view(path: Path, text: str | None = None, language_id: str = "python") -> DocumentView:
    return DocumentView(path.as_uri(), path.read_text() if text is None else text, language_id, path)


def at(doc: DocumentView, marker: str) -> int:
    """Offset at the end of the first line that contains marker."""
    i = doc.text.index(marker)
    return doc.text.index("\n", i)


def line_of(doc: DocumentView, marker: str) -> int:
    return doc.text[: doc.text.index(marker)].count("\n")


def test_stable_view_keeps_only_the_indentation_of_the_cursor_line():
    doc = DocumentView("file:///a.py", "def f():\n    return g(1)\nx = 2\n", "python")
    stable, line = stable_view(doc, doc.text.index("g(1)") + 2)
    assert line == 1
    assert stable.text == "def f():\n    \nx = 2\n"


def test_imports_source_lists_imports_not_already_visible(tmp_path):
    doc = view(shop(tmp_path) / "shop" / "cart.py")
    line = line_of(doc, "self.add(item)")
    (snippet,) = imports_source(doc, line, visible=range(line - 5, line + 1))
    assert snippet.text == ("from collections import Counter\nfrom .models import Item, parse_item\n"
                            "from . import pricing")
    assert imports_source(doc, line, visible=range(0, line + 1)) == []


def test_signatures_follow_relative_imports_into_workspace_files(tmp_path):
    root = shop(tmp_path)
    doc = view(root / "shop" / "cart.py")
    line = line_of(doc, "self.add(item)")
    snippets = signatures_source(doc, line, [], workspace_root=root, visible=range(line - 3, line + 2))
    by_origin = {}
    for s in snippets:
        by_origin.setdefault(s.origin, []).append(s.text)
    models = "\n".join(by_origin["shop/models.py"])
    assert 'def parse_item(row: dict) -> Item:\n    """Build an Item from a CSV row."""\n    ...' in models
    # the class comes with its fields and public methods, not its bodies or private helpers
    assert "class Item:" in models and "price_cents: int" in models
    assert "def display_price(self) -> str: ..." in models and "_cache_key" not in models
    assert "return f\"$" not in models and "unrelated_helper" not in models
    # `from . import pricing` then `pricing.with_tax(...)`: the submodule's function
    assert any("def with_tax(cents: int, rate: float) -> int:" in t for t in by_origin["shop/pricing.py"])
    assert all("discount" not in t for t in by_origin["shop/pricing.py"])
    # imported names rank above names of this file
    assert snippets[0].origin != "this file"


def test_signatures_prefer_the_open_unsaved_buffer_over_the_file_on_disk(tmp_path):
    root = shop(tmp_path)
    doc = view(root / "shop" / "cart.py")
    edited = view(root / "shop" / "models.py", MODELS.replace("def parse_item(row: dict)", "def parse_item(row: dict, strict: bool = True)"))
    line = line_of(doc, "self.add(item)")
    texts = [s.text for s in signatures_source(doc, line, [edited], workspace_root=root)]
    assert any("def parse_item(row: dict, strict: bool = True) -> Item:" in t for t in texts)


def test_signatures_from_this_file_only_when_out_of_view(tmp_path):
    root = shop(tmp_path)
    doc = view(root / "shop" / "cart.py")
    line = line_of(doc, "total += pricing")
    snippets = signatures_source(doc, line, [], workspace_root=root, visible=range(line - 2, line + 2))
    assert "TAX_RATE = 0.08" in [s.text for s in snippets if s.origin == "this file"]
    snippets = signatures_source(doc, line, [], workspace_root=root, visible=range(0, line + 2))
    assert all(s.origin != "this file" for s in snippets)


def test_signatures_found_by_name_in_other_open_documents_without_a_workspace():
    util = DocumentView("untitled:util.py", "def slugify(text: str, sep: str = '-') -> str:\n"
                        "    '''Lower-case words joined by sep.'''\n    return sep.join(text.lower().split())\n",
                        "python")
    doc = DocumentView("untitled:main.py", "title = 'Hello World'\nslug = slugify(title)\nprint(slug)\n", "python")
    (s,) = signatures_source(doc, 2, [util, doc], visible=range(0, 3))
    assert s.origin == "util.py"
    assert s.text == "def slugify(text: str, sep: str = '-') -> str:\n    \"\"\"Lower-case words joined by sep.\"\"\"\n    ..."


def test_javascript_relative_import_resolves_to_the_ts_file(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "money.ts").write_text(
        "/** Cents to a display string. */\nexport function formatCents(cents: number, currency = 'USD'): string {\n"
        "  return (cents / 100).toFixed(2) + ' ' + currency;\n}\n")
    main = tmp_path / "src" / "invoice.ts"
    main.write_text("import { formatCents } from './money.js';\n\nexport function line(total: number) {\n"
                    "  const shown = formatCents(total);\n  return shown;\n}\n")
    doc = view(main, language_id="typescript")
    (s,) = [s for s in signatures_source(doc, 4, [], workspace_root=tmp_path) if s.origin == "src/money.ts"]
    assert s.text == ("// Cents to a display string.\n"
                      "export function formatCents(cents: number, currency = 'USD'): string { ... }")


def test_c_include_of_a_local_header(tmp_path):
    (tmp_path / "ring.h").write_text("#include <stddef.h>\n/* Push one byte. */\nint ring_push(struct ring *r, unsigned char b);\n"
                                     "int ring_pop(struct ring *r);\n")
    main = tmp_path / "main.c"
    main.write_text('#include "ring.h"\n\nint main(void) {\n  struct ring r;\n  ring_push(&r, 7);\n  return 0;\n}\n')
    texts = [s.text for s in signatures_source(view(main, language_id="c"), 5, [], workspace_root=tmp_path)]
    assert texts == ["// Push one byte.\nint ring_push(struct ring *r, unsigned char b);"]


def test_go_same_package_files_share_names(tmp_path):
    (tmp_path / "store.go").write_text("package shop\n\n// Lookup finds a product.\nfunc Lookup(sku string) (Product, bool) {\n"
                                       "\treturn Product{}, false\n}\n")
    main = tmp_path / "handler.go"
    main.write_text("package shop\n\nfunc Handle(sku string) string {\n\tp, ok := Lookup(sku)\n\treturn p.Name\n}\n")
    texts = [s.text for s in signatures_source(view(main, language_id="go"), 4, [], workspace_root=tmp_path)]
    assert "// Lookup finds a product.\nfunc Lookup(sku string) (Product, bool) { ... }" in texts


def test_rust_mod_and_crate_paths(tmp_path):
    (tmp_path / "Cargo.toml").write_text("[package]\nname = \"shop\"\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "pricing.rs").write_text("/// Adds tax in basis points.\npub fn with_tax(cents: u64, bp: u64) -> u64 {\n"
                                    "    cents + cents * bp / 10_000\n}\n")
    main = src / "main.rs"
    main.write_text("mod pricing;\nuse crate::pricing::with_tax;\n\nfn main() {\n    let t = with_tax(100, 800);\n"
                    "    println!(\"{t}\");\n}\n")
    texts = [s.text for s in signatures_source(view(main, language_id="rust"), 6, [], workspace_root=tmp_path)]
    assert "// Adds tax in basis points.\npub fn with_tax(cents: u64, bp: u64) -> u64 { ... }" in texts


def test_java_import_and_same_package_class(tmp_path):
    base = tmp_path / "src" / "main" / "java" / "com" / "acme"
    (base / "util").mkdir(parents=True)
    (base / "util" / "Money.java").write_text(
        "package com.acme.util;\n\npublic final class Money {\n  public static String format(long cents) {\n"
        "    return String.valueOf(cents / 100.0);\n  }\n}\n")
    (base / "Line.java").write_text("package com.acme;\n\npublic record Line(String sku, long cents) {}\n")
    main = base / "Invoice.java"
    main.write_text("package com.acme;\n\nimport com.acme.util.Money;\n\npublic class Invoice {\n"
                    "  String show(Line line) {\n    return Money.format(line.cents());\n  }\n}\n")
    snippets = signatures_source(view(main, language_id="java"), 7, [], workspace_root=tmp_path)
    texts = {s.origin: s.text for s in snippets}
    money = texts["src/main/java/com/acme/util/Money.java"]
    assert money.startswith("public final class Money {") and "public static String format(long cents) { ... }" in money
    assert texts["src/main/java/com/acme/Line.java"] == "public record Line(String sku, long cents) { ... }"


def test_workspace_files_outside_the_root_or_too_big_are_not_read(tmp_path):
    root = shop(tmp_path / "ws")
    doc = view(root / "shop" / "cart.py")
    line = line_of(doc, "self.add(item)")
    assert not any(s.origin.endswith("models.py") for s in
                   signatures_source(doc, line, [], workspace_root=root / "elsewhere"))
    small = ContextConfig(max_workspace_file_bytes=100)
    assert not any(s.origin.endswith("models.py") for s in
                   signatures_source(doc, line, [], workspace_root=root, config=small))


def test_siblings_are_the_other_methods_of_the_class(tmp_path):
    doc = view(shop(tmp_path) / "shop" / "cart.py")
    line = line_of(doc, "self.add(item)")
    snippets = siblings_source(doc, line, visible=range(line - 3, line + 2))
    assert {s.title for s in snippets} == {"other members of Cart in this file"}
    texts = [s.text for s in snippets]
    assert texts == ["def __init__(self) -> None: ...", "def add(self, item: Item, qty: int = 1) -> None: ...",
                     "def remove(self, sku: str) -> None: ...", "def total_cents(self) -> int: ..."]
    # the nearest sibling ranks first; those in view are left out
    assert max(snippets, key=lambda s: s.rank).text.startswith("def total_cents")
    visible = siblings_source(doc, line, visible=range(line - 12, line + 2))
    assert [s.text for s in visible] == ["def __init__(self) -> None: ...", "def add(self, item: Item, qty: int = 1) -> None: ..."]


def test_siblings_when_typing_a_new_method_at_class_level():
    text = "class Repo:\n    def get(self, key):\n        return self.d[key]\n\n    def put(self, key, value):\n" \
           "        self.d[key] = value\n\n    \n"
    doc = DocumentView("file:///r.py", text, "python")
    texts = [s.text for s in siblings_source(doc, 7)]
    assert texts == ["def get(self, key): ...", "def put(self, key, value): ..."]


def test_siblings_in_go_are_the_receivers_methods():
    text = "package kv\n\nfunc (s *Store) Get(k string) string {\n\treturn s.m[k]\n}\n\n" \
           "func (s *Store) Put(k, v string) {\n\ts.m[k] = v\n}\n\nfunc Other() {}\n"
    doc = DocumentView("file:///kv.go", text, "go")
    assert [s.text for s in siblings_source(doc, 7)] == ["func (s *Store) Get(k string) string { ... }"]


def test_similar_finds_the_window_that_shares_identifiers():
    other = DocumentView("file:///ws/report.py", "\n".join(
        ["import csv", "", "def unrelated():", "    return 42", ""] * 4 +
        ["def write_report(rows, path):", "    with open(path, 'w', newline='') as fh:",
         "        writer = csv.DictWriter(fh, fieldnames=rows[0].keys())", "        writer.writeheader()",
         "        writer.writerows(rows)"]) + "\n", "python", Path("/ws/report.py"))
    noise = DocumentView("file:///ws/math.py", "def area(r):\n    return 3.14 * r * r\n", "python", Path("/ws/math.py"))
    doc = DocumentView("file:///ws/export.py", "import csv\n\ndef export(rows, path):\n"
                       "    with open(path, 'w', newline='') as fh:\n        writer = csv.DictWriter(fh, fieldnames=rows[0].keys())\n"
                       "        \n", "python", Path("/ws/export.py"))
    (s,) = similar_source(doc, 5, [other, noise, doc], workspace_root=Path("/ws"))
    assert s.origin == "report.py" and "writer.writerows(rows)" in s.text
    assert s.rank > 0.3


def test_env_files_contribute_nothing(tmp_path):
    env = DocumentView("file:///ws/.env", "DATABASE_URL=postgres://app:pw@db/app\ndef connect(url): pass\n",
                       "dotenv", Path("/ws/.env"))
    local = DocumentView("file:///ws/.env.local", "def connect(url):\n    pass\n", "dotenv", Path("/ws/.env.local"))
    doc = DocumentView("file:///ws/app.py", "DATABASE_URL = 1\nconn = connect(DATABASE_URL)\n\n", "python")
    assert similar_source(doc, 2, [env, local], config=ContextConfig(similar_min_score=0.0)) == []
    assert signatures_source(doc, 2, [env, local], visible=range(0, 3)) == []


def test_local_imports_not_yet_used_still_bring_their_signatures(tmp_path):
    root = shop(tmp_path)
    text = "from .models import Item, parse_item\nfrom .pricing import discount\n\n\ndef cheap(row):\n    item = \n"
    path = root / "shop" / "sale.py"
    path.write_text(text)
    doc = view(path)
    snippets = signatures_source(doc, 5, [], workspace_root=root, visible=range(0, 7))
    texts = {s.text.split("\n")[0]: s.rank for s in snippets}
    # the cursor's line is not read (it changes with every keystroke), yet what it may call is there
    assert "def parse_item(row: dict) -> Item:" in texts and "def discount(cents: int, percent: int) -> int:" in texts
    assert "@dataclass" in texts
    # a name in use nearby ranks above one only imported
    doc2 = view(path, text.replace("    item = \n", "    item = parse_item(row)\n    \n"))
    ranks = {s.text.split("\n")[0]: s.rank for s in signatures_source(doc2, 6, [], workspace_root=root, visible=range(0, 8))}
    assert ranks["def parse_item(row: dict) -> Item:"] > ranks["def discount(cents: int, percent: int) -> int:"]
