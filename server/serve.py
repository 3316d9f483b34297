"""`keystroke serve`: run the language server over stdio or TCP.

Transports. Both read LSP's base protocol (Content-Length framed JSON-RPC)
with our own framing loop rather than pygls's, so that garbage on the wire
(bad headers, invalid JSON, oversized bodies) is answered or skipped with a
warning instead of a traceback, and so that TCP can check a token first.

TCP authentication. `--tcp HOST:PORT` refuses to start without a token,
read from the KEYSTROKE_TOKEN environment variable or from `--token-file`
(never from the command line, where other users could read it in the
process list). The first message of a connection must be the `initialize`
request with `initializationOptions.token` equal to the token (compared in
constant time), at most AUTH_FRAME_BYTES long and sent within
AUTH_TIMEOUT_S. Anything else gets a JSON-RPC error response and the
connection is closed; the server keeps listening. One authenticated client
at a time; when it disconnects or exits, the server stops, like stdio.

Exit. The engine worker is stopped (its request cancelled, joined with a
bounded wait) before the process ends: see `exit_now`.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import json
import logging
import logging.handlers
import math
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from keystroke.engine.errors import KeystrokeError
from keystroke.server.config import Config

log = logging.getLogger("keystroke.serve")

TOKEN_ENV = "KEYSTROKE_TOKEN"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
AUTH_ERROR_CODE = -32001   # server-defined JSON-RPC error: unauthorized
AUTH_TIMEOUT_S = 10.0      # a TCP connection must authenticate within this many seconds ...
AUTH_TIMEOUT_ENV = "KEYSTROKE_AUTH_TIMEOUT"   # ... or within $KEYSTROKE_AUTH_TIMEOUT
AUTH_FRAME_BYTES = 64 * 1024   # the largest first message (initialize) of a TCP connection
WORKER_STOP_S = 5.0        # at exit, how long the engine worker may take to finish its job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stdio", action="store_true",
                        help="talk over stdin/stdout (the default; accepted because many clients pass it)")
    parser.add_argument("--tcp", metavar="HOST:PORT", default=None,
                        help=f"listen on TCP instead of stdio; needs a token in ${TOKEN_ENV} or --token-file")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the TCP auth token (clients send it as initializationOptions.token)")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="log file (default: keystroke/serve.log in the user cache directory)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------

def default_log_file() -> Path:
    from keystroke.engine import cache_root
    return cache_root() / "serve.log"


# C0 controls other than newline and tab, shown escaped (a NUL makes a log "binary").
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in range(32) if chr(c) not in "\n\t"}


class _RedactingFilter(logging.Filter):
    """Secrets never reach a log, and no record is longer than a few KB
    (a 50 MB document in a log line would be a problem of its own)."""

    LIMIT = 4000

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        from keystroke.server.secrets import redact_secrets
        more = len(message) - self.LIMIT
        # Cut before redacting (its time grows with the length), with a margin, so that a
        # secret straddling the limit is still recognised, and so redacted.
        message = message[: self.LIMIT + 1000]
        try:
            message = redact_secrets(message)
        except Exception:  # noqa: BLE001
            pass
        message = message.translate(_CONTROL_ESCAPES)
        if len(message) > self.LIMIT or more > 0:
            message = message[: self.LIMIT] + f"... ({max(more, len(message) - self.LIMIT)} more characters)"
        record.msg, record.args = message, ()
        return True


class ClientLogHandler(logging.Handler):
    """Forwards keystroke's log records to the editor with window/logMessage."""

    def __init__(self, server: Any, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.server = server
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        server = self.server
        loop = server.loop
        if loop is None or loop.is_closed() or getattr(self._local, "busy", False) \
                or not getattr(server.protocol, "initialize_received", False):
            return
        from lsprotocol import types
        kind = (types.MessageType.Error if record.levelno >= logging.ERROR else
                types.MessageType.Warning if record.levelno >= logging.WARNING else
                types.MessageType.Info if record.levelno >= logging.INFO else types.MessageType.Log)
        params = types.LogMessageParams(type=kind, message=self.format(record))

        def send() -> None:
            self._local.busy = True
            try:
                if not server.protocol._shutdown and server.protocol.writer is not None:
                    server.window_log_message(params)
            except Exception:  # noqa: BLE001 - a closed pipe must not recurse into logging
                pass
            finally:
                self._local.busy = False
        try:
            if threading.current_thread() is threading.main_thread():
                send()
            else:
                loop.call_soon_threadsafe(send)
        except RuntimeError:
            pass


def setup_logging(log_file: Path | None, level: str) -> Path | None:
    """Log to a file (never to stdout: that is the protocol channel)."""
    path = log_file or default_log_file()
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    handler: logging.Handler
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=10_000_000, backupCount=2,
                                                       encoding="utf-8", errors="backslashreplace")
    except OSError as e:
        print(f"keystroke: cannot write the log file {path}: {e}; logging to stderr", file=sys.stderr)
        handler, path = logging.StreamHandler(sys.stderr), None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactingFilter())
    handler.setLevel(getattr(logging, level.upper()))
    root.addHandler(handler)
    # pygls logs every message body at INFO (document text included).
    logging.getLogger("pygls").setLevel(logging.WARNING)
    logging.getLogger("keystroke").setLevel(getattr(logging, level.upper()))
    return path


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# stdio
# ---------------------------------------------------------------------------

