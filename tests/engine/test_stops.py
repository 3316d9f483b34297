"""Stop rules, fed text the way the decode loop does: one growing string per token."""
import pytest
from hypothesis import given, settings, strategies as st

from keystroke.engine.api import StopPolicy
from keystroke.engine.stops import Stop, StopChecker, bodiless_header, body_column, indent_width, text_above


def run(text, chunk=1, line="", suffix="", above="", **policy):
    """Feed `text` in chunks of `chunk` characters; return (reason, kept text) or None."""
    checker = StopChecker(StopPolicy(**policy), line, suffix, above)
    for end in list(range(chunk, len(text), chunk)) + [len(text)]:
        hit = checker.check(text[:end])
        if hit is not None:
            return hit.reason, text[:hit.cut]
    return None


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_stop_string_cuts_before_the_earliest_match(chunk):
    got = run("x = 1\nprint(x)  # END\nmore", chunk=chunk, stop_strings=("END", "print"))
    assert got == ("stop_string", "x = 1\n")


def test_stop_string_split_across_tokens():
    checker = StopChecker(StopPolicy(stop_strings=("</code>",)))
    assert checker.check("abc</co") is None
    hit = checker.check("abc</code>tail")
    assert hit.reason == "stop_string" and hit.cut == 3


def test_line_mode_stops_at_the_end_of_the_line():
    assert run("foo(1)\nbar()", line="x = ", mode="line") == ("line", "foo(1)")
    assert run("foo(1)\nbar()", line="x = ", mode="free") is None


def test_line_mode_leading_newline_stops_blank():
    assert run("\n    bar()", line="x = 1", mode="line") == ("line", "")


def test_block_mode_python_dedent_ends_the_block():
    text = "def f(x):\n    if x:\n        return 1\n\n    return 2\n\ndef g():\n    pass\n"
    assert run(text, mode="block") == ("block", "def f(x):\n    if x:\n        return 1\n\n    return 2")
    assert run(text, mode="free") is None


def test_block_mode_on_a_blank_body_line_completes_the_rest_of_the_body():
    # a blank, indented cursor line: the block is the body, it ends at the first dedent
    got = run("total += x\n    count += 1\nprint(total)\n", line="    ", mode="block")
    assert got == ("block", "total += x\n    count += 1")


def test_block_mode_after_an_opener_at_the_cursor_level_ends_at_that_level():
    got = run("\n        return 1\n    y = 2\n", line="    if x:", mode="block")
    assert got == ("block", "\n        return 1")


def test_block_mode_docstring_lines_do_not_end_the_block():
    text = '"""\n    Check n.\n    """\n    return n > 1\n\ndef g():\n'
    assert run(text, line="    ", mode="block") == ("block", text[:text.index("\n\ndef")])


def test_block_mode_braces_closing_line_ends_it():
    text = "if (x) {\n  foo(\"}\");\n  // a } in a comment\n} else {\n  y();\n}\nbar();\n"
    # the `}` in the string and the comment are not counted, `} else {` keeps it open
    assert run(text, mode="block") == ("block", text[:text.index("}\nbar")+1])


def test_block_mode_closing_an_enclosing_brace_is_left_out():
    assert run("return 1;\n}\n", line="  ", mode="block") == ("block", "return 1;")


def test_block_mode_open_bracket_keeps_going_past_the_start_level():
    text = "x = foo(\n    1,\n2)\ny = 3\n"
    # `2)` starts at level 0 but the paren is still open there; `y` ends it
    assert run(text, mode="block") == ("block", "x = foo(\n    1,\n2)")


def test_block_mode_cursor_inside_a_string_is_known():
    # the cursor line opened a string: the completion's `(` is inside it
    text = '(" + name\nz = 1\n'
    assert run(text, line='msg = "hello ', mode="block") == ("block", '(" + name')


def test_repeated_line_keeps_the_first_copy():
    text = "a = 1\n    x += 1\n    x += 1\n    x += 1\n    y"
    assert run(text) == ("repetition", "a = 1\n    x += 1")
    assert run(text, stop_on_repetition=False) is None


def test_two_copies_are_not_a_loop():
    assert run("x += 1\nx += 1\ny = 2\n") is None


def test_ngram_loop_in_the_tail():
    text = "foo(" + "bar, " * 10
    assert run(text) == ("repetition", "foo(bar, ")
    assert run(text, stop_on_repetition=False) is None


