"""Post-processing: each rule on its own, then whole suggestions on real code.

Completions here are written by hand as plausible model output; they are
inputs, and what is asserted is derived from the rules, not from a model.
"""
from __future__ import annotations

import ast
import inspect
import shlex
import textwrap

from hypothesis import given, settings, strategies as st

from keystroke.server.postprocess import dedupe, postprocess


def pp(doc: str, completion: str, mode: str = "line", language_id: str = "python") -> str:
    prefix, suffix = doc.split("|")
    return postprocess(completion, prefix=prefix, suffix=suffix, mode=mode, language_id=language_id)


# ------------------------------------------------------------------ line mode

def test_line_mode_keeps_the_first_line():
    doc = "import os\nroot = |\n"
    assert pp(doc, "os.path.dirname(__file__)\nprint(root)\n") == "os.path.dirname(__file__)"


def test_line_mode_at_the_end_of_a_line_offers_the_next_line():
    doc = "import os\nroot = os.getcwd()|\n"
    assert pp(doc, "\n\nprint(root)\nprint(1)") == "\n\nprint(root)"
    # with text after the cursor, a leading newline means nothing to offer
    assert pp("x = f(|)\n", "\na, b") == ""


# ------------------------------------------------------------------ block mode

def test_block_mode_cuts_at_a_dedent_below_the_start():
    doc = "def mean(values):\n    |\n"
    completion = "total = sum(values)\n    return total / len(values)\n\n\ndef median(values):\n    pass"
    assert pp(doc, completion, "block") == "total = sum(values)\n    return total / len(values)"


def test_block_mode_from_the_end_of_the_opener_line():
    doc = "def mean(values):|\n"
    completion = "\n    return sum(values) / len(values)\n\nprint(mean([1, 2]))"
    assert pp(doc, completion, "block") == "\n    return sum(values) / len(values)"


def test_block_mode_keeps_deeper_lines_and_else_at_the_same_level():
    doc = "def sign(x):\n    |\n"
    completion = "if x < 0:\n        return -1\n    else:\n        return 1\nsign(3)"
    assert pp(doc, completion, "block") == "if x < 0:\n        return -1\n    else:\n        return 1"


def test_block_mode_closing_brace_kept_only_when_the_suffix_lacks_it():
    completion = "total += x;\n}\n\nint other(void) {"
    assert pp("void add(int x) {\n    |\n}\n", completion, "block", "c") == "total += x;"
    assert pp("void add(int x) {\n    |", completion, "block", "c") == "total += x;\n}"


# ------------------------------------------------------------------ repeated lines

def test_lines_that_repeat_the_following_document_are_cut():
    doc = "def area(w, h):\n    |\n    return result\n"
    completion = "result = w * h\n    return result\n"
    assert pp(doc, completion, "block") == "result = w * h"


def test_a_suggestion_that_only_repeats_the_next_lines_is_dropped():
    doc = "def area(w, h):\n    |\n    return w * h\n"
    assert pp(doc, "return w * h", "block") == ""


def test_lines_that_only_look_alike_are_kept():
    doc = "def area(w, h):\n    |\n    return result\n"
    completion = "result = w * h\n    return result * 2"
    assert pp(doc, completion, "block") == completion


# ------------------------------------------------------------------ brackets and suffix overlap

def test_closer_already_after_the_cursor_is_trimmed():
    assert pp("total = sum(|)\n", "values)") == "values"
    assert pp('name = user["|"]\n', 'email"]') == "email"
    assert pp("def area(|):\n    pass\n", "w, h):") == "w, h"


def test_closer_of_the_suggestions_own_bracket_is_kept():
    assert pp("print(|)\n", "len(items))") == "len(items)"
    assert pp("print(|)\n", "len(items)") == "len(items)"


def test_stray_closer_is_cut():
    # the suffix has nothing to close; the second ')' would be one too many
    assert pp("value = int(|\n", "text), 10)") == "text), 10"


def test_only_what_the_suffix_provides_is_trimmed():
    # two parens open, the suffix closes one: the suggestion keeps one
    assert pp("print(len(|)\n", "items))") == "items)"


def _excess_closers(text: str) -> int:
    """Closers with no opener of their kind (an oracle independent of the scanner)."""
    stack, extra = [], 0
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if pairs[ch] in stack:
                while stack.pop() != pairs[ch]:
                    pass
            else:
                extra += 1
    return extra


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["f(", "x = [a, (", "d = {k: g(", "", "y = h(1)", "z = [("]),
    st.text(alphabet="ab ,()[]{}", max_size=12),
    st.sampled_from(["", ")", "])", ")\n", "]\nprint(x)\n", "}) + 1\n"]),
)
def test_a_suggestion_never_adds_stray_closers(prefix, completion, suffix):
    out = postprocess(completion, prefix=prefix, suffix=suffix, mode="line")
    assert _excess_closers(prefix + out + suffix) <= _excess_closers(prefix + suffix)


# ------------------------------------------------------------------ whitespace and emptiness

def test_trailing_whitespace_is_stripped():
    assert pp("x = |\n", "compute(1)   \t") == "compute(1)"
    assert pp("def f():\n    |\n", "a = 1   \n    b = 2  \n\n\n", "block") == "a = 1\n    b = 2"


def test_trailing_space_before_code_after_the_cursor_is_kept():
    assert pp("total = |+ tax\n", "price ") == "price "


def test_blank_suggestions_are_dropped():
    assert pp("x = |\n", "") == ""
    assert pp("x = |\n", "  \n\t\n") == ""
    assert pp("def f():\n    |\n", "\n\n   ", "block") == ""


def test_dedupe_keeps_order_and_drops_blanks_and_repeats():
    assert dedupe(["a = 1", "b = 2", "a = 1  ", "", "   ", "a = 1\n", "c = 3"]) == ["a = 1", "b = 2", "c = 3"]


# ------------------------------------------------------------------ real code

def test_block_completion_of_a_standard_library_function():
    """A model that writes shlex.quote's body and runs on into the next function."""
    source = inspect.getsource(shlex.quote)
    tree = ast.parse(source).body[0]
    body_start = tree.body[1].lineno - 1  # after the docstring
    lines = source.splitlines(keepends=True)
    header, body = "".join(lines[:body_start]), "".join(lines[body_start:])
    prefix = "import re\n\n\n" + header + "    "
    completion = body[4:] + "\n\ndef _print_tokens(lexer):\n    while 1:\n        pass\n"
    out = postprocess(completion, prefix=prefix, suffix="\n", mode="block")
    assert out == body[4:].rstrip()
    ast.parse(prefix + out + "\n")


def test_line_completion_inside_a_real_call():
    source = textwrap.dedent('''\
        def wrap_all(paragraphs, width):
            return [textwrap.fill(p, width=width) for p in paragraphs]
        ''')
    cut = source.index("width=width")
    prefix, suffix = source[:cut], " for p in paragraphs]\n"
    # the model closes the call itself and repeats the rest of the line
    out = postprocess("width=width) for p in paragraphs]", prefix=prefix, suffix=suffix, mode="line")
    assert out == "width=width)"
    ast.parse(prefix + out + suffix)
