"""`keystroke serve`: run the language server over stdio or TCP.

Transports: stdio here, TCP (with its token) in `tcp`; both read LSP's base
protocol through `framing`, which answers or skips garbage on the wire.

Exit. The engine worker is stopped (its request cancelled, joined with a
bounded wait) before the process ends: see `exit_now`.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import logging.handlers
import os
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from keystroke.server.config import Config
from keystroke.server.framing import FrameReader, message_loop
from keystroke.server.tcp import TOKEN_ENV, parse_hostport, read_token, serve_tcp

log = logging.getLogger("keystroke.serve")

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