def test_separator_lines_are_not_loops():
    assert run("# " + "-" * 70) is None


def test_earliest_rule_wins():
    text = "a()\nb()\nSTOP"
    assert run(text, mode="line", stop_strings=("STOP",)) == ("line", "a()")


def test_text_that_changes_behind_the_checker_is_rescanned():
    checker = StopChecker(StopPolicy(mode="line"))
    assert checker.check("abc") is None
    assert checker.check("xy\nz").cut == 2


def test_indent_width_puts_a_tab_at_the_next_multiple_of_eight():
    # Python's tokenizer rule, shared with mode choice and post-processing
    assert indent_width("\t  x") == 10
    assert indent_width("  \tx") == indent_width("\tx") == indent_width(" " * 8 + "x") == 8


@pytest.mark.parametrize("text, kept", [
    ('def f():\n    """Doc ( unbalanced\n    """\n    return 1\nx = 2\n',
     'def f():\n    """Doc ( unbalanced\n    """\n    return 1'),
    ("int f() {\n  /* { */\n  return 1;\n}\nint g;\n", "int f() {\n  /* { */\n  return 1;\n}"),
    ("def f():\n    # TODO (later\n    pass\nx = 1\n", "def f():\n    # TODO (later\n    pass"),
    ("x = ('', '(')\ny = 1\n", "x = ('', '(')"),
    ("x = '''a ( b''' + f(\n  1)\ny = 1\n", "x = '''a ( b''' + f(\n  1)"),
])
def test_block_mode_ignores_brackets_in_strings_and_comments(text, kept):
    assert run(text, mode="block") == ("block", kept)


def test_block_mode_a_dedented_line_inside_a_string_does_not_end_the_block():
    text = 'x = """\nno indent here\n"""\n    return x\nprint(1)\n'
    assert run(text, line="    ", mode="block") == ("block", text[:text.index("\nprint")])


def test_block_mode_reads_comments_and_strings_in_the_policys_language():
    # Python: '#' right after code starts a comment, so its '(' is not open
    assert run("x = 1#(\ny = 2\n", mode="block", language_id="python") == ("block", "x = 1#(")
    assert run("x = 1#(\ny = 2\n", mode="block") is None
    # JavaScript: a template literal spans lines; its '}' and its last line end nothing
    text = "const s = `\n}\n`;\nfoo();\n"
    assert run(text, mode="block", language_id="javascript") == ("block", "const s = `\n}\n`;")
    assert run(text, mode="block") == ("block", "const s = `")


def test_block_mode_a_tab_reaches_the_next_multiple_of_eight():
    # eight spaces sit at the level of a tab-indented `if`, as Python reads them
    assert run("\n\t\treturn 1\n        y = 2\n", line="\tif x:", mode="block") == ("block", "\n\t\treturn 1")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["(", ")", "{", "}", '"', "'", '"""', "`", "#", "//", "/*", "*/", "\\",
                                 "\n", "    ", "\t", "x", ":", ";"]), max_size=30),
       st.sampled_from(["", "python", "javascript", "rust"]), st.integers(1, 7), st.sampled_from(["", "    ", "  f("]))
def test_block_stops_do_not_depend_on_how_the_text_is_split(pieces, language_id, chunk, line):
    text = "".join(pieces)
    whole = run(text, chunk=len(text) + 1, line=line, mode="block", stop_on_repetition=False, language_id=language_id)
    assert run(text, chunk=chunk, line=line, mode="block", stop_on_repetition=False,
               language_id=language_id) == whole


SAMPLE_SUFFIX = ("\n\n\ndef fibonacci(n: int) -> list[int]:\n    \"\"\"The first n Fibonacci numbers.\"\"\"\n"
                 "    result = [0, 1]\n")


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_retyping_the_suffix_stops_before_it(chunk):
    body = "    if n < 2:\n        return False\n    return all(n % d for d in range(2, n))\n\n\n"
    text = body + "def fibonacci(n: int) -> list[int]:\n    \"\"\"The first"
    got = run(text, chunk=chunk, line="    ", suffix=SAMPLE_SUFFIX, mode="free")
    assert got == ("suffix", body.rstrip("\n"))


def test_retyping_the_suffix_from_its_second_line_stops_too():
    text = '    """The first n Fibonacci numbers."""\n    result = [0, 1]\n'
    assert run(text, line="    ", suffix=SAMPLE_SUFFIX, mode="free") == ("suffix", "")


