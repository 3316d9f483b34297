"""`keystroke serve --tcp`: a listener that lets one authenticated client in.

`--tcp HOST:PORT` refuses to start without a token, read from the
KEYSTROKE_TOKEN environment variable or from `--token-file` (never from the
command line, where other users could read it in the process list). The
first message of a connection must be the `initialize` request with
`initializationOptions.token` equal to the token (compared in constant
time), at most AUTH_FRAME_BYTES long and sent within AUTH_TIMEOUT_S.
Anything else gets a JSON-RPC error response and the connection is closed;
the server keeps listening. One authenticated client at a time; when it
disconnects or exits, the server stops, like stdio.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

from keystroke.engine.errors import KeystrokeError

from keystroke.server.framing import (MAX_MESSAGE_BYTES, Broken, FrameReader, _error_response, decode_body,
                                      dispatch, message_loop)

log = logging.getLogger("keystroke.serve")

TOKEN_ENV = "KEYSTROKE_TOKEN"
AUTH_ERROR_CODE = -32001   # server-defined JSON-RPC error: unauthorized
AUTH_TIMEOUT_S = 10.0      # a TCP connection must authenticate within this many seconds ...
AUTH_TIMEOUT_ENV = "KEYSTROKE_AUTH_TIMEOUT"   # ... or within $KEYSTROKE_AUTH_TIMEOUT
AUTH_FRAME_BYTES = 64 * 1024   # the largest first message (initialize) of a TCP connection


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