class _StdoutWriter:
    """pygls writer on a binary stream; close() closes it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the client went away: that is shutdown, not an error
            log.info("output closed by the client; dropping a %d-byte message", len(data))

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001
            pass


class _PipeReader:
    """stdin as an async byte source, read by a daemon thread (which never
    blocks interpreter exit, unlike an executor thread). At most a few
    chunks wait for the event loop: the thread stops reading until they are
    taken, so a client writing a huge body faster than it is skipped does
    not fill memory. `read` returns b"" at end of input."""

    CHUNK = 1 << 16

    def __init__(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        self.eof = False
        threading.Thread(target=self._pump, args=(stream.fileno(), loop), name="keystroke-stdin",
                         daemon=True).start()

    def _pump(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        chunk = b"?"
        while chunk:
            try:
                chunk = os.read(fd, self.CHUNK)
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(self.queue.put(chunk), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):   # the loop is gone
                return

    async def read(self, n: int = -1) -> bytes:
        if self.eof:
            return b""
        chunk = await self.queue.get()
        self.eof = not chunk
        return chunk


async def serve_stdio(server: Any, stdin: Any, stdout: Any) -> None:
    loop = asyncio.get_running_loop()
    server.loop = loop
    server.protocol.set_writer(_StdoutWriter(stdout))
    await message_loop(server, FrameReader(_PipeReader(stdin, loop)))


# ---------------------------------------------------------------------------
# TCP
# ---------------------------------------------------------------------------

def read_token(token_file: Path | None) -> str:
    """The TCP token from --token-file or $KEYSTROKE_TOKEN; raises if none."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise KeystrokeError(f"cannot read the token file {token_file}: {e}",
                                 "write the token alone in a file only you can read") from None
        if token_file.stat().st_mode & 0o077:
            log.warning("token file %s is readable by other users", token_file)
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise KeystrokeError("--tcp needs an auth token and none was given",
                             f"set ${TOKEN_ENV} or pass --token-file FILE (never the token itself)")
    if len(token) < 16:
        log.warning("the TCP token is short (%d characters); use 16 or more", len(token))
    return token


def check_token(data: dict, token: str) -> tuple[bool, str]:
    """Is `data` an `initialize` request carrying `token`? Removes the token
    from the message either way, so it reaches neither config nor logs."""
    if data.get("method") != "initialize" or "id" not in data:
        return False, "the first message must be the initialize request"
    params = data.get("params")
    options = params.get("initializationOptions") if isinstance(params, dict) else None
    given = options.pop("token", None) if isinstance(options, dict) else None
    if not isinstance(given, str):
        return False, "initializationOptions.token is missing"
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
        return False, "initializationOptions.token is wrong"
    return True, ""


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number <= 65535:
        raise KeystrokeError(f"--tcp {value!r} is not HOST:PORT", "for example --tcp 127.0.0.1:2087")
    return host.strip("[]"), number


def auth_timeout() -> float:
    """AUTH_TIMEOUT_S, or $KEYSTROKE_AUTH_TIMEOUT when that is a positive number of seconds."""
    try:
        value = float(os.environ.get(AUTH_TIMEOUT_ENV, AUTH_TIMEOUT_S))
    except ValueError:
        value = AUTH_TIMEOUT_S
    return value if 0 < value < math.inf else AUTH_TIMEOUT_S


