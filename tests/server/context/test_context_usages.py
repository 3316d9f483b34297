"""The usages note: other calls of what the cursor is calling, right above the cursor's line."""
from __future__ import annotations

from pathlib import Path

import pytest

from keystroke.server.context import ContextConfig, DocumentView, build_context, usages_source
from keystroke.server.context.usages import cursor_targets

MODELS = '''"""Orders and how they are stored."""


def load_orders(path, strict=False):
    """Read orders from a JSON lines file."""
    return []


class Ledger:
    def __init__(self, orders):
        self.orders = orders
'''

REPORT = '''from .models import Ledger, load_orders


def monthly(month_dir):
    # load_orders(commented_out) is not a use
    orders = load_orders(month_dir / "orders.jsonl", strict=True)
    return Ledger(orders)


def yearly(year_dir):
    totals = [sum(o.cents for o in load_orders(p)) for p in year_dir.iterdir()]
    return totals
'''

SERVICE = '''from .models import load_orders
import logging

log = logging.getLogger(__name__)


def refresh(month_dir):
    log.info("refreshing %s", month_dir)
    orders = load_orders('''


def workspace(tmp_path: Path) -> tuple[Path, DocumentView]:
    pkg = tmp_path / "shop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    (pkg / "report.py").write_text(REPORT)
    service = pkg / "service.py"
    service.write_text(SERVICE.replace("load_orders(", "load_orders(on_disk_only)"))  # the editor's text differs
    return tmp_path, DocumentView(service.as_uri(), SERVICE + "\n", "python", service)


@pytest.mark.parametrize("line, expected", [
    ("    x = load_orders(", [("load_orders", None, "call", "load_orders(")]),
    ("    x = shop.models.load_orders(a, ", [("shop", "models", "call", "shop.models.load_orders(")]),
    ("    f(a, g(b, ", [("g", None, "call", "g(")]),
    ("    return models.", [("models", None, "member", "models.")]),
    ("    return models.lo", [("models", None, "member", "models.")]),
    ("    x = load_orders(self.pa", [("self", None, "member", "self."), ("load_orders", None, "call", "load_orders(")]),
    ('    print("(", load_orders(p', [("load_orders", None, "call", "load_orders(")]),
    ("    f(a)", []),
    ("    x = [1, (2", []),
    ("    x = load_orders([a, {b: ", [("load_orders", None, "call", "load_orders(")]),
    ('    s = "f(', []),
])
def test_cursor_targets_read_the_member_and_the_call_the_cursor_is_in(line, expected):
    targets = cursor_targets(line)
    assert [t[:4] for t in targets] == expected
    for t in targets:
        assert line[:t.end].replace(" ", "").endswith(t.key)


def test_usages_are_real_calls_from_other_files_most_alike_first(tmp_path):
    root, doc = workspace(tmp_path)
    note = usages_source(doc, len(SERVICE), [], workspace_root=root, config=ContextConfig(usages_lines=2))
    assert note is not None and note.source == "usages"
    lines = note.text.split("\n")
    # `monthly(month_dir)` reads more like `refresh(month_dir)` than the list comprehension does
    assert lines == ['orders = load_orders(month_dir / "orders.jsonl", strict=True)',
                     "totals = [sum(o.cents for o in load_orders(p)) for p in year_dir.iterdir()]"]
    assert note.origin == "shop/report.py"


def test_usages_skip_definitions_comments_strings_and_the_files_copy_on_disk(tmp_path):
    root, doc = workspace(tmp_path)
    text = usages_source(doc, len(SERVICE), [], workspace_root=root, config=ContextConfig(usages_lines=9)).text
    assert "def load_orders" not in text and "commented_out" not in text and "on_disk_only" not in text
    extra = DocumentView("untitled:scratch", 'msg = "call load_orders(like_this)"\n', "python")
    text = usages_source(doc, len(SERVICE), [extra], workspace_root=root, config=ContextConfig(usages_lines=9)).text
    assert "like_this" not in text


