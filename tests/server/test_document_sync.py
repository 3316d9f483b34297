"""The server's copy of a document equals the client's after any edits.

The client is modelled here as LSP specifies it, independently of the
server's code: the text is a sequence of UTF-16 code units, lines end at
\\n, \\r\\n or \\r only, and a character past the end of a line means the
end of the line. Random edits (hypothesis) go in process through the
protocol, then a few hundred over stdio to `keystroke serve`."""
from __future__ import annotations

import random
import re
import zlib

import pytest
from hypothesis import given, settings, strategies as st
from lsprotocol import types

from conftest import initialize_raw, start_raw_server

pytestmark = pytest.mark.asyncio

URI = "file:///w/doc.py"
SEPARATORS = ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]
PIECES = ["a", "b", " + b", "    return ", "é", "\U0001F600", "\U0001D11E", "\n", "\r", "\r\n", *SEPARATORS]


class ClientDocument:
    """A document as an LSP client holds it: UTF-16 code units."""

    def __init__(self, text: str) -> None:
        self.units = text.encode("utf-16-le")   # two bytes a unit

    @property
    def text(self) -> str:
        return self.units.decode("utf-16-le")

    def unit(self, i: int) -> int:
        return int.from_bytes(self.units[2 * i: 2 * i + 2], "little")

    def lines(self) -> list[tuple[int, int]]:
        """(first unit, units before the line break) of each line; always one at least."""
        n = len(self.units) // 2
        lines, start, i = [], 0, 0
        while i < n:
            if self.unit(i) in (10, 13):       # \n, \r: LSP's only line breaks
                lines.append((start, i - start))
                i += 2 if self.unit(i) == 13 and i + 1 < n and self.unit(i + 1) == 10 else 1
                start = i
            else:
                i += 1
        lines.append((start, n - start))
        return lines

    def unit_offset(self, line: int, character: int) -> int:
        start, length = self.lines()[line]
        return start + min(character, length)          # past the end: the end of the line

    def columns(self, line: int) -> list[int]:
        """The characters of `line` that do not split a surrogate pair."""
        start, length = self.lines()[line]
        return [c for c in range(length + 1) if c == length or not 0xDC00 <= self.unit(start + c) <= 0xDFFF]

    def edit(self, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        a, b = self.unit_offset(*start), self.unit_offset(*end)
        self.units = self.units[: 2 * a] + text.encode("utf-16-le") + self.units[2 * b:]

    def code_points_before(self, line: int, character: int) -> int:
        return len(self.units[: 2 * self.unit_offset(line, character)].decode("utf-16-le"))


def random_text(pick, most: int) -> str:
    return "".join(PIECES[pick(len(PIECES))] for _ in range(pick(most + 1)))


def random_position(doc: ClientDocument, pick) -> tuple[int, int]:
    line = pick(len(doc.lines()))
    columns = doc.columns(line)
    if pick(4) == 0:
        return line, columns[-1] + 1 + pick(100)        # past the end of the line
    return line, columns[pick(len(columns))]


def random_change(doc: ClientDocument, pick) -> tuple[dict, tuple, tuple, str]:
    """An LSP content change (start <= end) and what it means to `doc`."""
    p, q = random_position(doc, pick), random_position(doc, pick)
    if doc.unit_offset(*q) < doc.unit_offset(*p):
        p, q = q, p
    text = random_text(pick, 3)
    change = {"range": {"start": {"line": p[0], "character": p[1]}, "end": {"line": q[0], "character": q[1]}},
              "text": text}
    return change, p, q, text


def check_positions(local, doc: ClientDocument) -> None:
    """The server reads every position of the final text as the client means it."""
    snap = local.server.snapshot(URI)
    assert len(snap.lines) == len(doc.lines()) - (doc.lines()[-1][1] == 0)   # no line after a final break
    for line, (start, length) in enumerate(doc.lines()):
        for character in doc.columns(line) + [length + 7]:
            offset = doc.code_points_before(line, character)
            assert snap.offset(types.Position(line=line, character=character)) == offset
            if character <= length:
                assert snap.position(offset) == types.Position(line=line, character=character)
    assert snap.offset(types.Position(line=len(doc.lines()), character=0)) is None


async def test_an_edit_past_the_end_of_the_last_line_lands_at_its_end(local_server):
    local_server.open(URI, "def add(a, b):\n    return a")
    local_server.change(URI, 2, [{"range": {"start": {"line": 1, "character": 99},
                                            "end": {"line": 1, "character": 99}}, "text": " + b"}])
    assert local_server.text(URI) == "def add(a, b):\n    return a + b"
    assert local_server.server.current_version(URI) == 2


@pytest.mark.parametrize("separator", SEPARATORS)
async def test_unicode_line_separators_do_not_end_lines(local_server, separator):
    text = f"x = 1{separator}\ndef add(a, b):\n    return a"
    local_server.open(URI, text)
    at_end = {"line": 2, "character": 12}
    local_server.change(URI, 2, [{"range": {"start": at_end, "end": at_end}, "text": " + b"}])
    assert local_server.text(URI) == text + " + b"
    snap = local_server.server.snapshot(URI)
    assert len(snap.lines) == 3
    assert snap.offset(types.Position(line=1, character=4)) == text.index("add")
    assert snap.position(text.index("add")) == types.Position(line=1, character=4)


async def test_documents_match_a_client_utf16_model_after_random_edits(local_server):
    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def run(data):
        pick = lambda n: data.draw(st.integers(0, n - 1))  # noqa: E731
        doc = ClientDocument(random_text(pick, 12))
        local_server.open(URI, doc.text)
        for version in range(2, 2 + pick(8) + 1):
            changes = []
            for _ in range(pick(3) + 1):    # changes apply in order, each to the previous result
                change, start, end, text = random_change(doc, pick)
                doc.edit(start, end, text)
                changes.append(change)
            local_server.change(URI, version, changes)
            assert local_server.text(URI) == doc.text
            assert local_server.server.current_version(URI) == version
        check_positions(local_server, doc)
    run()


async def test_documents_match_the_model_over_stdio(model, tmp_path):
    rng = random.Random(15)
    pick = rng.randrange
    doc = ClientDocument("def add(a, b):\n    return a\x0c\u2028\U0001F600\r\n")
    log_file = tmp_path / "serve.log"
    proc, client = start_raw_server(model, log_file)
    try:
        initialize_raw(client, tmp_path)
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": URI, "languageId": "python", "version": 1, "text": doc.text}})
        expected = []
        for version in range(2, 302):
            change, start, end, text = random_change(doc, pick)
            doc.edit(start, end, text)
            client.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": version},
                                                     "contentChanges": [change]})
            expected.append((version, len(doc.text), zlib.crc32(doc.text.encode("utf-8"))))
        # answered after every change before it was applied
        client.call("workspace/executeCommand", {"command": "keystroke.status"}, msg_id="st", timeout=60)
        log = log_file.read_text(encoding="utf-8", errors="replace")
        seen = [(int(v), int(n), int(crc, 16)) for v, n, crc in
                re.findall(r"doc\.py is version (\d+): (\d+) characters, crc32 ([0-9a-f]{8})", log)]
        assert seen == expected
    finally:
        proc.kill()
        proc.wait(10)