async def serve_tcp(server: Any, host: str, port: int, token: str,
                    on_listening: Callable[[int], None] | None = None,
                    timeout: float | None = None) -> int:
    """Serve one authenticated client; its exit status (0 when it just disconnects).

    A connection has `timeout` seconds (default `auth_timeout()`) to send
    its initialize request, of at most AUTH_FRAME_BYTES; when the
    authenticated client goes, the server stops at once, closing any other
    connection (which waits for nothing)."""
    timeout = auth_timeout() if timeout is None else timeout
    loop = asyncio.get_running_loop()
    server.loop = loop
    finished = asyncio.Event()
    busy = False
    exit_code = 0
    writers: set[asyncio.StreamWriter] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, exit_code
        peer = writer.get_extra_info("peername")
        writers.add(writer)
        authorized = False

        def refuse(msg_id: Any, why: str) -> None:
            log.warning("refused TCP client %s: %s", peer, why)
            body = json.dumps(_error_response(msg_id if isinstance(msg_id, (int, str)) else None,
                                              AUTH_ERROR_CODE, f"unauthorized: {why}")).encode()
            writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

        def admit(data: dict | None) -> bool:
            nonlocal busy, authorized
            if data is None:
                refuse(None, "the first message is not a JSON object")
                return False
            if busy:
                refuse(data.get("id"), "another client is connected")
                return False
            ok, why = check_token(data, token)
            if not ok:
                refuse(data.get("id"), why)
                return False
            busy = authorized = True
            server.protocol.set_writer(writer)
            return True

        frames = FrameReader(reader, limit=AUTH_FRAME_BYTES)
        try:
            try:
                item = await asyncio.wait_for(frames.read(), timeout)
            except asyncio.TimeoutError:
                refuse(None, f"not authenticated within {timeout:g} s")
                return
            if item is None:
                return
            if isinstance(item, Broken):
                refuse(None, item.why)
                return
            data = decode_body(item)[0]
            if not admit(data):
                return
            frames.limit = MAX_MESSAGE_BYTES
            dispatch(server, data)
            await message_loop(server, frames)
        except SystemExit as e:   # the `exit` notification: stop serving, keep its status
            exit_code = e.code if isinstance(e.code, int) else 0
        except (ConnectionError, OSError) as e:
            log.info("TCP client %s: %s", peer, e)
        except asyncio.CancelledError:
            pass   # the server is stopping (asyncio 3.11 logs a cancelled connection task as an error)
        finally:
            writers.discard(writer)
            try:
                await asyncio.wait_for(writer.drain(), 1)   # a client that reads nothing must not hold us
            except (ConnectionError, OSError, RuntimeError, asyncio.TimeoutError):
                pass
            writer.close()
            if authorized:
                finished.set()

    listener = await asyncio.start_server(connection, host, port, limit=1 << 16)
    bound = listener.sockets[0].getsockname()[1]
    log.info("listening on %s:%s", host, bound)
    if on_listening:
        on_listening(bound)
    try:
        await finished.wait()
    finally:
        # Not `async with listener`: its wait_closed waits (Python 3.12+) for
        # every connection, an idle unauthenticated one included.
        listener.close()
        for other in list(writers):
            other.close()
    return exit_code


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def build_server(args: argparse.Namespace) -> Any:
    from keystroke.server.lsp import create_server
    config = Config()
    if getattr(args, "model", None):
        config = Config(model=str(args.model))
    if getattr(args, "threads", None):
        from dataclasses import replace
        config = replace(config, threads=args.threads)
    return create_server(config, quant=getattr(args, "quant", "auto") or "auto")


def main(args: argparse.Namespace) -> NoReturn:
    """Serve until the client leaves, then end the process (see `exit_now`)."""
    token = None
    hostport = None
    if args.tcp:
        hostport = parse_hostport(args.tcp)
        token = read_token(args.token_file)   # raises KeystrokeError: no token, no server
    log_path = setup_logging(args.log_file, args.log_level)
    server = build_server(args)
    server_log = ClientLogHandler(server)
    server_log.setFormatter(logging.Formatter("%(message)s"))
    server_log.addFilter(_RedactingFilter())
    logging.getLogger("keystroke").addHandler(server_log)
    log.info("keystroke serve starting (%s), log file %s", "tcp" if hostport else "stdio", log_path)
    # Anything printed by accident must not corrupt the protocol on stdout.
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr
    code = 0
    try:
        if hostport is not None:
            def announce(port: int) -> None:
                print(f"keystroke: listening on {hostport[0]}:{port}", file=sys.stderr, flush=True)
            code = asyncio.run(serve_tcp(server, hostport[0], hostport[1], token, announce))
        else:
            asyncio.run(serve_stdio(server, sys.stdin.buffer, stdout))
            log.info("input closed; stopping")
    except SystemExit as e:   # the `exit` notification
        code = e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        code = 130
    finally:
        # asyncio.run has cancelled every request: the running decode stops
        # within one token, queued ones are skipped, a KV spill finishes.
        stopped = server.scheduler.close(wait=WORKER_STOP_S)
    if not stopped:
        log.warning("the engine did not stop within %g s; exiting without it", WORKER_STOP_S)
    log.info("exit (status %d)", code)
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown.

    Exiting while the engine worker is inside torch aborts the process
    ("terminate called without an active exception", SIGABRT), and even
    with it stopped, torch's teardown of its thread pools takes most of a
    second that an editor restarting the server waits for. Nothing is
    lost: output is flushed here, and the disk caches commit each write (a
    KV spill abandoned half-way leaves an entry that is not indexed yet or
    fails its checksum, never a wrong one)."""
    logging.shutdown()
    for stream in (sys.stderr, sys.__stdout__):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
