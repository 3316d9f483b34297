"""The default model's fill-in-the-middle path on real code: healing at the cursor, stops at the suffix.

Both cases were seen with the 0.5B before the cursor's line moved after
`<|fim_middle|>` (the code-model issue): `_ne__` where `__ne__` was due, and
the body of the next function written at an empty line above it. Outputs are
judged by what must hold (a dunder name, no re-typed suffix), not matched to
a recorded text.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from keystroke.engine import Engine, registry
from keystroke.engine.names import defines
from keystroke.server import pipeline
from keystroke.server.config import Config
from keystroke.server.context import DocumentView

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.py"


@pytest.fixture(scope="module")
def engine() -> Engine:
    e = Engine.load(registry.DEFAULT_MODEL, persist=False, response_cache=False)
    assert e.template is not None and e.template.file_sep_id >= 0, "the default model is a FIM model"
    return e


def complete(engine: Engine, text: str, cursor: int, mode: str | None = None) -> pipeline.Completed:
    doc = DocumentView("file:///work/sample.py", text, "python", Path("/work/sample.py"))
    return pipeline.complete(engine, doc, cursor, [], Config(), mode=mode)


@pytest.mark.real_model
def test_healing_keeps_the_characters_at_the_cursor(engine):
    text = "class Money:\n    def __eq__(self, other):\n        return self.cents == other.cents\n\n    def __\n"
    cursor = text.rindex("__") + 2
    done = complete(engine, text, cursor, mode="line")
    assert done.result.timings.prompt_tokens > 0
    line = "    def __" + done.suggestions[0]
    assert re.match(r"    def __[a-z]+__\(self", line), line   # neither `_ne__` nor `___ne__`


@pytest.mark.real_model
def test_the_empty_line_above_a_function_does_not_get_its_body(engine):
    text = SAMPLE.read_text()
    lines = text.split("\n")
    cursor = sum(len(line) + 1 for line in lines[:5])     # line 6: empty, at top level, above fibonacci
    following = [line.strip() for line in lines[6:] if line.strip()][:3]
    for mode in ("block", None):
        done = complete(engine, text, cursor, mode=mode)
        for suggestion in done.suggestions:
            written = {line.strip() for line in suggestion.split("\n")}
            assert not written & set(following), (mode, suggestion)


@pytest.mark.real_model
def test_a_blank_line_above_code_that_reads_an_undefined_name_defines_it(engine):
    """The 0.5B's first answer here is the function's end or nothing; with the name typed it writes
    the definition (engine/names.py). Judged by whether the line defines the name, and run by running it."""
    above = ('def nesting_depths(groups):\n    """The deepest nesting of parentheses in each group."""\n'
             '    def depth_of(s):\n')
    below = ('\n        deepest = 0\n        for c in s:\n            if c == "(":\n                depth += 1\n'
             '                deepest = max(depth, deepest)\n            else:\n                depth -= 1\n'
             '        return deepest\n    return [depth_of(g) for g in groups.split()]\n')
    done = complete(engine, above + below, len(above), mode="line")
    line = done.suggestions[0].split("\n")[0]
    assert defines(line, "depth"), line
    namespace: dict = {}
    exec(above + line + below, namespace)   # the program now runs
    assert namespace["nesting_depths"]("(()) ((()))") == [2, 3]
