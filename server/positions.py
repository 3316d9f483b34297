"""Documents and positions: plain functions of text and pygls's position codec.

Positions always go through the document's pygls position codec (UTF-16 by
default), on LSP's line model (`lsp_lines`): only LF, CRLF and CR end a
line, not the other breaks of `str.splitlines` (U+2028, form feed...).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec, ServerTextPosition

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def lsp_lines(text: str) -> tuple[str, ...]:
    """The lines of `text` with their line breaks, as LSP counts lines:
    only LF, CRLF and CR end a line (no line after a final break)."""
    return tuple(_LINE.findall(text))


def clean_text(text: str) -> str:
    """Replace lone UTF-16 surrogates (valid JSON, invalid Unicode) by U+FFFD.

    Each counts as one UTF-16 unit either way, so positions do not move."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def document_problem(text: str, max_bytes: int) -> str | None:
    """Why a document gets no completions (binary or too large), or None."""
    if len(text) > max_bytes or (len(text) * 4 > max_bytes and len(text.encode("utf-8", "replace")) > max_bytes):
        size = len(text.encode("utf-8", "replace"))
        return f"it is {size / 1e6:.1f} MB, above maxDocumentBytes={max_bytes}"
    if "\x00" in text:
        return "it looks binary (it holds NUL characters)"
    return None


def _content_length(line: str) -> int:
    """Length of `line` without its line break (as `lsp_lines` gave it)."""
    if line.endswith("\r\n"):
        return len(line) - 2
    if line.endswith(("\n", "\r")):
        return len(line) - 1
    return len(line)


def position_to_offset(lines: Sequence[str], codec: PositionCodec, position: types.Position) -> int | None:
    """Code-point offset of a client position; None if the line does not exist.

    A character past the end of its line means the end of the line (LSP)."""
    line, character = position.line, position.character
    if line < 0 or character < 0:
        return None
    if line >= len(lines):
        # The empty line after a final line break is a valid cursor position.
        if line == len(lines) and (not lines or _content_length(lines[-1]) < len(lines[-1])):
            return sum(len(x) for x in lines)
        return None
    content = lines[line][: _content_length(lines[line])]
    character = min(character, codec.client_num_units(content))
    column = codec.position_from_client_units(lines, types.Position(line=line, character=character)).character
    column = min(column, len(content))
    return sum(len(x) for x in lines[:line]) + column


def offset_to_position(lines: Sequence[str], codec: PositionCodec, offset: int) -> types.Position:
    """Client position of a code-point offset (clamped to the document)."""
    starts = [0]
    for x in lines:
        starts.append(starts[-1] + len(x))
    offset = max(0, min(offset, starts[-1]))
    line = bisect.bisect_right(starts, offset) - 1
    if line >= len(lines):  # the end of the text
        if lines and _content_length(lines[-1]) == len(lines[-1]):
            line = len(lines) - 1
        else:
            return types.Position(line=len(lines), character=0)
    column = min(offset - starts[line], _content_length(lines[line]))
    return codec.position_to_client_units(lines, ServerTextPosition(line=line, character=column))


_WORD = re.compile(r"[\w$]+$")


def word_start(text: str, offset: int) -> int:
    """Start of the identifier that ends at `offset` (== offset when none)."""
    line_begin = text.rfind("\n", 0, offset) + 1
    m = _WORD.search(text, line_begin, offset)
    return m.start() if m else offset


def line_start(text: str, offset: int) -> int:
    return max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1


@dataclass(frozen=True)
class Snapshot:
    """A document's state at request time (the text is an immutable str)."""

    uri: str
    version: int | None
    text: str
    language_id: str
    path: Path | None
    lines: tuple[str, ...]
    codec: PositionCodec

    def offset(self, position: types.Position) -> int | None:
        return position_to_offset(self.lines, self.codec, position)

    def position(self, offset: int) -> types.Position:
        return offset_to_position(self.lines, self.codec, offset)
