"""Token budgets: never exceeded, the text nearest the cursor kept, cuts that hold still while typing."""
from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from keystroke.server.context import ContextConfig, DocumentView, Snippet, build_context
from keystroke.server.context.budget import comment_out, fit_header, trim_prefix, trim_suffix

_PIECES = re.compile(r"[A-Za-z_]+|\d|\n[ \t]*|[ \t]+|[^\sA-Za-z_\d]")


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a BPE tokenizer: words, digits, punctuation, and a newline with its
    indentation as one token. Like real tokenizers it is not additive across line joins."""
    return len(_PIECES.findall(text))


SOURCE = "\n".join(f"def step_{i}(value):\n    return value * {i} + offset_{i % 7}\n" for i in range(60))


def test_prefix_keeps_the_nearest_whole_lines_within_budget():
    kept, first = trim_prefix(SOURCE, 100, count_tokens)
    assert count_tokens(kept) <= 100
    assert SOURCE.endswith(kept)
    assert kept == "\n".join(SOURCE.split("\n")[first:])
    # one more line would not have fit
    assert count_tokens("\n".join(SOURCE.split("\n")[first - 1:])) > 100


def test_prefix_cut_moves_in_steps_of_snap_lines():
    firsts = set()
    lines = SOURCE.split("\n")
    for n in range(60, len(lines)):
        text = "\n".join(lines[:n])
        kept, first = trim_prefix(text, 300, count_tokens, snap=8)
        assert count_tokens(kept) <= 300 and text.endswith(kept)
        firsts.add(first)
        assert first % 8 == 0
    assert len(firsts) < (len(lines) - 60) / 4


def test_prefix_tail_of_one_huge_line():
    line = "x = [" + ", ".join(str(i) for i in range(500)) + "]"
    kept, _ = trim_prefix("import os\n" + line, 50, count_tokens)
    assert line.endswith(kept) and 0 < count_tokens(kept) <= 50


def test_suffix_keeps_the_start_within_budget():
    kept = trim_suffix(SOURCE, 90, count_tokens, snap=4, first_line=3)
    assert SOURCE.startswith(kept) and count_tokens(kept) <= 90 and kept.endswith("\n")
    assert (3 + kept.count("\n")) % 4 == 0


def test_header_fits_and_prefers_higher_sources():
    snippets = [Snippet("similar", "similar code in a.py", "x = 1\n" * 30, 0.9, ("a.py", 0), "a.py"),
                Snippet("signatures", "from b.py", "def b(x): ...", 3.0, (False, "b.py", 0), "b.py"),
                Snippet("imports", "imports of this file", "import os", 10.0, (0,), "this file")]
    header, chosen = fit_header(snippets, 60, count_tokens, "python", "file: c.py")
    assert count_tokens(header) <= 60
    assert [s.source for s in chosen] == ["imports", "signatures"]
    assert header == ("# imports of this file:\n# import os\n# from b.py:\n# def b(x): ...\n# file: c.py\n")


def test_comment_out_per_language():
    assert comment_out("int f();\n\nint g();", "cpp") == "// int f();\n//\n// int g();\n"
    assert comment_out("local x = 1", "lua") == "-- local x = 1\n"
    assert comment_out("<b>", "html") == "<!-- <b> -->\n"


def _doc(text: str) -> DocumentView:
    return DocumentView("file:///ws/app.py", text, "python", Path("/ws/app.py"))


OTHER = DocumentView("file:///ws/lib.py", "\n".join(
    f"def helper_{i}(value, scale=2):\n    '''Scale value number {i}.'''\n    return value * scale + {i}\n"
    for i in range(40)), "python", Path("/ws/lib.py"))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=len(SOURCE)), st.integers(min_value=0, max_value=400))
def test_build_context_never_exceeds_any_budget(offset, budget):
    text = "from lib import helper_3\n" + SOURCE.replace("offset_", "helper_")
    cfg = ContextConfig(budget_tokens=budget)
    parts = build_context(_doc(text), offset, [OTHER], config=cfg, count_tokens=count_tokens,
                          workspace_root=Path("/ws"))
    h, p, s = cfg.budgets()
    assert count_tokens(parts.header) + count_tokens(parts.note) <= h
    assert count_tokens(parts.document_prefix()) <= p
    assert count_tokens(parts.suffix) <= s
    assert text[:offset].endswith(parts.document_prefix()) and text[offset:].startswith(parts.suffix)
    spent = {e["source"]: e["tokens"] for e in parts.provenance}
    assert spent["prefix"] == count_tokens(parts.prefix) and spent["header"] == count_tokens(parts.header)
    assert spent.get("cursor", 0) == count_tokens(parts.note)


def test_build_context_provenance_names_each_source():
    text = "from lib import helper_3\n\n" + "\n" * 5 + "def main(v):\n    w = helper_3(v)\n    r = helper_7(w)\n    \n"
    parts = build_context(_doc(text), len(text) - 1, [OTHER], count_tokens=count_tokens, workspace_root=Path("/ws"),
                          config=ContextConfig(budget_tokens=1000))
    by_source = {e["source"]: e for e in parts.provenance}
    assert by_source["signatures"]["origins"] == ["lib.py"] and by_source["signatures"]["items"] == 2
    assert 0 < by_source["signatures"]["tokens"] < by_source["header"]["tokens"]
    assert "def helper_3(value, scale=2):" in parts.header and "def helper_7(value, scale=2):" in parts.header
    assert "def helper_8" not in parts.header
    assert parts.header.endswith("# file: app.py\n")


def test_sources_can_be_switched_off():
    text = "from lib import helper_3\n\ndef main(v):\n    return helper_3(v)\n"
    cfg = ContextConfig(signatures=False, similar=False, include_path=False)
    parts = build_context(_doc(text), len(text), [OTHER], count_tokens=count_tokens, config=cfg)
    assert parts.header == ""
    assert [e["source"] for e in parts.provenance] == ["header", "prefix", "suffix"]
