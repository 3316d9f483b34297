"""The one lexer: whole-text and incremental scans, nesting cost, the tab rule, the language table."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st

from keystroke.engine.languages import ANY_CODE, GENERIC, LANGUAGES, code_lexicon, language, language_of_path, lexicon
from keystroke.engine.lexer import Scanner, code_text, indent_width, scan

LEXICONS = sorted({lang.lexicon for lang in LANGUAGES.values()} | {ANY_CODE}, key=repr)
# Pieces that make the lexers' delimiters, escapes and brackets meet in every order.
PIECES = ["(", ")", "[", "]", "{", "}", '"', "'", "`", '"""', "'''", "#", "//", "/*", "*/", "--", "--[[",
          "]]", "{-", "-}", "<!--", "-->", "\\", "\n", " ", "\t", "x", ":", "'a'", "'\\n'"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LEXICONS), st.lists(st.sampled_from(PIECES), max_size=40), st.data())
def test_feeding_pieces_gives_the_state_of_one_scan(lex, pieces, data):
    text = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    scanner = Scanner(lex)
    for a, b in zip([0] + cuts, cuts + [len(text)]):
        scanner.feed(text[a:b])
        assert scanner.state() == scan(text[:b], lex)  # at every point, not only at the end
    assert scanner.state() == scan(text, lex)


@pytest.mark.parametrize("closers", [")", "]"])
def test_deep_nesting_scans_in_linear_time(closers):
    text = "(" * 100_000 + closers * 100_000
    t0 = time.perf_counter()
    state = scan(text, lexicon("python"))
    assert time.perf_counter() - t0 < 0.5
    if closers == ")":
        assert state.brackets == () and state.extra_closers == 0
    else:
        assert len(state.brackets) == 100_000 and state.extra_closers == 100_000


def test_closer_abandons_the_openers_above_its_match():
    state = scan("f([{x)", lexicon("python"))
    assert state.brackets == () and state.skipped_openers == 2 and state.outer_closers == ()
    chained = scan("])", lexicon("python"), scan("f([", lexicon("python")))
    assert chained.brackets == () and chained.outer_closers == (0, 1) and chained.opened == 0


def test_context_brackets_are_not_counted_as_opened():
    scanner = Scanner(lexicon("python"), context="foo(a, ")
    scanner.feed("b)\nbar(")
    state = scanner.state()
    assert state.brackets == ("(",) and state.opened == 1 and state.most_opened == 1


def test_a_backslash_newline_continues_a_one_line_string():
    assert scan('x = "a\\\nb(', lexicon("python")).string == '"'
    assert scan('x = "a\nb(', lexicon("python")).brackets == ("(",)


def test_a_delimiter_split_across_feeds_is_recognised():
    scanner = Scanner(lexicon("python"))
    for piece in ['x = ""', '"doc (', '\n""', '"\n']:
        scanner.feed(piece)
    assert scanner.state() == scan('x = """doc (\n"""\n', lexicon("python"))
    assert scanner.state().brackets == () and not scanner.state().in_string


def test_indent_width_is_pythons_tab_rule():
    assert indent_width("x") == 0
    assert indent_width("    x") == 4
    assert indent_width("\tx") == indent_width("  \tx") == indent_width(" " * 8 + "x") == 8
    assert indent_width("\t  x") == 10 and indent_width("\t\t") == 16


def test_language_table_lookups():
    assert language("Python").comment == ("#", "") and language("python").grammar == "python"
    assert language("lua").comment == ("--", "") and language("html").comment == ("<!--", " -->")
    assert language("no-such-language").comment == ("//", "")
    assert lexicon("typescriptreact") is lexicon("javascript") and lexicon("markdown") is GENERIC
    assert language("typescriptreact").grammar == "tsx" and language("cuda-cpp").grammar == "cpp"
    assert language_of_path("src/app.tsx").grammar == "tsx" and language_of_path("a/b.HPP").id == "cpp"
    assert language_of_path("conf/app.yml").id == "yaml" and language_of_path("x.cfg").id == "ini"
    assert language_of_path("README") is None and language_of_path(None) is None
    assert language("yaml").config and language("dotenv").config and not language("python").config


def test_the_engine_reads_code_of_no_named_language_with_the_common_conventions():
    assert code_lexicon("") is ANY_CODE and code_lexicon("python") is lexicon("python")
    assert scan("x = 1  # (", ANY_CODE).in_comment and not scan("a#(", ANY_CODE).in_comment
    assert scan("x = '''(\n", ANY_CODE).in_string and scan("a // (", ANY_CODE).in_comment
    assert lexicon("") is GENERIC  # mode choice: an unknown language has no comments


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LEXICONS), st.lists(st.sampled_from(PIECES), max_size=40))
def test_code_text_keeps_offsets_lines_and_the_scan(lex, pieces):
    text = "".join(pieces)
    code = code_text(text, lex)
    assert len(code) == len(text) and code.count("\n") == text.count("\n")
    assert scan(code, lex).brackets == scan(text, lex).brackets   # only the insides of strings and comments went


def test_code_text_blanks_the_words_of_strings_and_comments():
    from keystroke.engine.languages import PYTHON
    text = 'def f(s):\n    """Count s."""\n    x = "a b"  # y\n    return x\n'
    code = code_text(text, PYTHON)
    assert "Count" not in code and "a b" not in code and "y" not in code.split("#")[1]
    assert code.split("\n")[0] == "def f(s):" and code.split("\n")[3] == "    return x"
    assert code_text('x = "open', PYTHON) == 'x = "    '   # a string left open runs to the end
