"""build_context end to end: headers in the document's language, and no input that makes it fail."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from keystroke.server.context import ContextConfig, DocumentView, approx_tokens, build_context


def test_go_header_is_written_in_go_comments(tmp_path):
    (tmp_path / "store.go").write_text("package shop\n\n// Lookup finds a product by SKU.\n"
                                       "func Lookup(sku string) (Product, bool) {\n\treturn Product{}, false\n}\n")
    main = tmp_path / "handler.go"
    text = "package shop\n\nimport \"fmt\"\n\nfunc Handle(sku string) string {\n\tp, ok := Lookup(sku)\n\t\n}\n"
    main.write_text(text)
    doc = DocumentView(main.as_uri(), text, "go", main)
    cursor = text.index("\t\n}") + 1
    parts = build_context(doc, cursor, [], workspace_root=tmp_path)
    assert parts.header == ("// from store.go:\n// // Lookup finds a product by SKU.\n"
                            "// func Lookup(sku string) (Product, bool) { ... }\n// file: handler.go\n")
    assert parts.prefix == text[:cursor] and parts.suffix == text[cursor:]


def test_header_for_an_unknown_language_uses_the_indentation_fallback():
    lib = DocumentView("file:///ws/money.rb", "module Money\n  def self.format(cents, currency: 'USD')\n"
                       "    format('%.2f %s', cents / 100.0, currency)\n  end\nend\n", "ruby", Path("/ws/money.rb"))
    text = "require_relative 'money'\n\nclass Invoice\n  def show(total)\n    Money.format(total)\n    \n  end\nend\n"
    doc = DocumentView("file:///ws/invoice.rb", text, "ruby", Path("/ws/invoice.rb"))
    parts = build_context(doc, text.index("    \n  end") + 4, [lib], workspace_root=Path("/ws"))
    assert parts.header == ("# from money.rb:\n# module Money\n#     def self.format(cents, currency: 'USD') ...\n"
                            "# file: invoice.rb\n")


def test_odd_inputs_do_not_raise(tmp_path):
    cases = [
        DocumentView("file:///x.bin", "\x00\x01\x02 binary \ufffd" * 50, "", None),
        DocumentView("untitled:1", "", "python", None),
        DocumentView("file:///long.py", "x = [" + "1, " * 20000 + "]", "python", Path("/nope/long.py")),
        DocumentView("file:///u.py", "def f(ü, 名前):\n    return 名前 🎉\n" * 3, "python", tmp_path / "u.py"),
        DocumentView("file:///b.c", "int main( {{{ ]]] \n#include <\n", "c", tmp_path / "b.c"),
    ]
    for doc in cases:
        for offset in (-5, 0, len(doc.text) // 2, len(doc.text), len(doc.text) + 10):
            parts = build_context(doc, offset, cases, workspace_root=tmp_path / "missing",
                                  config=ContextConfig(budget_tokens=300))
            assert approx_tokens(parts.prefix) <= 180 and approx_tokens(parts.header) <= 75


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("def class (self, x): return\n    import os # '\"{}[]=.:_abc")), max_size=400),
       st.integers(min_value=0, max_value=400), st.sampled_from(["python", "javascript", "go", "rust", "c", "plaintext"]))
def test_random_text_never_breaks_build_context(text, offset, language):
    other = DocumentView("file:///o", text[::-1], language, None)
    doc = DocumentView("file:///d", text, language, None)
    parts = build_context(doc, offset, [other], config=ContextConfig(budget_tokens=200))
    offset = min(offset, len(text))
    assert text[:offset].endswith(parts.prefix) and text[offset:].startswith(parts.suffix)
