"""HTTP for the remote backend: JSON requests and server-sent-event streams.

Plain `http.client`, one connection per request, so that closing a stream
closes its socket: every serving engine we talk to (vLLM, llama.cpp's
server, llama-cpp-python's, TGI, Ollama) aborts a generation whose client
went away, which is how cancellation stops the remote decode.

Errors come in two kinds, because the caller treats them differently:
`Unreachable` (refused, reset, timed out, a 5xx, 408 or 429: worth a retry,
and counted by the circuit breaker) and `Rejected` (any other 4xx or a
malformed answer: the server is there and said no; retrying will not help).
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

RETRYABLE_STATUS = frozenset({408, 429})
MAX_ERROR_BODY = 2000


class RemoteError(Exception):
    """A failure talking to the remote engine; the message is meant for a person.

    `status` is the HTTP status when the server answered with one, else 0.
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(RemoteError):
    """The server could not be reached or failed on its side (retry, count it)."""


class Rejected(RemoteError):
    """The server answered and refused the request (do not retry)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: scheme, host, port and the path prefix of its URL."""

    scheme: str
    host: str
    port: int
    base_path: str   # without a trailing slash; '' or e.g. '/v1' or '/proxy/llm'

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"engine.url must start with http:// or https://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"engine.url has no host name: {url!r}")
        if parts.username or parts.password:
            raise ValueError("engine.url must not hold credentials; name an environment variable in "
                             "engine.apiKeyEnv or a file in engine.apiKeyFile instead")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"engine.url has an invalid port: {url!r}") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"

    def openai_path(self, name: str) -> str:
        """`/v1/<name>` under the base path, whether or not the URL already ends in /v1."""
        base = self.base_path if self.base_path.endswith("/v1") else self.base_path + "/v1"
        return f"{base}/{name}"

    def root_path(self, name: str) -> str:
        """`/<name>` at the server's root (llama.cpp's /infill, /tokenize), under any proxy prefix."""
        base = self.base_path[:-3] if self.base_path.endswith("/v1") else self.base_path
        return f"{base}/{name}"


def tls_context(verify: bool) -> ssl.SSLContext:
    """The system's default verifying context, or (only when asked) one that checks nothing."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """Opens requests to one endpoint with fixed headers, timeout and TLS settings."""

    def __init__(self, endpoint: Endpoint, *, timeout_s: float, api_key: str | None = None,
                 verify_tls: bool = True) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ssl = tls_context(verify_tls) if endpoint.scheme == "https" else None
        self._headers = {"Content-Type": "application/json", "User-Agent": "keystroke"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never shows the headers (the key)
        return f"Client({self.endpoint.display})"

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        e = self.endpoint
        if self._ssl is not None:
            return http.client.HTTPSConnection(e.host, e.port, timeout=timeout_s, context=self._ssl)
        return http.client.HTTPConnection(e.host, e.port, timeout=timeout_s)

    def _send(self, method: str, path: str, body: dict | None, accept: str,
              timeout_s: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connect(timeout_s or self.timeout_s)
        headers = dict(self._headers, Accept=accept)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except Exception as err:
            conn.close()
            raise _as_remote_error(err, self.endpoint) from err
        if resp.status >= 300:
            try:
                detail = _error_detail(resp.read(MAX_ERROR_BODY))
            except Exception:  # noqa: BLE001 - the status says enough
                detail = ""
            finally:
                conn.close()
            message = f"{method} {path} answered HTTP {resp.status} {resp.reason}" + (f": {detail}" if detail else "")
            if (resp.status >= 500 and resp.status != 501) or resp.status in RETRYABLE_STATUS:  # 501: never will
                raise Unreachable(message, resp.status)
            raise Rejected(message, resp.status)
        return conn, resp

    def get_json(self, path: str, timeout_s: float | None = None) -> object:
        return self._json("GET", path, None, timeout_s)

    def post_json(self, path: str, body: dict, timeout_s: float | None = None) -> object:
        return self._json("POST", path, body, timeout_s)

    def _json(self, method: str, path: str, body: dict | None, timeout_s: float | None) -> object:
        conn, resp = self._send(method, path, body, "application/json", timeout_s)
        try:
            return _parse_json(resp.read(), path)
        except (OSError, http.client.HTTPException) as err:
            raise _as_remote_error(err, self.endpoint) from err
        finally:
            conn.close()

    def stream(self, path: str, body: dict) -> "EventStream":
        """POST and return the response's events; a JSON (non-streamed) answer is one event."""
        conn, resp = self._send("POST", path, body, "text/event-stream", None)
        return EventStream(conn, resp, self.endpoint)


