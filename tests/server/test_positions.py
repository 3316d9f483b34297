"""Positions and document checks, in process: UTF-16 client positions <-> str offsets."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

from keystroke.server.positions import (clean_text, document_problem, line_start, lsp_lines, offset_to_position,
                                        position_to_offset, word_start)

CODEC = PositionCodec(types.PositionEncodingKind.Utf16)
SEPARATORS = ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]   # str.splitlines's, not LSP's


def lines_of(text: str) -> tuple[str, ...]:
    return lsp_lines(text)


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def test_utf16_units_count_an_astral_character_twice():
    text = "a😀b\nxy"
    lines = lines_of(text)
    assert position_to_offset(lines, CODEC, pos(0, 3)) == text.index("b")   # 'a' + two units for the emoji
    assert offset_to_position(lines, CODEC, text.index("b")) == pos(0, 3)
    assert position_to_offset(lines, CODEC, pos(1, 1)) == text.index("y")


def test_a_character_past_the_line_end_means_the_line_end():
    text = "def add(a, b):\n    return a"
    lines = lines_of(text)
    assert position_to_offset(lines, CODEC, pos(1, 99)) == len(text)
    assert position_to_offset(lines, CODEC, pos(0, 99)) == text.index("\n")


def test_lines_that_do_not_exist_have_no_offset():
    lines = lines_of("a\nb")
    assert position_to_offset(lines, CODEC, pos(2, 0)) is None
    assert position_to_offset(lines, CODEC, pos(5, 0)) is None


def test_the_empty_line_after_a_final_newline_is_a_cursor_position():
    text = "x = 1\n"
    lines = lines_of(text)
    assert position_to_offset(lines, CODEC, pos(1, 0)) == len(text)
    assert offset_to_position(lines, CODEC, len(text)) == pos(1, 0)
    assert position_to_offset(lines, CODEC, pos(2, 0)) is None


def test_crlf_line_ends_are_not_part_of_the_line():
    text = "ab\r\ncd"
    lines = lines_of(text)
    assert position_to_offset(lines, CODEC, pos(0, 5)) == 2
    assert position_to_offset(lines, CODEC, pos(1, 1)) == text.index("d")


def test_lsp_lines_end_at_lf_crlf_and_cr_only():
    assert lsp_lines("a\nb\r\nc\rd") == ("a\n", "b\r\n", "c\r", "d")
    assert lsp_lines("a\n") == ("a\n",) and lsp_lines("") == () and lsp_lines("\r\r\n") == ("\r", "\r\n")
    for sep in SEPARATORS:
        assert lsp_lines(f"a{sep}b\nc") == (f"a{sep}b\n", "c")


def test_positions_after_a_unicode_separator_stay_on_its_line():
    for sep in SEPARATORS:
        text = f"a{sep}b\nc{sep}"
        lines = lines_of(text)
        assert position_to_offset(lines, CODEC, pos(0, 2)) == text.index("b")
        assert offset_to_position(lines, CODEC, text.index("b")) == pos(0, 2)
        assert position_to_offset(lines, CODEC, pos(0, 99)) == text.index("\n")      # the separator is content
        assert position_to_offset(lines, CODEC, pos(1, 99)) == len(text)
        assert offset_to_position(lines, CODEC, len(text)) == pos(1, 2)
        assert position_to_offset(lines, CODEC, pos(2, 0)) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab \n\r\t") + ["é", "😀", "\r\n"] + SEPARATORS), max_size=40).map("".join),
       st.data())
def test_offsets_round_trip_through_client_positions(text, data):
    lines = lines_of(text)
    offset = data.draw(st.integers(0, len(text)))
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1   # between \r and \n is no position of any line
    back = position_to_offset(lines, CODEC, offset_to_position(lines, CODEC, offset))
    assert back == offset


def test_lone_surrogates_become_replacement_characters_of_the_same_length():
    text = "x = '\ud800'"
    cleaned = clean_text(text)
    assert cleaned == "x = '\ufffd'" and len(cleaned) == len(text)
    assert clean_text("plain") == "plain"


def test_binary_and_huge_documents_are_refused_with_a_reason():
    assert "binary" in document_problem("a\x00b", 1000)
    assert "MB" in document_problem("é" * 600, 1000)       # 1,200 bytes of UTF-8 over a 1,000-byte limit
    assert document_problem("fine", 1000) is None


def test_word_and_line_starts():
    text = "import os\nvalue = os.pa"
    cursor = len(text)
    assert text[word_start(text, cursor):cursor] == "pa"
    assert word_start(text, text.index(" =")) == text.index("value")
    assert line_start(text, cursor) == text.index("value")
    assert word_start("x = (", 5) == 5