def test_one_repeat_of_a_later_suffix_line_is_kept():
    suffix = "\n        else:\n            parts.append(c)\n    return parts\n"
    assert run("            parts.append(c)\n", line="", suffix=suffix, mode="free") is None
    assert run("            parts.append(c)\n            n += 1\n", line="", suffix=suffix, mode="free") is None


def test_a_line_unlike_the_suffix_goes_on():
    text = "    return n > 1\n\ndef fibonacci_fast(n):\n"
    assert run(text, line="    ", suffix=SAMPLE_SUFFIX, mode="free") is None
    assert run("x = 1\n", line="", suffix="\n\n   \n", mode="free") is None   # a blank suffix matches nothing


def test_the_first_line_retyping_the_suffix_leaves_nothing():
    assert run("return x\nmore", line="    ", suffix="\n    return x\n", mode="free") == ("suffix", "")


BODY_SUFFIX = "\n    result = []\n    for x in xs:\n        result.append(x)\n    return result\n"


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_a_jump_over_the_code_below_is_cut(chunk):
    """A line that returns while the suffix's next code line is in the same block would make it dead code."""
    got = run("    return result\n", chunk=chunk, line="", suffix=BODY_SUFFIX, mode="line", language_id="python")
    assert got == ("suffix", "")
    got = run("    if not xs:\n        return []\n    return result\n\ndef g():\n", chunk=chunk, line="",
              suffix=BODY_SUFFIX, mode="block", language_id="python")
    assert got == ("suffix", "    if not xs:\n        return []")   # the nested return jumps over nothing
    got = run("    return result\n    x = 1\n\ndef g():\n", chunk=chunk, line="",
              suffix=BODY_SUFFIX, mode="block", language_id="python")
    assert got == ("block", "    return result\n    x = 1")   # only the last line leads into the suffix


def test_a_jump_out_of_a_deeper_block_goes_on():
    suffix = "\n    return total\n"
    assert run("        break\n", line="", suffix=suffix, mode="line", language_id="python") == ("line", "        break")
    assert run("        raise ValueError(x)\n", line="", suffix="\n# done\n", mode="line", language_id="python") \
        == ("line", "        raise ValueError(x)")   # only comments below: no code to make dead


def test_a_jump_the_user_began_is_theirs():
    assert run("urn result\n", line="    ret", suffix=BODY_SUFFIX, mode="line", language_id="python") \
        == ("line", "urn result")
    # ... and a cursor with code after it on its line: the completion joins that code, the rule stays out
    assert run("return \n", line="    ", suffix="result\n    x = 1\n", mode="line", language_id="python") \
        == ("line", "return ")


def test_jumps_are_per_language():
    assert run("    return x;\n", line="", suffix="\n    y = 1;\n}\n", mode="line", language_id="c") == ("suffix", "")
    assert run("    throw err;\n", line="", suffix="\n    y = 1;\n}\n", mode="line", language_id="typescript") \
        == ("suffix", "")
    assert run("    return x;\n", line="", suffix="\n}\n", mode="line", language_id="c") == ("line", "    return x;")
    assert run("    raise x\n", line="", suffix="\n    y = 1\n", mode="line", language_id="c") == ("line", "    raise x")
    assert run("    return(x)\n", line="", suffix="\n    y = 1\n", mode="line", language_id="python") == ("suffix", "")
    assert run("    returned = 1\n", line="", suffix="\n    y = 1\n", mode="line", language_id="python") \
        == ("line", "    returned = 1")


def test_the_last_line_is_judged_at_the_end_token():
    checker = StopChecker(StopPolicy(mode="line", language_id="python"), "", BODY_SUFFIX)
    assert checker.check("    return result") is None
    assert checker.finish() == Stop("suffix", 0)
    checker = StopChecker(StopPolicy(mode="line", language_id="python"), "", BODY_SUFFIX)
    assert checker.check("    result = [0]") is None and checker.finish() is None
    checker = StopChecker(StopPolicy(mode="line"), "    ", BODY_SUFFIX)
    assert checker.check("result = []") is None
    assert checker.finish() == Stop("suffix", 0)   # the suffix's next line, re-typed without its line break


