"""Code actions: what is offered where, what the engine is asked, and edits that parse.

The "completions" are written here as plausible model output (for the
standard-library cases: the function's real body, as a perfect model would
write it), so every expected document is derived, not guessed.
"""
from __future__ import annotations

import ast
import fnmatch
import inspect
import difflib
import shlex
import string
import textwrap

import pytest

from keystroke.engine.errors import PositionError
from keystroke.server.action_edits import action_request, apply_action
from keystroke.server.actions import ActionSpec, find_actions

MODULE = '''\
"""Small helpers for an inventory service."""
from __future__ import annotations

import json
from typing import overload


def load_items(path: str) -> list[dict]:
    """Read the items stored as JSON at `path`."""
    pass


def total_price(items):
    ...


def restock(item, amount):
    raise NotImplementedError("restock is not ready")


def describe(item) -> str:
    """One line describing an item, for logs."""


def discount(item):
    # TODO: apply the seasonal rules
    return None


def format_price(cents: int) -> str:
    """Format an amount of cents as dollars."""
    return f"${cents / 100:.2f}"


class Inventory:
    def __init__(self):
        self.items = {}

    def count(self):
        return len(self.items)


@overload
def find(key: int) -> dict: ...
@overload
def find(key: str) -> dict: ...
def find(key):
    return {}
'''


def at(text: str, needle: str, after: bool = False) -> int:
    i = text.index(needle)
    return i + len(needle) if after else i


def kinds(text: str, offset: int, language_id: str = "python") -> list[str]:
    return [a.kind for a in find_actions(text, language_id, offset, offset)]


def apply(text: str, spec: ActionSpec, completion: str) -> str:
    edit = apply_action(spec, text, completion)
    start, end, new_text = edit.start, edit.end, edit.new_text
    return text[:start] + new_text + text[end:]


def spec_of(text: str, offset: int, kind: str) -> ActionSpec:
    found = [a for a in find_actions(text, "python", offset, offset) if a.kind == kind]
    assert found, f"no {kind} action at {offset}"
    return found[0]


# ------------------------------------------------------------------ what is offered

@pytest.mark.parametrize("needle", [
    "    pass", "    ...", "    raise NotImplementedError", '"""One line describing', "    # TODO: apply",
])
def test_implement_is_offered_for_each_kind_of_stub(needle):
    assert "implement" in kinds(MODULE, at(MODULE, needle))


@pytest.mark.parametrize("needle", ["return f\"$", "return len(self.items)", "self.items = {}"])
def test_implement_is_not_offered_for_real_bodies(needle):
    assert "implement" not in kinds(MODULE, at(MODULE, needle))


def test_implement_is_not_offered_for_overloads():
    first = at(MODULE, "def find(key: int)")
    assert "implement" not in kinds(MODULE, first)


def test_docstring_is_offered_only_where_missing():
    assert "docstring" in kinds(MODULE, at(MODULE, "    ..."))
    assert "docstring" not in kinds(MODULE, at(MODULE, "    pass"))
    assert "docstring" not in kinds(MODULE, at(MODULE, "return f\"$"))


def test_docstring_targets_the_innermost_scope():
    in_method = find_actions(MODULE, "python", at(MODULE, "len(self.items)"), at(MODULE, "len(self.items)"))
    assert [a.name for a in in_method if a.kind == "docstring"] == ["count"]
    on_class = find_actions(MODULE, "python", at(MODULE, "class Inventory"), at(MODULE, "class Inventory"))
    assert [a.name for a in on_class if a.kind == "docstring"] == ["Inventory"]


def test_actions_are_offered_from_the_line_above_a_def():
    blank_above = at(MODULE, "def total_price") - 1
    assert kinds(MODULE, blank_above) == ["implement", "docstring"]


def test_other_languages_get_no_python_actions():
    assert kinds(MODULE, at(MODULE, "    pass"), "javascript") == []


def test_complete_block_needs_an_opener_with_an_empty_body():
    doc = "def total(items):\n    result = 0\n    for item in items:\n    return result\n"
    assert kinds(doc, at(doc, "in items:", after=True)) == ["docstring", "complete_block"]
    assert "complete_block" not in kinds(doc, at(doc, "result = 0", after=True))
    assert "complete_block" not in kinds(doc, at(doc, "def total(items):", after=True))


def test_bad_offsets_give_a_clear_error():
    with pytest.raises(PositionError):
        find_actions(MODULE, "python", -1, 3)
    with pytest.raises(PositionError):
        find_actions(MODULE, "python", 0, len(MODULE) + 1)
    spec = spec_of(MODULE, at(MODULE, "    pass"), "implement")
    with pytest.raises(PositionError):
        action_request(spec, "x = 1\n")