class EventStream:
    """The `data:` payloads of a server-sent-event response, decoded as JSON, one per event.

    Iteration ends at `data: [DONE]` or at the end of the body. `close()`
    may be called from another thread: it shuts the socket down, so a read
    blocked on a silent server returns at once.
    """

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 endpoint: Endpoint) -> None:
        self._conn = conn
        self._resp = resp
        self._endpoint = endpoint
        self._sock = conn.sock
        self.closed = False
        self.is_sse = "text/event-stream" in (resp.getheader("Content-Type") or "")

    def __iter__(self) -> Iterator[dict]:
        if not self.is_sse:
            yield self._whole_json()
            return
        data: list[str] = []
        while True:
            try:
                raw = self._resp.readline()
            except Exception as err:  # noqa: BLE001 - after abort() http.client may fail in odd ways
                if self.closed:
                    return
                if isinstance(err, (OSError, http.client.HTTPException, ValueError)):
                    raise _as_remote_error(err, self._endpoint, during_stream=True) from err
                raise
            if not raw:
                if self.closed:
                    return
                if data:  # a last event without its blank line
                    yield from self._event(data)
                    return
                raise Unreachable(f"the connection to {self._endpoint.display} ended before the answer did")
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line:
                if line.startswith(":"):
                    continue        # a comment (keep-alive ping)
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
                continue
            if data:
                if data == ["[DONE]"]:
                    return
                yield from self._event(data)
                data = []

    def _event(self, data: list[str]) -> Iterator[dict]:
        text = "\n".join(data)
        if text.strip() == "[DONE]":
            return
        event = _parse_json(text.encode("utf-8"), "the event stream")
        if not isinstance(event, dict):
            raise Rejected(f"unexpected event from the server: {text[:200]!r}")
        yield event

    def _whole_json(self) -> dict:
        try:
            body = self._resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise _as_remote_error(err, self._endpoint, during_stream=True) from err
        event = _parse_json(body, "the answer")
        if not isinstance(event, dict):
            raise Rejected(f"unexpected answer from the server: {body[:200]!r}")
        return event

    def abort(self) -> None:
        """Shut the socket down, from any thread: a blocked read returns, the server sees us leave."""
        self.closed = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the connection (from the reading thread); the server stops generating."""
        self.abort()
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - closing must never fail the caller
            pass


def _parse_json(body: bytes, what: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(f"the server's answer to {what} is not JSON: {body[:200]!r}") from None


def _error_detail(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return text[:300]


def _as_remote_error(err: BaseException, endpoint: Endpoint, during_stream: bool = False) -> RemoteError:
    if isinstance(err, RemoteError):
        return err
    if isinstance(err, ssl.SSLCertVerificationError):
        return Rejected(f"the TLS certificate of {endpoint.display} could not be verified "
                        f"({err.verify_message or err}); install its CA in the system store, or set "
                        "engine.verifyTls to false only on a network you trust")
    if isinstance(err, (socket.timeout, TimeoutError)):
        what = "stopped answering" if during_stream else "did not answer in time"
        return Unreachable(f"{endpoint.display} {what}")
    if isinstance(err, (OSError, http.client.HTTPException)):
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        if during_stream:
            return Unreachable(f"the stream from {endpoint.display} broke: {reason}")
        return Unreachable(f"cannot connect to {endpoint.display}: {reason}")
    return Unreachable(f"{type(err).__name__}: {err}")
