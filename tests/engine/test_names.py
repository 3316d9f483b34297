"""Names the code below a blank line reads that nothing defines (engine/names.py)."""
from __future__ import annotations

import pytest

from keystroke.engine.names import MAX_NAMES, defines, missing_line

ABOVE = 'def count_words(lines):\n    """Count how often each word occurs in lines."""\n'
BELOW = ("\n    for line in lines:\n        for word in line.split():\n"
         "            counts[word] = counts.get(word, 0) + 1\n    return counts\n")


def test_a_name_read_below_and_defined_nowhere_is_asked_for_at_the_blocks_column():
    found = missing_line(ABOVE, BELOW, "python")
    assert found.names == ("counts",)   # `line` and `word` are bound by their loops, `lines` above
    assert found.lead == "    " and not found.opens_block
    assert found.typings() == ["    counts", "    counts ="]


def test_typed_blanks_count_towards_the_column():
    found = missing_line(ABOVE + "  ", BELOW, "python")
    assert found.names == ("counts",) and found.lead == "  "
    assert missing_line(ABOVE + "        ", BELOW, "python").names == ()   # deeper than the block


@pytest.mark.parametrize("above, below", [
    (ABOVE + "    counts = {}\n", BELOW),                                  # defined above
    (ABOVE.replace("lines):", "lines, counts):"), BELOW),                  # a parameter
    ("import collections\n" + ABOVE, BELOW.replace("counts[word]", "collections.x").replace(
        " = counts.get(word, 0) + 1", "").replace("return counts", "return 1")),   # all known
    (ABOVE, BELOW + "\ncounts = {}\n"),                                    # bound further down
    (ABOVE, "\n    return sorted(lines, key=len, reverse=True)\n"),        # keyword arguments, builtins
    (ABOVE, '\n    # counts are kept in "counts"\n    return lines\n'),    # a comment's, a string's words
    (ABOVE, "\n    return lines.counts\n"),                                # an attribute
])
def test_nothing_is_asked_for_when_the_names_are_defined_or_not_names(above, below):
    assert missing_line(above, below, "python").names == ()


def test_only_a_blank_python_line_asks():
    assert missing_line(ABOVE + "    x", BELOW, "python").names == ()       # the user is typing
    assert missing_line(ABOVE, " y" + BELOW, "python").names == ()          # text after the cursor
    assert missing_line(ABOVE, BELOW, "javascript").names == ()
    assert missing_line(ABOVE, "\n", "python").names == ()                  # no code below
    assert missing_line(ABOVE + "\t", BELOW, "python").names == ()          # tabs: no column to trust


def test_the_rest_of_the_block_only():
    below = "\n    total = 0\n    return total\n\ndef other():\n    return later\n"
    assert missing_line(ABOVE, below, "python").names == ()   # `later` belongs to another function


def test_names_in_reading_order_and_at_most_max_names():
    below = "\n    return a + b + c + d\n"
    assert missing_line(ABOVE, below, "python").names == ("a", "b", "c", "d")[:MAX_NAMES]


def test_a_deeper_block_below_asks_for_a_loop_over_the_name():
    above = ABOVE + "    total = 0\n"
    below = "\n        total += len(line)\n    return total\n"
    found = missing_line(above, below, "python")
    assert found.opens_block and found.names == ("line",) and found.typings() == ["    for line"]


def test_the_files_assignment_spacing_is_kept():
    tight = 'def f(xs):\n    n=len(xs)\n    m=n+1\n'
    assert missing_line(tight, "\n    return n + k\n", "python").assign == "="
    assert missing_line(ABOVE, BELOW, "python").assign == " ="


@pytest.mark.parametrize("line, name, expected", [
    ("    counts = {}", "counts", True),
    ("    a, counts = 1, {}", "counts", True),
    ("    counts: dict = {}", "counts", True),
    ("    for counts in x:", "counts", True),
    ("    with open(p) as counts:", "counts", True),
    ("    def counts(x):", "counts", True),
    ("    import counts", "counts", True),
    ("    counts = counts + 1", "counts", False),     # reads it first: defines nothing
    ("    counts += 1", "counts", False),
    ("    counts[0] = 1", "counts", False),
    ("    counts.x = 1", "counts", False),
    ("    counts == 1", "counts", False),
    ("    countsx = 1", "counts", False),
    ('    x = "counts = 1"', "counts", False),
    ("    return counts", "counts", False),
])
def test_defines(line, name, expected):
    assert defines(line, name) is expected


def test_above_a_deeper_block_with_no_name_to_define_the_header_is_asked_for():
    above = "def f(xs):\n    for x in xs:\n"
    found = missing_line(above, "\n            return x\n    return None\n", "python")
    assert found.names == () and found.opens_block and found.typings() == ["        if "]
    assert found.fits("        if x > 0:") and found.fits("        while (x and") and not found.fits("        y = 1")


def test_a_line_inside_an_open_statement_asks_for_nothing():
    assert missing_line("def f():\n    xs = [\n        1,\n", "\n        a,\n    ]\n", "python") == missing_line("", "", "")
    assert missing_line('def f():\n    """Doc\n', '\n    uses_x\n    """\n', "python").typings() == []


def test_a_long_file_is_read_code_by_code_near_the_cursor_and_word_by_word_far_from_it():
    from keystroke.engine import names
    filler = "x_unrelated = 1\n" * (names.READ_CHARS // 8)
    assert missing_line("import counts\n" + filler + ABOVE, BELOW, "python").names == ()    # far above
    assert missing_line(ABOVE, BELOW + "\n" + filler + "counts = {}\n", "python").names == ()   # far below
    assert missing_line(filler + ABOVE, BELOW + "\n" + filler, "python").names == ("counts",)


def test_a_body_with_no_name_to_define_is_asked_for_at_its_column():
    """Under a header with no body the model may start at another column (the stop rules then
    cut its line to nothing): the second request types the body's blanks, as an editor would."""
    found = missing_line("def f(xs):\n    for x in xs:\n        if x:\n", "\n    return xs\n", "python")
    assert found.names == () and not found.opens_block and found.typings() == [" " * 12]
    assert not found.fits("") and not found.fits("            ") and found.fits("            x.append(1)")
    assert missing_line("def f(xs):\n    if xs:\n        ", "\n    return xs\n", "python").typings() == []

