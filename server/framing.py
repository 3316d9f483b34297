"""LSP's base protocol, read with our own framing loop rather than pygls's.

Garbage on the wire (bad headers, invalid JSON, oversized bodies) is
answered or skipped with a warning instead of a traceback, and the reader
resynchronises on the next `Content-Length:` header, so one bad frame loses
nothing after it. Shared by the stdio and TCP transports.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import math
import re
from dataclasses import dataclass
from typing import Any


log = logging.getLogger("keystroke.serve")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
LOOP_BOUND_S = 0.1   # no message may hold the event loop longer (logged as a warning when one does)


# A Content-Length header line. It also marks where a broken frame ends: a
# valid JSON body can never contain one, because "content-length" outside a
# string is not JSON and a string closes with a quote before any raw newline.
_HEADER = re.compile(rb"content-length[ \t]*:([^\"\r\n]*)\r?\n", re.IGNORECASE)
_OPEN_HEADER = re.compile(rb"content-length[ \t]*:[^\"\r\n]*\Z", re.IGNORECASE)   # its line not yet ended
_FIELD = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+[ \t]*:[^\r\n]*\r?\n"   # a header line (any name)
_FIELDS = re.compile(b"(?:" + _FIELD + b")*")
_BLOCK = re.compile(b"(?:" + _FIELD + rb")*\r?\n")          # header lines ended by a blank line
_LINE_END = re.compile(rb"\r?\n")
KEEP_BYTES = 64 * 1024   # of a broken frame's body, kept to answer it; also the longest header block
_TAIL = 256              # bytes held back while skipping, in case a header is split between reads


@dataclass
class Broken:
    """What stood where a message should have been: a frame with a bad
    header (its body as far as it could be told, at most KEEP_BYTES), or
    bytes between messages. Answered if it parses as a request, else logged."""

    body: bytes
    why: str


class FrameReader:
    """Reads LSP base-protocol frames and never loses the stream.

    `read()` returns the next body, a `Broken` item, or None at end of
    input. After a bad header (no Content-Length, a value that is not a
    plain number, one above `limit`) the body is skipped up to the next
    Content-Length header, never buffered beyond KEEP_BYTES. A body that
    turns out shorter than its Content-Length ends where the next header
    starts, so the messages after it are not swallowed either."""

    def __init__(self, reader: Any, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.reader = reader        # anything with `async read(n)`, b"" at end of input
        self.limit = limit          # the largest body accepted; a caller may change it between reads
        self.buf = bytearray()
        self.eof = False
        self._skip: tuple[float, bool] | None = None   # (bytes at most, keep them) to skip before the next header

    async def _fill(self) -> bool:
        if not self.eof:
            chunk = await self.reader.read(1 << 16)
            if chunk:
                self.buf += chunk
                return True
            self.eof = True
        return False

    async def read(self) -> bytes | Broken | None:
        while True:
            if self._skip is not None:
                limit, keep = self._skip
                kept = await self._skip_body(limit, keep)
                self._skip = None
                if kept.strip():
                    return Broken(kept, "the body of a message with a bad header")
                continue
            found = _HEADER.search(self.buf)
            if found is None:
                if len(self.buf) > KEEP_BYTES:
                    kept = bytes(self.buf[:KEEP_BYTES])
                    self._skip = (math.inf, False)
                    return Broken(kept, "data without a Content-Length header")
                if not await self._fill():
                    rest, self.buf = bytes(self.buf), bytearray()
                    return Broken(rest, "data without a Content-Length header at the end of input") \
                        if rest.strip() else None
                continue
            if found.start() > 0:     # something before the header
                junk = bytes(self.buf[:found.start()])
                del self.buf[:found.start()]
                fields = _FIELDS.match(junk).end()
                if not junk[fields:].strip():    # blank lines, or header lines (the next message's own)
                    if fields and _LINE_END.match(junk, fields):
                        log.warning("a header block without Content-Length skipped")
                    continue
                block = _BLOCK.match(junk)       # a header block without Content-Length, then its body
                return Broken(junk[block.end():] if block else junk,
                              "a message without a valid Content-Length header")
            value = await self._header_block()
            if value is None:
                return None
            if not isinstance(value, int):
                self._skip = (math.inf, True)
                return Broken(b"", value)
            if value > self.limit:
                self._skip = (value, True)
                return Broken(b"", f"a message of {value} bytes, above the limit of {self.limit}, refused")
            return await self._body(value)

    async def _header_block(self) -> int | str | None:
        """Consume the header block at the start of the buffer: the body's
        length, or why it has none (None at end of input)."""
        pos, value = 0, b""
        while True:
            end = _LINE_END.search(self.buf, pos)
            if end is None:
                if len(self.buf) - pos > KEEP_BYTES:
                    del self.buf[:pos]
                    return "an overlong header line"
                if not await self._fill():
                    return None
                continue
            if end.start() == pos:            # the blank line
                del self.buf[:end.end()]
                break
            header = _HEADER.match(self.buf, pos)
            if header is not None and header.end() == end.end():
                value = header.group(1)
            elif _FIELDS.match(self.buf, pos).end() < end.end() or _HEADER.search(self.buf, pos + 1, end.end()):
                del self.buf[:pos]            # not a header line (the next header may end it)
                return "a header block not ended by a blank line"
            pos = end.end()
        digits = value.strip(b" \t")
        if not digits.isdigit():
            return f"an invalid Content-Length {bytes(digits[:40])!r}"
        return int(digits) if len(digits) <= 100 else f"a Content-Length of {len(digits)} digits"

    async def _body(self, n: int) -> bytes | Broken:
        start = 0
        while True:
            header = _HEADER.search(self.buf, start, n + _TAIL)
            if header is not None and header.start() < n:   # the next message began inside this one
                body = bytes(self.buf[:header.start()])
                del self.buf[:header.start()]
                return Broken(body, f"a message shorter than its Content-Length of {n}")
            if len(self.buf) >= n:
                unfinished = _OPEN_HEADER.search(self.buf, max(0, n - _TAIL))
                if unfinished is None or unfinished.start() >= n or self.eof:
                    body = bytes(self.buf[:n])
                    del self.buf[:n]
                    return body
            start = max(0, len(self.buf) - _TAIL)
            if not await self._fill() and len(self.buf) < n:
                return None

    async def _skip_body(self, limit: float, keep: bool) -> bytes:
        """Discard up to `limit` bytes, stopping at the next Content-Length
        header; the first KEEP_BYTES of them, if `keep`."""
        kept, skipped = bytearray(), 0
        while True:
            header = _HEADER.search(self.buf)
            cut, done = (header.start(), True) if header else (max(0, len(self.buf) - _TAIL), False)
            if skipped + cut >= limit:
                cut, done = int(limit - skipped), True
            if keep and len(kept) < KEEP_BYTES:
                kept += self.buf[:min(cut, KEEP_BYTES - len(kept))]
            del self.buf[:cut]
            skipped += cut
            if done:
                return bytes(kept)
            if not await self._fill():
                return bytes(kept)


def _error_response(msg_id: Any, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def decode_body(body: bytes) -> tuple[Any, dict | None]:
    """(message, None) or (None, error response to send)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        log.warning("unreadable message: %s", str(e)[:200])
        return None, _error_response(None, -32700, "parse error: the message is not valid JSON")
    if not isinstance(data, dict):
        log.warning("message is a JSON %s, not an object", type(data).__name__)
        return None, _error_response(None, -32600, "invalid request: expected a JSON object")
    return data, None