def test_spec_survives_a_round_trip_through_data():
    spec = spec_of(MODULE, at(MODULE, "    pass"), "implement")
    assert ActionSpec.from_data(spec.to_data()) == spec
    for bad in (None, [], {"kind": "implement"}, {**spec.to_data(), "kind": "explode"},
                {**spec.to_data(), "start": "3"}, {**spec.to_data(), "indent": "x"},
                {**spec.to_data(), "start": -5}, {**spec.to_data(), "start": spec.end + 1}):
        with pytest.raises(ValueError):
            ActionSpec.from_data(bad)


# ------------------------------------------------------------------ requests

def test_implement_request_ends_after_signature_docstring_and_indentation():
    spec = spec_of(MODULE, at(MODULE, "    pass"), "implement")
    prefix, suffix, stop = action_request(spec, MODULE)
    assert prefix == MODULE[: at(MODULE, '`path`."""', after=True)] + "\n    "
    assert suffix == MODULE[at(MODULE, "    pass", after=True):]
    assert stop.mode == "block" and 64 <= stop.max_tokens <= 512


def test_docstring_request_opens_the_quotes_and_stops_at_the_closing_ones():
    spec = spec_of(MODULE, at(MODULE, "    ..."), "docstring")
    prefix, suffix, stop = action_request(spec, MODULE)
    assert prefix.endswith('def total_price(items):\n    """')
    assert suffix.startswith("\n    ...\n")
    assert '"""' in stop.stop_strings


# ------------------------------------------------------------------ edits on the module

def test_implement_replaces_each_kind_of_stub():
    body = "with open(path) as f:\n        return json.load(f)\n\n\ndef unrelated():\n    pass\n"
    for needle in ("    pass", "    ...", "    raise NotImplementedError", '"""One line describing',
                   "    # TODO: apply"):
        spec = spec_of(MODULE, at(MODULE, needle), "implement")
        edit = apply_action(spec, MODULE, body)
        new = MODULE[: edit.start] + edit.new_text + MODULE[edit.end:]
        tree = ast.parse(new)
        func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == spec.name)
        statements = func.body[1:] if ast.get_docstring(func) else func.body
        assert [type(s) for s in statements] == [ast.With], needle  # the stub is gone, the body is in
        assert "unrelated" not in new and new.count("TODO: apply") == ("TODO" not in needle)
        assert edit.complete and edit.note == "" and edit.title == spec.title


def test_implement_keeps_the_docstring_and_the_rest_of_the_file():
    spec = spec_of(MODULE, at(MODULE, "    pass"), "implement")
    new = apply(MODULE, spec, "with open(path) as f:\n        return json.load(f)")
    expected = MODULE.replace("    pass\n", "    with open(path) as f:\n        return json.load(f)\n", 1)
    assert new == expected


def test_docstring_is_inserted_with_closing_quotes():
    spec = spec_of(MODULE, at(MODULE, "    ..."), "docstring")
    new = apply(MODULE, spec, 'Sum the prices of `items`.\n\n    Prices are in cents.\n    ')
    func = next(n for n in ast.parse(new).body if getattr(n, "name", "") == "total_price")
    assert ast.get_docstring(func) == "Sum the prices of `items`.\n\nPrices are in cents."
    assert isinstance(func.body[1].value, ast.Constant) and func.body[1].value.value is Ellipsis


def test_docstring_ending_in_a_quote_still_parses():
    spec = spec_of(MODULE, at(MODULE, "    ..."), "docstring")
    new = apply(MODULE, spec, 'Sum the prices of "items"')
    func = next(n for n in ast.parse(new).body if getattr(n, "name", "") == "total_price")
    assert ast.get_docstring(func) == 'Sum the prices of "items"'


def test_docstring_stops_at_closing_quotes_in_the_completion():
    spec = spec_of(MODULE, at(MODULE, "    ..."), "docstring")
    new = apply(MODULE, spec, 'Sum the prices."""\n    return sum(items)\n')
    func = next(n for n in ast.parse(new).body if getattr(n, "name", "") == "total_price")
    assert ast.get_docstring(func) == "Sum the prices." and len(func.body) == 2


def test_empty_docstring_completion_changes_nothing():
    spec = spec_of(MODULE, at(MODULE, "    ..."), "docstring")
    edit = apply_action(spec, MODULE, '   \n  """')
    assert (edit.new_text, edit.start == edit.end, edit.complete) == ("", True, False)


