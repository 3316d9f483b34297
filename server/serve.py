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
constant time). Anything else gets a JSON-RPC error response and the
connection is closed; the server keeps listening. One authenticated client
at a time; when it disconnects or exits, the server stops, like stdio.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from keystroke.engine.errors import KeystrokeError
from keystroke.server.config import Config

log = logging.getLogger("keystroke.serve")

TOKEN_ENV = "KEYSTROKE_TOKEN"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
AUTH_ERROR_CODE = -32001   # server-defined JSON-RPC error: unauthorized


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
        try:
            message = redact_secrets(message)
        except Exception:  # noqa: BLE001
            pass
        message = message.translate(_CONTROL_ESCAPES)
        if len(message) > self.LIMIT:
            message = message[: self.LIMIT] + f"... ({len(message) - self.LIMIT} more characters)"
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

async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes | None:
    """The body of the next message; None at end of input.

    Malformed headers are skipped (the stream resynchronises on the next
    blank line); a body above `max_bytes` is read and discarded."""
    while True:
        length: int | None = None
        saw_header = False
        while True:
            try:
                line = await reader.readline()
            except ValueError:   # a header line above the reader's limit
                log.warning("overlong header line skipped")
                saw_header = True
                continue
            if not line:
                return None
            if line.strip() == b"":
                if length is not None:
                    break
                if saw_header:
                    log.warning("message without a valid Content-Length skipped")
                    saw_header = False
                continue
            saw_header = True
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = None
                if length is not None and length < 0:
                    length = None
        if length > max_bytes:
            log.warning("message of %d bytes above the limit of %d skipped", length, max_bytes)
            remaining = length
            try:
                while remaining:
                    chunk = await reader.readexactly(min(remaining, 1 << 20))
                    remaining -= len(chunk)
            except asyncio.IncompleteReadError:
                return None
            continue
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return None


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


async def message_loop(server: Any, reader: asyncio.StreamReader,
                       first: Callable[[dict | None], bool] | None = None) -> None:
    """Read and dispatch messages until end of input (or `exit`).

    `first`, when given, sees the first decoded message (None if unreadable)
    and returns False to refuse the connection (having answered already);
    when it returns True the message is dispatched as usual."""
    while True:
        body = await read_frame(reader)
        if body is None:
            return
        data, error = decode_body(body)
        if first is not None:
            if not first(data):
                return
            first = None
        if error is not None:
            send_raw(server, error)
            continue
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


def _pump_stdin(stream: Any, loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader) -> None:
    """Feed stdin into an asyncio reader from a daemon thread (which never
    blocks interpreter exit, unlike an executor thread)."""
    fd = stream.fileno()
    try:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            loop.call_soon_threadsafe(reader.feed_data, chunk)
    except (OSError, RuntimeError):
        pass
    try:
        loop.call_soon_threadsafe(reader.feed_eof)
    except RuntimeError:
        pass


async def serve_stdio(server: Any, stdin: Any, stdout: Any) -> None:
    loop = asyncio.get_running_loop()
    server.loop = loop
    reader = asyncio.StreamReader(limit=1 << 16)
    threading.Thread(target=_pump_stdin, args=(stdin, loop, reader), name="keystroke-stdin", daemon=True).start()
    server.protocol.set_writer(_StdoutWriter(stdout))
    await message_loop(server, reader)


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


async def serve_tcp(server: Any, host: str, port: int, token: str,
                    on_listening: Callable[[int], None] | None = None) -> int:
    """Serve one authenticated client; its exit status (0 when it just disconnects)."""
    loop = asyncio.get_running_loop()
    server.loop = loop
    finished = asyncio.Event()
    busy = False
    exit_code = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, exit_code
        peer = writer.get_extra_info("peername")

        def refuse(msg_id: Any, why: str) -> None:
            log.warning("refused TCP client %s: %s", peer, why)
            body = json.dumps(_error_response(msg_id if isinstance(msg_id, (int, str)) else None,
                                              AUTH_ERROR_CODE, f"unauthorized: {why}")).encode()
            writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

        def first(data: dict | None) -> bool:
            nonlocal busy
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
            busy = True
            server.protocol.set_writer(writer)
            return True   # message_loop dispatches it

        try:
            await message_loop(server, reader, first=first)
        except SystemExit as e:   # the `exit` notification: stop serving, keep its status
            exit_code = e.code if isinstance(e.code, int) else 0
        except (ConnectionError, OSError) as e:
            log.info("TCP client %s: %s", peer, e)
        finally:
            authorized = busy and server.protocol.writer is writer
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, OSError, RuntimeError):
                pass
            if authorized:
                finished.set()

    listener = await asyncio.start_server(connection, host, port, limit=1 << 16)
    bound = listener.sockets[0].getsockname()[1]
    log.info("listening on %s:%s", host, bound)
    if on_listening:
        on_listening(bound)
    async with listener:
        await finished.wait()
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


def main(args: argparse.Namespace) -> int:
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
    try:
        if hostport is not None:
            def announce(port: int) -> None:
                print(f"keystroke: listening on {hostport[0]}:{port}", file=sys.stderr, flush=True)
            code = asyncio.run(serve_tcp(server, hostport[0], hostport[1], token, announce))
            log.info("exit (status %d)", code)
            return code
        else:
            asyncio.run(serve_stdio(server, sys.stdin.buffer, stdout))
    except SystemExit as e:   # the `exit` notification
        code = e.code if isinstance(e.code, int) else 0
        log.info("exit (status %d)", code)
        return code
    except KeyboardInterrupt:
        return 130
    finally:
        server.scheduler.close()
    log.info("input closed; stopping")
    return 0