def dispatch(server: Any, data: dict) -> None:
    """Hand one decoded message to the pygls protocol."""
    try:
        message = server.protocol.structure_message(data)
    except RecursionError:
        log.warning("message nested too deeply; ignored")
        return
    try:
        server.protocol.handle_message(message)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception:  # a bug: keep serving, keep the traceback
        log.exception("unhandled error while handling %s", data.get("method", "a response"))


def send_raw(server: Any, payload: dict) -> None:
    server.protocol._send_data(payload)


def answer_broken(item: Broken) -> dict | None:
    """The error response for a badly framed request whose body still
    parses with an id; None (after a warning) for anything else."""
    try:
        data = json.loads(item.body) if item.body.strip() else None
    except (ValueError, RecursionError):
        data = None
    msg_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("method"), str) else None
    if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool):
        log.warning("%s: request %r answered with an error", item.why, str(msg_id)[:100])
        return _error_response(msg_id, -32600, f"invalid request: {item.why}")
    log.warning("%s; %s", item.why, f"{len(item.body)} bytes skipped" if item.body else "skipped")
    return None


async def message_loop(server: Any, frames: FrameReader) -> None:
    """Read and dispatch messages until end of input (or `exit`)."""
    while True:
        item = await frames.read()
        if item is None:
            return
        started = time.thread_time()
        if isinstance(item, Broken):
            data, error = None, answer_broken(item)
        else:
            data, error = decode_body(item)
        if error is not None:
            send_raw(server, error)
        elif data is not None:
            dispatch(server, data)
        # Let handlers started by this message (and the writer) run.
        await asyncio.sleep(0)
        held = time.thread_time() - started   # CPU time of this thread: descheduling does not count
        if held > LOOP_BOUND_S:
            method = data.get("method") if isinstance(data, dict) else None
            log.warning("a %s message held the event loop for %.0f ms (bound %.0f ms)",
                        str(method)[:60] if method else "broken or response", held * 1000, LOOP_BOUND_S * 1000)