def test_class_docstring():
    spec = spec_of(MODULE, at(MODULE, "class Inventory"), "docstring")
    new = apply(MODULE, spec, "Items in stock, by name.")
    cls = next(n for n in ast.parse(new).body if isinstance(n, ast.ClassDef))
    assert ast.get_docstring(cls) == "Items in stock, by name."


# ------------------------------------------------------------------ completions that do not parse

def test_completion_cut_to_the_lines_that_parse():
    spec = spec_of(MODULE, at(MODULE, "    ..."), "implement")
    completion = "total = 0\n    for item in items:\n        total += item['price'\n    return total"
    edit = apply_action(spec, MODULE, completion)
    new = MODULE[: edit.start] + edit.new_text + MODULE[edit.end:]
    ast.parse(new)
    assert edit.new_text == "\n    total = 0"
    assert not edit.complete and "1 of 4" in edit.note and edit.note in edit.title


def test_completion_that_never_parses_is_kept_as_a_comment_above_the_stub():
    spec = spec_of(MODULE, at(MODULE, "    raise NotImplementedError"), "implement")
    edit = apply_action(spec, MODULE, "return item.stock +")
    new = MODULE[: edit.start] + edit.new_text + MODULE[edit.end:]
    ast.parse(new)
    assert "    # return item.stock +\n    raise NotImplementedError" in new
    assert not edit.complete


def test_empty_completion_changes_nothing():
    spec = spec_of(MODULE, at(MODULE, "    pass"), "implement")
    edit = apply_action(spec, MODULE, "\n\n   ")
    assert edit.new_text == "" and edit.start == edit.end and not edit.complete


# ------------------------------------------------------------------ complete block

def test_complete_block_at_the_end_of_an_opener():
    doc = "def total(items):\n    result = 0\n    for item in items:\n    return result\n"
    assert not _parses(doc)
    offset = at(doc, "in items:", after=True)
    spec = spec_of(doc, offset, "complete_block")
    prefix, suffix, stop = action_request(spec, doc)
    assert prefix == doc[:offset] + "\n        " and stop.mode == "block"
    new = apply(doc, spec, "result += item.price\n    return result\n")
    assert new == "def total(items):\n    result = 0\n    for item in items:\n        result += item.price\n    return result\n"


def test_complete_block_on_a_blank_line_of_an_empty_body():
    doc = "class Cart:\n    def add(self, item):\n        \n\n    def clear(self):\n        self.items = []\n"
    offset = at(doc, "item):\n        ", after=True)
    spec = spec_of(doc, offset, "complete_block")
    new = apply(doc, spec, "self.items.append(item)\n\n    def remove(self, item):\n        pass")
    assert new == doc.replace("item):\n        \n", "item):\n        self.items.append(item)\n")
    ast.parse(new)


def test_complete_block_in_javascript():
    doc = "function total(items) {\n    let sum = 0;\n    for (const item of items) {\n    }\n    return sum;\n}\n"
    offset = at(doc, "of items) {", after=True)
    spec = [a for a in find_actions(doc, "javascript", offset, offset) if a.kind == "complete_block"][0]
    new = apply(doc, spec, "sum += item.price;\n    }\n    return sum;")
    assert new == doc.replace("of items) {\n", "of items) {\n        sum += item.price;\n")


def test_actions_in_a_document_with_an_error_elsewhere():
    broken = MODULE.replace('return f"${cents / 100:.2f}"', "return format(cents / 100,")
    assert not _parses(broken)
    spec = spec_of(broken, at(broken, "    pass"), "implement")
    edit = apply_action(spec, broken, "with open(path) as f:\n        return json.load(f)")
    assert edit.complete and edit.new_text == "\n    with open(path) as f:\n        return json.load(f)"
    bad = apply_action(spec, broken, "with open(path) as f:\n        return json.load(f")
    assert bad.new_text.startswith("\n    # keystroke:") and not bad.complete


# ------------------------------------------------------------------ offsets with non-ASCII text

def test_offsets_count_characters_not_bytes():
    doc = 'def greet(name="wörld"):  # 挨拶する\n    """Say hello to 世界."""\n    ...\n\n\ndef f(x="é"): ...\n'
    spec = spec_of(doc, at(doc, "    ..."), "implement")
    assert doc[: spec.start].endswith('世界."""') and doc[spec.start: spec.end] == "\n    ..."
    assert apply(doc, spec, "return f'hi {name}'") == doc.replace("    ...\n", "    return f'hi {name}'\n", 1)
    one_liner = spec_of(doc, at(doc, 'def f(x="é")'), "implement")
    assert doc[one_liner.start: one_liner.end] == " ..."
    new = apply(doc, one_liner, "return x * 2")
    assert new.endswith('def f(x="é"):\n    return x * 2\n')
    ast.parse(new)