def test_no_note_when_the_prompt_already_shows_a_call(tmp_path):
    root, doc = workspace(tmp_path)
    shown = SERVICE.replace('    log.info("refreshing %s", month_dir)\n',
                            '    log.info("refreshing %s", month_dir)\n    old = load_orders(month_dir)\n')
    doc = DocumentView(doc.uri, shown, "python", doc.path)
    lines = shown.count("\n")
    assert usages_source(doc, len(shown), [], workspace_root=root, visible=range(0, lines + 1)) is None
    # the same call outside the prompt's lines does not count as shown
    note = usages_source(doc, len(shown), [], workspace_root=root, visible=range(lines, lines + 1))
    assert note is not None and note.text == "old = load_orders(month_dir)"


def test_usages_need_a_name_defined_in_the_project(tmp_path):
    root, doc = workspace(tmp_path)
    text = SERVICE.replace("orders = load_orders(", "orders = sorted(")
    doc = DocumentView(doc.uri, text, "python", doc.path)
    assert usages_source(doc, len(text), [], workspace_root=root) is None
    text = SERVICE.replace("orders = load_orders(", "orders = load_orders")  # not in a call
    doc = DocumentView(doc.uri, text, "python", doc.path)
    assert usages_source(doc, len(text), [], workspace_root=root) is None


def test_usages_from_open_documents_without_a_workspace():
    doc = DocumentView("file:///proj/shop/service.py", SERVICE, "python")
    models = DocumentView("file:///proj/shop/models.py", MODELS, "python")
    report = DocumentView("untitled:report", REPORT, "python")
    note = usages_source(doc, len(SERVICE), [models, report])
    assert note is not None and 'load_orders(month_dir / "orders.jsonl", strict=True)' in note.text


def test_note_goes_above_the_cursor_line_and_holds_still_while_arguments_are_typed(tmp_path):
    root, doc = workspace(tmp_path)
    config = ContextConfig(budget_tokens=1024)
    seen = []
    for typed in ["", "m", "month", "month_dir, ", "month_dir, strict=Tr"]:
        text = SERVICE + typed + "\n"
        d = DocumentView(doc.uri, text, "python", doc.path)
        offset = len(SERVICE) + len(typed)
        parts = build_context(d, offset, [], config=config, workspace_root=root)
        assert parts.note.startswith("    # orders = load_orders(month_dir")
        # the note sits between the document's lines and the cursor's line, which it does not change
        assert parts.prefix.endswith(parts.note + "    orders = load_orders(" + typed)
        assert text[:offset].endswith(parts.document_prefix())
        by_source = {e["source"]: e for e in parts.provenance}
        assert by_source["usages"]["origins"] == ["shop/report.py"] and by_source["usages"]["tokens"] > 0
        seen.append((parts.header, parts.note))
    assert len(set(seen)) == 1  # header and note: the same bytes for every keystroke


def test_note_is_redacted_and_fits_its_budget(tmp_path):
    root, doc = workspace(tmp_path)
    key = "AKIA" + "Q3EGRT7ZPLXV5N2K"
    (root / "shop" / "report.py").write_text(REPORT + '\n\ndef refresh_all(month_dir):\n'
                                             '    log.info("refreshing %s", month_dir)\n'
                                             f'    orders = load_orders(month_dir, token="{key}")\n')
    for budget in (1024, 4096):
        parts = build_context(doc, len(SERVICE), [], config=ContextConfig(budget_tokens=budget), workspace_root=root)
        assert "load_orders(month_dir, token=" in parts.note  # the line is there, its secret is not
        assert key not in parts.prefix and key not in parts.header
    tiny = ContextConfig(budget_tokens=1024, usages_tokens=12)
    parts = build_context(doc, len(SERVICE), [], config=tiny, workspace_root=root,
                          count_tokens=lambda s: (len(s) + 3) // 4)
    assert (len(parts.note) + 3) // 4 <= 12
    off = build_context(doc, len(SERVICE), [], config=ContextConfig(usages=False), workspace_root=root)
    assert off.note == "" and off.prefix == off.document_prefix()