@pytest.mark.parametrize("text", ["# Test the function\n", "print(result)\n", "x = 1  # note\n"])
def test_a_last_line_left_of_the_code_below_is_cut_in_python(text):
    """The suffix's next code line would be an indentation error after it (or sit under a stray comment)."""
    suffix = "\n        result.append(x)\n    return result\n"
    assert run(text, line="", suffix=suffix, mode="line", language_id="python") == ("suffix", "")
    assert run("    " + text, line="", suffix=suffix, mode="line", language_id="python") == ("suffix", "")
    assert run("        " + text, line="", suffix=suffix, mode="line", language_id="python")[0] == "line"
    assert run(text, line="", suffix=suffix, mode="line", language_id="c")[0] == "line"   # braces decide there


@pytest.mark.parametrize("text", ["    for x in xs:\n", "    total = f(\n", "    s = '''\n", "    x = 1 + \\\n"])
def test_a_last_line_that_opens_something_for_the_code_below_goes_on(text):
    suffix = "\n        result.append(x)\n    return result\n"
    assert run(text, line="", suffix=suffix, mode="line", language_id="python")[0] == "line"


@pytest.mark.parametrize("text", ["    for x in xs:\n", "    while i < l:  # scan\n", "        else:\n"])
def test_a_last_line_that_opens_a_block_the_code_below_is_not_in_is_cut_in_python(text):
    suffix = "\n    return result\n"     # `expected an indented block`
    assert run(text, line="", suffix=suffix, mode="line", language_id="python") == ("suffix", "")
    assert run(text, line="", suffix=suffix, mode="line", language_id="go")[0] == "line"
    assert run("    d = {1: 2}\n", line="", suffix=suffix, mode="line", language_id="python")[0] == "line"


def test_outdented_lines_inside_a_block_completion_are_judged_only_at_its_end():
    suffix = "\n        result.append(x)\n"
    text = "    if x:\n        y = 1\n    z = 2"     # its middle line is deeper, its last line left of the suffix
    checker = StopChecker(StopPolicy(mode="block", language_id="python"), "", suffix)
    assert checker.check(text) is None
    assert checker.finish() == Stop("suffix", len("    if x:\n        y = 1"))
    # a block rule's cut or a re-typed suffix line leave a last line that is judged the same way
    assert run("# Test cases\nprint(f(1))\n", line="", suffix=suffix, mode="block", language_id="python") \
        == ("suffix", "")
    assert run("    print(y)\n        result.append(x)\n", line="", suffix=suffix, mode="free",
               language_id="python") == ("suffix", "")
    # ... and again, as long as the last line left cannot lead into the suffix either
    assert run("    y = 1\n        z = 2\n    print(y)\n    return y\n\n#", line="", suffix=suffix, mode="block",
               language_id="python") == ("suffix", "    y = 1\n        z = 2")


DOCSTRING_ONLY = 'import math\n\n\ndef area(r):\n    """The area of a circle of radius r.\n\n    >>> area(1)\n    3.14...\n    """\n'


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("mode", ["line", "block"])
def test_a_line_at_or_left_of_a_header_with_no_body_is_cut_to_nothing(chunk, mode):
    """At a function's first body line a FIM model often starts a new top-level function instead."""
    for text in ('def main():\n    print(area(2))\n', 'if __name__ == "__main__":\n') + (('\nclass B:\n',) if mode == "block" else ()):
        assert run(text, chunk=chunk, above=DOCSTRING_ONLY, mode=mode, language_id="python") == ("suffix", "")
    def kept(text, above):
        got = run(text, chunk=chunk, above=above, mode=mode, language_id=language)
        return text if got is None else got[1]
    language = "python"
    assert kept("    return math.pi * r * r\n", DOCSTRING_ONLY) .startswith("    return math.pi * r * r")
    # only under such a header, and only where indentation is syntax
    assert kept("def main():\n x\n", DOCSTRING_ONLY + "    return math.pi * r * r\n\n").startswith("def main")
    language = "c"
    assert kept("def main():\n x\n", DOCSTRING_ONLY).startswith("def main")


def test_a_header_without_a_docstring_counts_and_typed_whitespace_is_the_users():
    above = "def f(xs):\n    for x in xs:\n"
    assert run("    print(x)\n", above=above, mode="line", language_id="python") == ("suffix", "")
    assert run("        print(x)\n", above=above, mode="line", language_id="python") == ("line", "        print(x)")
    # the user typed 4 spaces, at the header's level: their choice; 8 spaces: the rule has nothing to cut
    assert run("print(x)\n", line="    ", above=above, mode="line", language_id="python") == ("line", "print(x)")
    assert run("print(x)\n", line="        ", above=above, mode="line", language_id="python") == ("line", "print(x)")
    assert run("x\n", line="    y = ", above=above, mode="line", language_id="python") == ("line", "x")