# ------------------------------------------------------------------ standard library round trips

STDLIB = [textwrap.dedent, shlex.quote, fnmatch.translate, difflib.get_close_matches, string.capwords,
          textwrap.TextWrapper._split]


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


def _stubbed(func, stub: str) -> tuple[str, str, str]:
    """(original source, stubbed source, body as a model writes it after the indentation)."""
    source = textwrap.dedent(inspect.getsource(func))
    node = ast.parse(source).body[0]
    lines = source.splitlines(keepends=True)
    if ast.get_docstring(node) is not None:
        start = node.body[0].end_lineno  # 0-based index of the line after the docstring
    else:
        start = node.body[0].lineno - 1
        while lines[start - 1].lstrip().startswith("#"):
            start -= 1
    while not lines[start].strip():  # the edit starts the body right after the docstring
        del lines[start]
    head, body = "".join(lines[:start]), "".join(lines[start:])
    indent = body[: len(body) - len(body.lstrip(" "))]
    stub_lines = "".join(indent + ln + "\n" for ln in stub.split("\n")) if stub else ""
    return head + body, head + stub_lines, body.lstrip(" ")


@pytest.mark.parametrize("func", STDLIB, ids=lambda f: f.__qualname__)
@pytest.mark.parametrize("stub", ["pass", "...", "raise NotImplementedError()", "# TODO\nreturn None", ""])
def test_stdlib_function_restored_from_its_stub(func, stub):
    source, stubbed, body = _stubbed(func, stub)
    if stub == "" and '"""' not in stubbed:
        pytest.skip("no docstring to form a body")
    module = "import os\n\n\n" + stubbed + "\n\ndef after():\n    return 1\n"
    offset = module.index("def " + func.__name__)
    spec = spec_of(module, offset, "implement")
    prefix, suffix, _ = action_request(spec, module)
    assert prefix.startswith("import os\n\n\n" + stubbed.split(":\n", 1)[0])
    # a model that writes the real body, then runs on into another function
    new = apply(module, spec, body + "\n\ndef _more():\n    pass\n")
    assert new == "import os\n\n\n" + source + "\n\ndef after():\n    return 1\n"


@pytest.mark.parametrize("func", [f for f in STDLIB if f.__doc__], ids=lambda f: f.__qualname__)
def test_stdlib_docstring_written_back(func):
    source = textwrap.dedent(inspect.getsource(func))
    node = ast.parse(source).body[0]
    doc_node = node.body[0]
    lines = source.splitlines(keepends=True)
    undocumented = "".join(lines[: doc_node.lineno - 1] + lines[doc_node.end_lineno:])
    spec = spec_of(undocumented, undocumented.index("def "), "docstring")
    literal = ast.get_source_segment(source, doc_node)
    quote = literal[:3] if literal[:3] in ('"""', "'''") else literal[0]
    completion = literal[len(quote): -len(quote)] + '"""\n'
    new = apply(undocumented, spec, completion)
    assert ast.get_docstring(ast.parse(new).body[0]) == ast.get_docstring(node)


def test_comments_after_the_stub_belong_to_it():
    doc = "def check(order):\n    pass\n    # TODO: validate totals\n\n\nRATE = 0.2\n"
    spec = spec_of(doc, at(doc, "pass"), "implement")
    new = apply(doc, spec, "return order.total >= 0")
    assert new == "def check(order):\n    return order.total >= 0\n\n\nRATE = 0.2\n"


def test_inline_body_after_a_non_ascii_docstring():
    doc = 'def label(s="ü"): "Etikett für s."; ...\n'
    spec = spec_of(doc, 0, "implement")
    # the docstring moves to its own line, ahead of the model's text
    assert doc[spec.start: spec.end] == ' "Etikett für s."; ...'
    assert action_request(spec, doc)[0] == 'def label(s="ü"):\n    "Etikett für s."\n    '
    new = apply(doc, spec, "return s.upper()")
    assert new == 'def label(s="ü"):\n    "Etikett für s."\n    return s.upper()\n'
    fallback = apply(doc, spec, "return s.upper(")
    assert fallback.endswith('    "Etikett für s."\n    # keystroke: suggestion kept as a comment, it did not parse\n'
                             '    # return s.upper(\n    pass\n')
    ast.parse(new)
