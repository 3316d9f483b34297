"""The cursor's syntactic situation, read from text alone."""
from __future__ import annotations

import inspect
import textwrap

import pytest

from keystroke.server.syntax import (SCAN_WINDOW, analyze, choose_mode, indent_unit, opens_block,
                                     only_docstring_since_opener, scan, scan_tail)

MODULE = '''\
import json


def load(path):
    """Read settings from a JSON file."""
    with open(path) as f:
        data = json.load(f)
    return data


class Settings:
    def __init__(self, values):
        self.values = dict(values)
'''


def split(text: str, marker: str = "|") -> tuple[str, str]:
    i = text.index(marker)
    return text[:i], text[i + 1:]


# ------------------------------------------------------------------ scanner

def test_scan_skips_strings_and_comments():
    st = scan('x = f("(", \'[\')  # ) ] }\ny = [1, "]"', "python")
    assert st.brackets == ("[",)
    assert st.extra_closers == 0 and not st.in_string and not st.in_comment


def test_scan_reports_open_string_comment_and_triple_quotes():
    assert scan('x = "abc', "python").string == '"'
    assert scan('def f():\n    """Doc\n    more', "python").string == '"""'
    assert scan("x = 1  # note", "python").in_comment
    assert scan("int x; /* open\n comment", "c").comment == "*/"
    assert not scan("int x; /* closed */ y", "c").in_comment


def test_scan_counts_damage():
    st = scan("f(a))]", "python")
    assert st.extra_closers == 2 and st.brackets == ()
    assert scan("f([a)", "python").skipped_openers == 1
    assert scan('x = "abc\ny = 1', "python").broken_strings == 1


def test_outer_closers_are_those_closing_earlier_text():
    head = scan("print(foo(", "python")
    st = scan("x, g(y))))", "python", head)
    # g(y) closes its own paren at 6; 7 and 8 close foo( and print(; 9 is stray
    assert st.outer_closers == (7, 8, 9)
    assert st.extra_closers == 1


def test_rust_lifetimes_do_not_open_strings():
    st = scan("fn f<'a>(x: &'a str) -> char { let c = '{'; ", "rust")
    assert st.brackets == ("{",) and not st.in_string


def test_scan_resumes_where_it_stopped():
    """Scanning in pieces (at line ends) gives the state of one scan of the whole."""
    source = inspect.getsource(textwrap) + "\n/* not python */\n"
    lines = source.splitlines(keepends=True)
    whole = scan(source, "python")
    for cut in range(0, len(lines), max(1, len(lines) // 25)):
        head = scan("".join(lines[:cut]), "python")
        both = scan("".join(lines[cut:]), "python", head)
        assert (both.brackets, both.string, both.comment, both.extra_closers, both.last_code) == (
            whole.brackets, whole.string, whole.comment, whole.extra_closers, whole.last_code), cut


def test_scan_tail_agrees_with_a_full_scan_on_long_files():
    import argparse

    source = inspect.getsource(argparse)
    assert len(source) > 2 * SCAN_WINDOW
    lines = source.splitlines(keepends=True)
    for cut in range(len(lines) // 2, len(lines), len(lines) // 40):
        text = "".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2]
        full, tail = scan(text, "python"), scan_tail(text, "python")
        assert (tail.brackets, tail.string, tail.comment, tail.last_code) == (
            full.brackets, full.string, full.comment, full.last_code), cut


def test_opens_block_and_docstring_body():
    assert opens_block("def f(x):  # comment\n", "python")
    assert not opens_block('d = {"a":', "python")
    assert not opens_block("x = 1", "python")
    assert opens_block("if (x) {", "javascript")
    assert not opens_block("if (x) { y(); }", "javascript")
    assert only_docstring_since_opener('def f():\n    """Doc."""\n', "python")
    assert not only_docstring_since_opener('x = 1\n"""Doc."""\n', "python")


def test_indent_unit():
    assert indent_unit(MODULE) == "    "
    assert indent_unit("if x:\n  y = 1\n  if z:\n    w = 2\n") == "  "
    assert indent_unit("if x:\n\ty = 1\n") == "\t"
    assert indent_unit("x = 1\n") == "    "


# ------------------------------------------------------------------ situation

def test_analyze_reports_the_situation():
    ctx = analyze(*split('x = foo("ab|c", 1)\n'), "python")
    assert ctx.in_string and ctx.code_after_cursor and ctx.brackets == ("(",)
    ctx = analyze(*split("x = 1  # see|\n"), "python")
    assert ctx.in_comment
    ctx = analyze(*split("def f(a,\n      |\n"), "python")
    assert ctx.in_bracket and ctx.blank_line and not ctx.after_block_opener
    ctx = analyze(*split("def f():\n    x = 1\n    |\n    return x\n"), "python")
    assert ctx.blank_line and ctx.in_indented_body and not ctx.in_empty_body


@pytest.mark.parametrize("doc, language, mode", [
    # blank line right after an opener: block
    ("def area(r):\n    |\n", "python", "block"),
    ("for item in items:\n    |\n\nprint('done')\n", "python", "block"),
    # several blank lines after the opener still count
    ("class Point:\n\n    |\n", "python", "block"),
    # end of an opener line
    ("def area(r):|\n", "python", "block"),
    # text after the cursor would end up after the block: one line only
    ("    if not items:|  # nothing to do\n", "python", "line"),
    ("    if not items:  # nothing to do|\n", "python", "line"),
    ("    if not items:|\n        \n", "python", "block"),
    # body that is only a docstring so far
    ('def area(r):\n    """Area of a circle."""\n    |\n', "python", "block"),
    # brace languages
    ("int main(void) {\n    |\n}\n", "c", "block"),
    ("if (ready) {|\n}\n", "javascript", "block"),
    # line mode: a blank line among statements
    ("def f():\n    x = 1\n    |\n    return x\n", "python", "line"),
    # line mode: a new first line above a body (after the opener, or after a docstring)
    ("def f():\n    |\n    return x\n", "python", "line"),
    ('def f():\n    """Doc."""\n    |\n    return x\n', "python", "line"),
    ('def f():\n    """Doc."""\n    |\n\ndef g():\n    pass\n', "python", "block"),
    ("int main(void) {\n    |\n    return 0;\n}\n", "c", "line"),
    # line mode: mid-line with code after the cursor
    ("def area(|):\n", "python", "line"),
    ("if (ready) {|}\n", "javascript", "line"),
    # line mode: ':' inside brackets is not an opener
    ('d = {\n    "a":|\n}\n', "python", "line"),
    # line mode: inside a string or a comment
    ('msg = "for x in y:|\n', "python", "line"),
    ("# for x in y:|\n", "python", "line"),
    ("x = compute(|\n", "python", "line"),
    ("total = 0|\n", "python", "line"),
    # Lua blocks open with keywords: no block mode from text
    ("function f()|\nend\n", "lua", "line"),
])
def test_choose_mode(doc, language, mode):
    assert choose_mode(*split(doc), language) == mode


def test_choose_mode_on_a_real_module():
    prefix, suffix = MODULE.split("    with open(path) as f:\n")
    # at the end of the `with` line: a block opens
    assert choose_mode(prefix + "    with open(path) as f:", "\n" + suffix, "python") == "block"
    # at the start of the `return` line: a statement among others
    at = MODULE.index("    return data") + 4
    assert choose_mode(MODULE[:at], MODULE[at:], "python") == "line"