@pytest.mark.parametrize("above,level", [
    (DOCSTRING_ONLY, 0),
    ("class A:\n    def f(self):\n        '''One line.'''\n", 4),
    ('def f():\n    r"""Raw\n    docstring."""\n\n', 0),
    ("def f(x,\n      y):\n", None),     # the header's last line alone is read: its bracket closes there
    ("    while True:  # forever\n", 4),
    ("def f():\n    return 1\n", None),
    ('x = """\nnot a docstring"""\n', None),
    ("d = {\n    'a':\n", 4),
    ("", None),
])
def test_the_header_with_no_body_is_found_above_the_cursor(above, level):
    from keystroke.engine.languages import code_lexicon
    assert bodiless_header(above, code_lexicon("python")) == level


def test_the_text_above_is_the_prefix_up_to_the_cursors_line():
    assert text_above("a\nb\n    c") == "a\nb\n"
    assert text_above("abc") == "" and text_above("x\n") == "x\n"


@pytest.mark.parametrize("above,column", [
    (DOCSTRING_ONLY, 4),                                      # the docstring's column
    ("class A:\n    def f(self):\n        '''One line.'''\n", 8),
    ("def f(xs):\n    for x in xs:\n", 8),                    # the header's plus the usual step
    ("def f(xs):\n  if xs:\n    for x in xs:\n", 6),          # a 2-space file
    ("def f(xs):\n\tfor x in xs:\n", None),                   # tabs: not guessed
    ("def f():\n    return 1\n", None),
])
def test_the_body_column_of_a_header_with_no_body(above, column):
    from keystroke.engine.languages import code_lexicon
    assert body_column(above, code_lexicon("python")) == column
    assert body_column(above, code_lexicon("c")) is None


NESTED_ABOVE = ('def digit_sums(nums):\n    """Sum of digits, negative numbers keep their sign."""\n'
                '    def digits_sum(n):\n        neg = 1\n        if n < 0: n, neg = -1 * n, -1\n'
                '        n = [int(i) for i in str(n)]\n')
NESTED_BELOW = '\n        return sum(n)\n    return [digits_sum(x) for x in nums]\n'


def settled(text, mode):
    """What is kept of `text` at the model's end token, fed whole below NESTED_ABOVE."""
    checker = StopChecker(StopPolicy(mode=mode, language_id="python"), "", NESTED_BELOW, NESTED_ABOVE)
    hit = checker.check(text) or checker.finish()
    return text if hit is None else text[:hit.cut]


@pytest.mark.parametrize("mode", ["line", "block"])
def test_a_line_that_makes_the_code_below_an_indentation_error_is_cut(mode):
    """Inside a function, a header at column 0 takes the rest of it as its body: the line after at
    column 4 then matches no open block (HumanEval/108: `if __name__ == "__main__":` there)."""
    for text in ('if __name__ == "__main__":', "  x = 1", "            x = 1"):
        assert settled(text, mode) == "", text
    for text in ("        n[0] = n[0] * neg", "        total = sum(\n    n)"):   # a line in brackets goes on
        assert settled(text, mode).startswith(text.split("\n")[0]), text
    assert settled("        n = n * neg\n  y = 2", "block") == "        n = n * neg"   # its last line only


def test_indentation_is_read_only_where_the_text_above_reads_cleanly():
    from keystroke.engine.stops import Indents, indents_above
    assert indents_above(NESTED_ABOVE).stack == [0, 4, 8]
    assert indents_above("x = 1\n    y = 2\n") is None          # the text above is itself an error
    assert indents_above("x = foo(\n") is None                  # the cursor's line goes on a statement
    assert indents_above("    indented only\n") is None         # no line at column 0 to start from
    ind = Indents()
    assert ind.feed("if (a and") and ind.feed("  b):") and ind.feed("    c = 1")   # a header over two lines
    assert ind.feed("# a comment anywhere") is True and not ind.feed("      d = 2")
    # Only where indentation is syntax
    assert run("if x:\n", above=NESTED_ABOVE, suffix=NESTED_BELOW, mode="line", language_id="c") == ("line", "if x:")
