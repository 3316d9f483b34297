"""Fixtures for end-to-end tests of `keystroke serve`: a real subprocess
started as `python -m keystroke.server.cli serve`, driven over stdio by
pytest-lsp's client."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp.client import LanguageClient, make_test_lsp_client

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

def tiny_model(path: Path, family: str = "llama") -> Path:
    from tests.tiny import make_tiny_model_dir
    return make_tiny_model_dir(path, family=family, seed=0)


def serve_command(model: str | Path, log_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "keystroke.server.cli", "serve", "--model", str(model),
            "--log-file", str(log_file), "--log-level", "debug", *extra]


def client_capabilities(*, inline: bool = True, resolve: bool = True, dynamic: bool = True) -> types.ClientCapabilities:
    """What VS Code 1.139 says about the features keystroke uses (inline=True),
    or an eglot/Neovim-0.11-like client (inline=False)."""
    return types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(dynamic_registration=True),
            completion=types.CompletionClientCapabilities(dynamic_registration=dynamic),
            inline_completion=types.InlineCompletionClientCapabilities() if inline else None,
            code_action=types.CodeActionClientCapabilities(
                data_support=True,
                resolve_support=types.ClientCodeActionResolveOptions(properties=["edit"]) if resolve else None),
        ),
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(
            apply_edit=True, configuration=True,
            workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)),
    )


class Session:
    """A started server, its client and its log file."""

    def __init__(self, client: LanguageClient, log_file: Path, init: types.InitializeResult) -> None:
        self.client = client
        self.log_file = log_file
        self.init = init
        self.versions: dict[str, int] = {}

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    async def status(self) -> dict:
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="keystroke.status"))

    async def wait_ready(self, timeout: float = 180.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            st = await self.status()
            if st["state"] == "ready":
                return st
            assert st["state"] != "failed", st
            assert asyncio.get_running_loop().time() < deadline, f"model not ready after {timeout}s: {st}"
            await asyncio.sleep(0.1)

    def open(self, uri: str, text: str, language_id: str = "python") -> None:
        self.versions[uri] = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)))

    def change(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.versions[uri] = self.versions.get(uri, 1) + 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(*start), end=types.Position(*end)), text=text)]))

    async def inline(self, uri: str, line: int, character: int, *, invoked: bool = False,
                     selected: types.SelectedCompletionInfo | None = None) -> Any:
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        return await self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character),
            context=types.InlineCompletionContext(trigger_kind=kind, selected_completion_info=selected)))

    async def raw_request(self, method: str, params: Any, timeout: float = 30.0, msg_id: Any = None) -> dict:
        """Send a request as raw JSON (bypassing the client's type checks)
        and return the raw response message."""
        return await asyncio.wait_for(raw_request(self.client, method, params, msg_id), timeout)

    def cancel(self, msg_id: Any) -> None:
        self.client.protocol.notify("$/cancelRequest", types.CancelParams(id=msg_id))


async def raw_request(client: LanguageClient, method: str, params: Any, msg_id: Any = None) -> dict:
    """Write a JSON-RPC request the typed client could not send; wait for its answer."""
    import uuid
    msg_id = msg_id if msg_id is not None else f"raw-{uuid.uuid4().hex}"
    fut: asyncio.Future = asyncio.get_running_loop().create_future()
    proto = client.protocol
    original = proto.handle_message

    def spy(message: Any) -> None:
        if getattr(message, "id", None) == msg_id and not hasattr(message, "method") and not fut.done():
            fut.set_result(message)
            return
        original(message)

    proto.handle_message = spy
    try:
        send_raw(client, {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        message = await fut
    finally:
        proto.handle_message = original
    error = getattr(message, "error", None)
    if error is not None:
        return {"id": msg_id, "error": {"code": int(error.code), "message": error.message}}
    return {"id": msg_id, "result": getattr(message, "result", None)}


def send_raw(client: LanguageClient, payload: Any) -> None:
    """Write any JSON value as one framed message."""
    send_bytes(client, json.dumps(payload).encode())


def send_bytes(client: LanguageClient, body: bytes, *, header: bytes | None = None) -> None:
    writer = client.protocol.writer
    head = header if header is not None else b"Content-Length: %d\r\n\r\n" % len(body)
    writer.write(head + body)


@pytest_asyncio.fixture
async def start_server(tmp_path: Path):
    """Factory: `await start_server(model, init_options=..., capabilities=...)` -> Session."""
    sessions: list[Session] = []

    async def start(model: str | Path, *, init_options: Any = None,
                    capabilities: types.ClientCapabilities | None = None,
                    extra_args: tuple[str, ...] = (), ready: bool = True,
                    log_name: str = "serve.log") -> Session:
        log_file = tmp_path / log_name
        client = make_test_lsp_client()
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
        await client.start_io(*serve_command(model, log_file, *extra_args), env=env)
        opts = {"cacheDir": str(tmp_path / "kvcache")}
        if init_options is not None:
            opts.update(init_options)
        init = await client.initialize_session(types.InitializeParams(
            capabilities=capabilities or client_capabilities(),
            root_uri=tmp_path.as_uri(), initialization_options=opts))
        session = Session(client, log_file, init)
        sessions.append(session)
        if ready:
            await session.wait_ready()
        return session

    yield start
    for s in sessions:
        try:
            await asyncio.wait_for(s.client.shutdown_session(), 30)
        except Exception:  # noqa: BLE001 - a test may have killed it on purpose
            pass
        await s.client.stop()


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def cursor_at_end(text: str) -> tuple[int, int]:
    """The LSP (line, UTF-16 character) of the end of `text`."""
    lines = text.split("\n")
    return len(lines) - 1, utf16_len(lines[-1])


def assert_clean_log(text: str) -> None:
    """No unhandled exception: every traceback in the log is a bug."""
    assert "Traceback" not in text, text[text.index("Traceback") - 2000: text.index("Traceback") + 3000]


# ---------------------------------------------------------------------------
# A raw JSON-RPC client (blocking), for what a well-behaved client never sends
# ---------------------------------------------------------------------------

class RawClient:
    """Frames and reads LSP messages over a pair of byte streams (a
    subprocess's pipes or a socket), collecting responses by id."""

    def __init__(self, read: Any, write: Any) -> None:
        import queue
        import threading
        self._read, self._write = read, write
        self.responses: dict[Any, dict] = {}
        self.notifications: list[dict] = []
        self.requests_from_server: list[dict] = []
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._unanswered: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()

    def _read_chunk(self) -> bytes:
        try:
            return self._read(65536)
        except OSError:   # the socket or pipe was closed under us
            return b""

    def _reader(self) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = self._read_chunk()
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
                             .split(b":")[1])
                while len(buf) < length:
                    chunk = self._read_chunk()
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                msg = json.loads(body)
                with self._cond:
                    if "method" in msg and "id" in msg:
                        self.requests_from_server.append(msg)
                        # answer the server's requests (progress tokens, registrations, applyEdit)
                        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
                    elif "method" in msg:
                        self.notifications.append(msg)
                    else:
                        self.responses[msg.get("id")] = msg
                    self._cond.notify_all()
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def send_bytes(self, data: bytes) -> None:
        self._write(data)

    def send(self, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self._write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params: Any, msg_id: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait_response(self, msg_id: Any, timeout: float = 60.0) -> dict:
        import time
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self.responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise TimeoutError(f"no response to {msg_id!r}")
                self._cond.wait(left)
            return self.responses[msg_id]

    def call(self, method: str, params: Any, msg_id: Any, timeout: float = 60.0) -> dict:
        self.request(method, params, msg_id)
        return self.wait_response(msg_id, timeout)

    def wait_notification(self, predicate: Any, timeout: float = 30.0) -> dict:
        import time
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.notifications:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise TimeoutError("notification not seen")
                self._cond.wait(left)


def start_raw_server(model: str | Path, log_file: Path, *extra: str, env: dict | None = None):
    """`keystroke serve` over stdio driven by a RawClient: (process, client)."""
    import subprocess
    proc = subprocess.Popen(serve_command(model, log_file, *extra), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env or dict(os.environ, XDG_CACHE_HOME=str(log_file.parent / "cache")))

    def write(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()
    return proc, RawClient(proc.stdout.read1, write)


def initialize_raw(client: RawClient, root: Path, options: dict | None = None, msg_id: Any = "init") -> dict:
    caps = json.loads(json.dumps(types_to_json(client_capabilities())))
    answer = client.call("initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": caps,
                                        "initializationOptions": options or {}}, msg_id)
    client.notify("initialized", {})
    return answer


def types_to_json(obj: Any) -> Any:
    from lsprotocol import converters
    return converters.get_converter().unstructure(obj)


def wait_ready_raw(client: RawClient, timeout: float = 180.0) -> dict:
    import time
    import uuid
    deadline = time.monotonic() + timeout
    while True:
        st = client.call("workspace/executeCommand", {"command": "keystroke.status"}, f"ready-{uuid.uuid4().hex}")["result"]
        if st["state"] == "ready":
            return st
        assert st["state"] != "failed", st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The model the end-to-end tests serve: a tiny random-weight Llama."""
    return str(tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def reference_backend(model: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same model loaded in this process, to derive what the server must answer."""
    from keystroke.engine.engine import Engine
    return Engine.load(model, cache_dir=tmp_path_factory.mktemp("refcache"), persist=False)


@pytest.fixture(scope="session")
def real_model() -> str:
    """The default model's file, found as users find it: through the registry
    by name (assembled from its package on first use), never by a path."""
    from keystroke.engine import registry
    return str(registry.resolve(registry.DEFAULT_MODEL))


# ---------------------------------------------------------------------------
# The server in process: raw JSON-RPC dicts in, the frames it writes collected
# ---------------------------------------------------------------------------

class LocalServer:
    """`create_server()` fed raw JSON-RPC messages through its protocol
    (`structure_message`, then `handle_message`), as the transport does,
    with what it writes collected. Without a `loader` no model is loaded (it fails)."""

    def __init__(self, loader: Any = None) -> None:
        from keystroke.server.lsp import create_server

        def no_model(config: Any) -> Any:
            raise RuntimeError("no model in process")
        self.server = create_server(loader=loader or no_model)
        self.protocol = self.server.protocol
        self._written = b""
        self.protocol.set_writer(self)

    def write(self, data: bytes) -> None:   # the protocol's writer
        self._written += data

    def send(self, message: dict) -> None:
        self.protocol.handle_message(self.protocol.structure_message(json.loads(json.dumps(message))))

    def messages(self) -> list[dict]:
        out, buf = [], self._written
        while b"\r\n\r\n" in buf:
            head, buf = buf.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            out.append(json.loads(buf[:length]))
            buf = buf[length:]
        return out

    def response(self, msg_id: Any) -> dict | None:
        return next((m for m in self.messages() if m.get("id") == msg_id and "method" not in m), None)

    async def call(self, method: str, params: Any, msg_id: Any, timeout: float = 10.0) -> dict:
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        deadline = asyncio.get_running_loop().time() + timeout
        while (answer := self.response(msg_id)) is None:
            assert asyncio.get_running_loop().time() < deadline, f"no response to {msg_id!r}"
            await asyncio.sleep(0.005)
        return answer

    async def initialize(self) -> dict:
        return await self.call("initialize", {"processId": None, "rootUri": None, "capabilities": {}}, "init")

    def open(self, uri: str, text: str, version: int = 1, language_id: str = "python") -> None:
        self.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": language_id, "version": version, "text": text}}})

    def change(self, uri: str, version: int, changes: list[dict]) -> None:
        self.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": uri, "version": version}, "contentChanges": changes}})

    def text(self, uri: str) -> str | None:
        snap = self.server.snapshot(uri)
        return None if snap is None else snap.text


@pytest_asyncio.fixture
async def local_server() -> LocalServer:
    """An initialized `LocalServer` (no `initialized`: the engine never loads)."""
    local = LocalServer()
    answer = await local.initialize()
    assert "result" in answer, answer
    return local
