"""The keystroke language server on pygls 2.

Handlers are thin: they turn LSP params into plain values, hand the work to
the scheduler and to plain functions below, and turn the answer back into
LSP types. Every handler catches its own exceptions (a bug is logged with
its traceback and answered empty); hostile or malformed input is answered
with an error or nothing, never with a crash.

Positions always go through the document's pygls position codec (UTF-16 by
default), with the same line model pygls uses for incremental sync.
"""
from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import attrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.uris import to_fs_path
from pygls.workspace.position_codec import PositionCodec, ServerTextPosition

from keystroke.engine.api import CompletionRequest, CompletionResult, SamplingParams, StopPolicy
from keystroke.engine.errors import KeystrokeError
from keystroke.server import actions
from keystroke.server.config import Config, engine_changed, parse_config
from keystroke.server.context import ContextConfig, DocumentView, PromptParts, approx_tokens, build_context
from keystroke.server.postprocess import dedupe, postprocess
from keystroke.server.secrets import redact_secrets
from keystroke.server.syntax import choose_mode
from keystroke.server.scheduler import Outcome, Scheduler, Ticket
from keystroke.server.status import LatencyRecord, status_report

log = logging.getLogger("keystroke.lsp")

NAME = "keystroke"
VERSION = "0.1.0"
CMD_STATUS = "keystroke.status"
CMD_CLEAR_CACHE = "keystroke.clearCache"
CMD_TOGGLE = "keystroke.toggle"
CMD_APPLY_ACTION = "keystroke.applyAction"   # code actions for clients without resolve
COMPLETION_REGISTRATION_ID = "keystroke-completion"


# ---------------------------------------------------------------------------
# The context, post-processing and actions modules, adapted to this server
# ---------------------------------------------------------------------------

def context_config(config: Config) -> ContextConfig:
    return ContextConfig(budget_tokens=config.context_budget)


def build_parts(doc: DocumentView, offset: int, others: list[DocumentView], config: Config,
                count_tokens: Callable[[str], int], workspace_root: Path | None) -> PromptParts:
    return build_context(doc, offset, others, config=context_config(config),
                         count_tokens=count_tokens, workspace_root=workspace_root)


def describe_provenance(provenance: list[dict]) -> str:
    """One log line for a prompt's parts: `source tokens tok (items from origins)`, in prompt order."""
    parts = []
    for e in provenance:
        origins = ", ".join(str(o) for o in e.get("origins", [])[:4])
        parts.append(f"{e['source']} {e['tokens']} tok ({e['items']}{' from ' + origins if origins else ''})")
    return "; ".join(parts)


def display_uri(uri: str) -> str:
    return redact(uri.rsplit("/", 1)[-1])[:120]


def redact(text: str) -> str:
    return redact_secrets(text)


# ---------------------------------------------------------------------------
# Documents and positions: plain functions
# ---------------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
    """Length of `line` without its line terminator (as splitlines(True) gave it)."""
    if line.endswith("\r\n"):
        return len(line) - 2
    if line and line[-1] in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
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


def completion_label(new_text: str) -> str:
    """First line of the suggestion, or its first non-blank line when it starts with a break."""
    first = new_text.split("\n", 1)[0].rstrip()
    if first.strip():
        return first
    return next((x.strip() for x in new_text.splitlines() if x.strip()), new_text.strip())


def count_tokens_of(backend: Any) -> Callable[[str], int]:
    tok = getattr(backend, "tokenizer", None)
    if tok is None:
        return approx_tokens
    return lambda s: len(tok.encode(s))


def completion_request(doc: DocumentView, offset: int, others: list[DocumentView], config: Config, *,
                       n: int, version: int, count_tokens: Callable[[str], int],
                       workspace_root: Path | None,
                       is_cancelled: Callable[[], bool] = lambda: False) -> tuple[CompletionRequest, str, list[dict]]:
    """The engine request for a cursor at `offset` of `doc`, the stop mode chosen, and the prompt's provenance."""
    parts = build_parts(doc, offset, others, config, count_tokens, workspace_root)
    mode = choose_mode(doc.text[:offset], doc.text[offset:], doc.language_id)
    # One suggestion: the configured temperature (greedy by default). Several
    # distinct ones cannot come from greedy decoding: sample them.
    temperature = config.temperature if (n == 1 or config.temperature > 0) else 0.7
    sampling = SamplingParams(temperature=temperature, top_p=0.95 if temperature > 0 else 1.0)
    request = CompletionRequest(doc_id=doc.uri, prefix=parts.prefix, suffix=parts.suffix, header=parts.header,
                                version=version, sampling=sampling,
                                stop=StopPolicy(max_tokens=config.max_tokens, mode=mode), n=n,
                                is_cancelled=is_cancelled)
    return request, mode, parts.provenance


def finish_suggestions(result: CompletionResult, text: str, offset: int, mode: str, language_id: str) -> list[str]:
    """Post-process the engine's candidates; distinct, non-blank, in order."""
    prefix, suffix = text[:offset], text[offset:]
    return dedupe([postprocess(c.text, prefix=prefix, suffix=suffix, mode=mode, language_id=language_id)
                   for c in result.candidates])


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


@dataclass
class Suggestions:
    """Post-processed suggestions for one cursor, or why there are none."""

    texts: list[str]
    status: str
    result: CompletionResult | None = None


# ---------------------------------------------------------------------------
# The protocol: tolerant message handling
# ---------------------------------------------------------------------------

@attrs.define
class BadMessage:
    """A message that could not be structured. A request (it has "method"
    and "id") is answered with `error`; a malformed response fails the
    future waiting for it; a notification is only logged."""

    id: Any
    method: Any
    error: types.ResponseError
    is_request: bool
    is_response: bool
    jsonrpc: str = "2.0"


def _valid_id(v: Any) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def lenient_message(data: dict) -> dict:
    """Fix what real clients send that the spec does not allow.

    vscode-languageclient 9 sends VS Code's raw InlineCompletionTriggerKind
    (0 = Invoke, 1 = Automatic) instead of LSP's (1 = Invoked, 2 = Automatic):
    0 is read as Invoked; anything else unknown as Automatic.
    """
    if data.get("method") == types.TEXT_DOCUMENT_INLINE_COMPLETION:
        ctx = (data.get("params") or {}).get("context") if isinstance(data.get("params"), dict) else None
        if isinstance(ctx, dict):
            kind = ctx.get("triggerKind")
            if kind == 0 and not isinstance(kind, bool):
                ctx["triggerKind"] = 1
            elif kind not in (1, 2) or isinstance(kind, bool):
                ctx["triggerKind"] = 2
    return data


class KeystrokeProtocol(LanguageServerProtocol):
    """pygls's protocol, hardened: malformed messages get an error response
    (pygls would drop them and leave the client waiting), requests before
    `initialize` or after `shutdown` get the errors LSP specifies, and
    document sync refuses binary/huge documents and unknown uris."""

    _server: "KeystrokeServer"

    def __init__(self, server: "KeystrokeServer", converter: Any) -> None:
        super().__init__(server, converter)
        self.initialize_seen = False

    def structure_message(self, data: dict[str, Any]):
        """Called on each whole message (not, as in pygls, on every nested object)."""
        if not isinstance(data, dict):
            return data
        msg_id, method = data.get("id"), data.get("method")
        kind = {"is_request": "method" in data and "id" in data,
                "is_response": "method" not in data and "id" in data}
        reply_id = msg_id if _valid_id(msg_id) else None
        if data.get("jsonrpc") != "2.0" or ("method" in data and not isinstance(method, str)) \
                or ("id" in data and not _valid_id(msg_id)):
            return BadMessage(reply_id, method, types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message="invalid JSON-RPC message"), **kind)
        from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage
        try:
            data = lenient_message(data)
            if kind["is_request"]:
                return self._converter.structure(data, self.get_message_type(method) or JsonRPCRequestMessage)
            if kind["is_response"]:
                if "error" in data:
                    return self._converter.structure(data, types.ResponseErrorMessage)
                return self._converter.structure(data, self._result_types.pop(msg_id, None) or JsonRPCResponseMessage)
            return self._converter.structure(data, self.get_message_type(method or "") or JsonRPCNotification)
        except Exception as e:  # noqa: BLE001 - the client sent something we cannot read
            detail = _short_error(e)
            log.warning("malformed %s message: %s", method or "response", detail)
            return BadMessage(reply_id, method, types.ResponseError(
                code=types.ErrorCodes.InvalidParams, message=f"invalid params for {method}: {detail}"), **kind)

    def handle_message(self, message: Any) -> None:
        if isinstance(message, BadMessage):
            self._answer_bad(message)
            return
        method = getattr(message, "method", None)
        is_request = _valid_id(getattr(message, "id", None)) and isinstance(method, str)
        if method == types.EXIT:
            return super().handle_message(message)
        if not self.initialize_seen:
            if method == types.INITIALIZE and is_request:
                self.initialize_seen = True
                return super().handle_message(message)
            if is_request:
                self._send_response(message.id, error=types.ResponseError(
                    code=types.ErrorCodes.ServerNotInitialized, message="the server is not initialized"))
            elif method is None:
                return super().handle_message(message)
            return
        if method == types.INITIALIZE and is_request:
            self._send_response(message.id, error=types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message="the server is already initialized"))
            return
        if self._shutdown and is_request:
            self._send_response(message.id, error=types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message="the server is shutting down"))
            return
        return super().handle_message(message)

    def _answer_bad(self, message: BadMessage) -> None:
        if message.is_request:
            self._send_response(message.id, error=message.error)
        elif message.is_response and message.id is not None:
            future = self._request_futures.pop(message.id, None)
            if future is not None and not future.done():
                future.set_exception(JsonRpcException(message.error.message))

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        if _valid_id(msg_id):
            super()._handle_cancel_notification(msg_id)
        else:
            log.warning("$/cancelRequest with an invalid id ignored")

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        self._request_futures.pop(msg_id, None)
        if future.cancelled():
            self._send_response(msg_id, error=types.ResponseError(
                code=types.LSPErrorCodes.RequestCancelled, message=f"request {msg_id} was cancelled"))
            return
        exc = future.exception()
        if exc is None:
            self._send_response(msg_id, result=future.result())
        elif isinstance(exc, JsonRpcException):  # an answer the handler chose (bad params, unknown command)
            log.warning("request %s: %s", msg_id, exc)
            self._send_response(msg_id, error=exc.to_response_error())
        else:
            log.error("request %s failed", msg_id, exc_info=exc)
            self._send_response(msg_id, error=types.ResponseError(
                code=types.ErrorCodes.InternalError, message=f"keystroke: {type(exc).__name__}: {exc}"[:500]))

    # -- document sync (replaces pygls's builtin handlers) -----------------
    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        self._server.open_document(params.text_document)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        self._server.change_document(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> None:
        self._server.close_document(params.text_document.uri)


def _short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------

def load_backend(config: Config, *, quant: str = "auto") -> Any:
    """The engine for `config`: the local model, or a remote server (runs on the scheduler's worker)."""
    import json

    from keystroke.engine.backends import make_backend
    from keystroke.engine.engine import Engine

    device = config.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"

    def local(_settings: dict) -> Any:
        cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else None
        return Engine.load(config.model, quant=quant, threads=config.threads, device=device,
                           cache_dir=cache_dir, disk_budget_mb=config.cache_size_mb)

    return make_backend({"engine": json.loads(config.engine) if config.engine else {}}, local_loader=local)


class KeystrokeServer(LanguageServer):
    def __init__(self, config: Config | None = None, *, quant: str = "auto",
                 loader: Callable[[Config], Any] | None = None) -> None:
        super().__init__(NAME, VERSION, protocol_cls=KeystrokeProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.config = config or Config()
        self.quant = quant
        self.loader = loader or (lambda cfg: load_backend(cfg, quant=self.quant))
        self.scheduler = Scheduler()
        self.record = LatencyRecord()
        self.backend: Any = None
        self.engine_state = "loading"       # loading | ready | failed
        self.engine_error: str | None = None
        self.refused: dict[str, str] = {}   # uri -> why it gets no completions
        self.items_static = False           # completion advertised in InitializeResult
        self.items_dynamic = False          # registered with client/registerCapability
        self.loop: asyncio.AbstractEventLoop | None = None
        self._load_generation = 0
        self._tasks: set[asyncio.Task] = set()
        self.completion_handler: Callable | None = None   # set by create_server
        self.initialized_seen = False

    # -- helpers ---------------------------------------------------------
    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a coroutine in the background, keeping a reference, logging failures."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", exc_info=t.exception())
        task.add_done_callback(done)

    def notify_user(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        if kind <= types.MessageType.Warning:
            log.warning("%s", message)
        else:
            log.info("%s", message)
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=message))
        except Exception as e:  # noqa: BLE001 - a closed transport must not break a handler
            log.warning("could not show a message: %s", _short_error(e))

    def report_server_error(self, error: Exception, source: Any) -> None:
        """pygls calls this for failures it caught; log them, do not pop up.
        Protocol answers (unknown method, bad params) are not bugs: no traceback."""
        if isinstance(error, JsonRpcException):
            log.warning("%s", error)
        else:
            log.error("error in server (%s): %s", getattr(source, "__name__", source), error, exc_info=error)

    @property
    def capabilities_of_client(self) -> types.ClientCapabilities:
        caps = getattr(self.protocol, "client_capabilities", None)
        return caps if caps is not None else types.ClientCapabilities()

    def documents(self) -> dict[str, Any]:
        try:
            return self.workspace.text_documents
        except RuntimeError:
            return {}

    def find_document(self, uri: Any) -> Any:
        """The open document at `uri`, or None. Never reads from disk."""
        if not isinstance(uri, str):
            return None
        from urllib.parse import unquote
        return self.documents().get(unquote(uri))

    def snapshot(self, uri: str) -> Snapshot | None:
        doc = self.find_document(uri)
        if doc is None or uri in self.refused:
            return None
        text = doc.source
        path = None
        try:
            p = to_fs_path(uri)
            path = Path(p) if p else None
        except Exception:  # noqa: BLE001 - odd uris have no path
            path = None
        return Snapshot(uri, doc.version, text, doc.language_id or "", path,
                        tuple(text.splitlines(True)), doc.position_codec)

    def current_version(self, uri: str) -> int | None:
        doc = self.find_document(uri)
        return None if doc is None else doc.version

    # -- document sync ---------------------------------------------------
    def open_document(self, item: types.TextDocumentItem) -> None:
        item.text = clean_text(item.text)
        self.refused.pop(item.uri, None)
        problem = document_problem(item.text, self.config.max_document_bytes)
        if problem:
            self._refuse(item.uri, problem)
            return
        self.workspace.put_text_document(item)

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        if uri in self.refused:
            return
        doc = self.find_document(uri)
        if doc is None:
            log.warning("didChange for a document that is not open: %s", redact(str(uri))[:200])
            return
        for change in params.content_changes:
            change.text = clean_text(change.text)
            if isinstance(change, types.TextDocumentContentChangePartial) and not self._range_ok(doc, change.range):
                log.warning("didChange with a range outside %s; change ignored", uri[:200])
                continue
            doc.apply_change(change)
            if "\x00" in change.text or len(doc.source) > self.config.max_document_bytes // 4:
                problem = document_problem(doc.source, self.config.max_document_bytes)
                if problem:
                    self._refuse(uri, problem)
                    return
        doc.version = params.text_document.version

    @staticmethod
    def _range_ok(doc: Any, rng: types.Range) -> bool:
        lines = doc.lines
        codec = doc.position_codec
        start = position_to_offset(lines, codec, rng.start)
        end = position_to_offset(lines, codec, rng.end)
        return start is not None and end is not None and start <= end

    def close_document(self, uri: str) -> None:
        self.refused.pop(uri, None)
        if self.find_document(uri) is not None:
            self.workspace.remove_text_document(uri)
        backend = self.backend
        if backend is not None:
            self.scheduler.submit_background(lambda: backend.close_document(uri))

    def _refuse(self, uri: str, problem: str) -> None:
        self.refused[uri] = problem
        if self.find_document(uri) is not None:
            self.workspace.remove_text_document(uri)
        name = uri.rsplit("/", 1)[-1][:120]
        self.notify_user(f"keystroke: no completions for {name}: {problem}")

    # -- engine ----------------------------------------------------------
    async def load_engine(self) -> None:
        """Load (or reload) the model on the worker, reporting progress."""
        self._load_generation += 1
        generation = self._load_generation
        self.engine_state = "loading"
        self.backend = None
        config = self.config
        token = None
        caps = self.capabilities_of_client
        if caps.window is not None and caps.window.work_done_progress:
            token = f"keystroke-load-{uuid.uuid4().hex[:8]}"
            try:
                await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                    title="keystroke", message=f"loading {config.model}", cancellable=False))
            except Exception as e:  # noqa: BLE001 - progress is a nicety
                log.info("no progress reporting: %s", _short_error(e))
                token = None
        started = time.perf_counter()
        try:
            backend = await self.scheduler.call(lambda: self.loader(config))
        except Exception as e:  # noqa: BLE001 - shown to the user
            if generation != self._load_generation:
                return
            self.engine_state = "failed"
            self.engine_error = e.problem + (f" ({e.hint})" if e.hint else "") if isinstance(e, KeystrokeError) else _short_error(e)
            if not isinstance(e, KeystrokeError):
                log.error("model loading failed", exc_info=e)
            self.notify_user(f"keystroke: could not load model {config.model!r}: {self.engine_error}",
                             types.MessageType.Error)
            if token:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="failed"))
            return
        if generation != self._load_generation:  # a newer configuration superseded this load
            return
        old, self.backend = self.backend, backend
        self.engine_state, self.engine_error = "ready", None
        if hasattr(backend, "on_state_change"):  # a remote engine: say once when it goes down or comes back
            loop = asyncio.get_running_loop()  # the backend calls from the worker thread
            backend.on_state_change = lambda state, message: loop.call_soon_threadsafe(
                self.notify_user, f"keystroke: {message}",
                types.MessageType.Warning if state == "down" else types.MessageType.Info)
        seconds = time.perf_counter() - started
        log.info("model %s loaded in %.1f s", config.model, seconds)
        if token:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=f"{config.model} ready"))

    def engine_info(self) -> tuple[dict | None, dict | None]:
        backend = self.backend
        if backend is None:
            return None, None
        info = stats = None
        try:
            info = backend.info()
        except Exception as e:  # noqa: BLE001
            log.warning("engine info failed: %s", _short_error(e))
        try:
            stats = backend.stats()
        except Exception as e:  # noqa: BLE001
            log.warning("engine stats failed: %s", _short_error(e))
        return info, stats

    # -- configuration ---------------------------------------------------
    def apply_settings(self, raw: object, *, reload: bool = True) -> list[str]:
        old = self.config
        self.config, warnings = parse_config(raw, old)
        for w in warnings:
            log.warning("%s", w)
        if warnings:
            self.notify_user("\n".join(warnings))
        if reload and engine_changed(old, self.config) and self.loop is not None:
            self.spawn(self.load_engine())
        if reload:
            self.spawn(self.update_completion_registration())
        return warnings

    def want_completion_items(self) -> bool:
        mode = self.config.completion_items
        if mode == "on":
            return True
        if mode == "off":
            return False
        td = self.capabilities_of_client.text_document
        return td is None or td.inline_completion is None

    async def update_completion_registration(self) -> None:
        """Follow `completionItems` after a configuration change, when the
        client allows dynamic registration (a static capability cannot be
        withdrawn; its handler then answers empty)."""
        want = self.want_completion_items()
        td = self.capabilities_of_client.text_document
        dynamic = bool(td and td.completion and td.completion.dynamic_registration)
        if not dynamic or self.items_static or want == self.items_dynamic:
            return
        try:
            if want:
                if types.TEXT_DOCUMENT_COMPLETION not in self.protocol.fm.features:
                    self.feature(types.TEXT_DOCUMENT_COMPLETION)(self.completion_handler)
                await asyncio.wait_for(self.client_register_capability_async(types.RegistrationParams(registrations=[
                    types.Registration(id=COMPLETION_REGISTRATION_ID, method=types.TEXT_DOCUMENT_COMPLETION,
                                       register_options={"documentSelector": None})])), 5)
            else:
                await asyncio.wait_for(self.client_unregister_capability_async(types.UnregistrationParams(
                    unregisterations=[types.Unregistration(id=COMPLETION_REGISTRATION_ID,
                                                           method=types.TEXT_DOCUMENT_COMPLETION)])), 5)
            self.items_dynamic = want
        except Exception as e:  # noqa: BLE001
            log.warning("completion (un)registration failed: %s", _short_error(e))

    # -- completions -----------------------------------------------------
    def gate(self, snap: Snapshot | None) -> str | None:
        """Why this document gets nothing now, or None."""
        if snap is None:
            return "unknown"
        if not self.config.enabled:
            return "disabled"
        if not self.config.language_enabled(snap.language_id):
            return "language"
        if self.backend is None:
            return self.engine_state
        return None

    def other_documents(self, uri: str) -> list[Any]:
        views = []
        for other_uri, doc in list(self.documents().items()):
            if other_uri == uri or other_uri in self.refused:
                continue
            try:
                p = to_fs_path(other_uri)
            except Exception:  # noqa: BLE001
                p = None
            views.append(DocumentView(other_uri, doc.source, doc.language_id or "", Path(p) if p else None))
        return views

    def workspace_root(self) -> Path | None:
        try:
            root = self.workspace.root_path
        except RuntimeError:
            return None
        return Path(root) if root else None

    async def suggest(self, snap: Snapshot, text: str, offset: int, *, feature: str, n: int,
                      debounce_ms: float) -> Suggestions:
        """Run the model at `offset` of `text` (the snapshot's text, possibly
        with a selected completion applied) and post-process its candidates."""
        config, backend = self.config, self.backend
        doc = DocumentView(snap.uri, text, snap.language_id, snap.path)
        others = self.other_documents(snap.uri)
        root = self.workspace_root()

        def make_work(ticket: Ticket) -> Callable[[], Any]:
            def work() -> tuple[CompletionResult, list[str]]:
                request, mode, provenance = completion_request(
                    doc, offset, others, config, n=n, version=snap.version or 0,
                    count_tokens=count_tokens_of(backend), workspace_root=root, is_cancelled=ticket.is_cancelled)
                self.record.add_context(provenance)
                log.debug("context for %s: %s", display_uri(snap.uri), describe_provenance(provenance))
                result = backend.complete(request)
                return result, finish_suggestions(result, text, offset, mode, snap.language_id)
            return work

        try:
            outcome: Outcome = await self.scheduler.run((snap.uri, feature), make_work, debounce_ms=debounce_ms)
        except asyncio.CancelledError:   # $/cancelRequest
            self.record.count("cancelled")
            raise
        if outcome.status != "done":
            return Suggestions([], outcome.status)
        result, texts = outcome.value
        self.record.add_result(result)
        if result.error:
            log.warning("engine error: %s", result.error)
            return Suggestions([], "error", result)
        if self.current_version(snap.uri) != snap.version:
            return Suggestions([], "stale", result)
        return Suggestions(texts, "served", result)


# ---------------------------------------------------------------------------
# Request logic (plain async functions of the server and params)
# ---------------------------------------------------------------------------

def locate(ls: KeystrokeServer, uri: str, position: types.Position):
    """The document snapshot and cursor offset of a request, or None (counted by reason)."""
    snap = ls.snapshot(uri)
    if (why := ls.gate(snap)) is not None:
        ls.record.count(why)
        return None
    cursor = snap.offset(position)
    if cursor is None:
        ls.record.count("bad_position")
        return None
    return snap, cursor


async def inline_completion(ls: KeystrokeServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
    started = time.perf_counter()
    if (found_at := locate(ls, params.text_document.uri, params.position)) is None:
        return None
    snap, cursor = found_at
    text, model_cursor, start, end, typed = snap.text, cursor, line_start(snap.text, cursor), cursor, ""
    selected = params.context.selected_completion_info
    if selected is not None:
        s, e = snap.offset(selected.range.start), snap.offset(selected.range.end)
        if s is not None and e is not None and s <= e and line_start(snap.text, s) == start:
            sel_text = clean_text(selected.text)
            text = snap.text[:s] + sel_text + snap.text[e:]
            model_cursor = s + len(sel_text)
            end = max(cursor, e)
            typed = snap.text[start:s] + sel_text
    if not typed:
        typed = snap.text[start:cursor]
    automatic = params.context.trigger_kind != types.InlineCompletionTriggerKind.Invoked
    n = 1 if automatic else ls.config.candidates
    found = await ls.suggest(snap, text, model_cursor, feature="inline", n=n,
                             debounce_ms=ls.config.debounce_ms if automatic else 0)
    ls.record.count(found.status if found.texts or found.status != "served" else "empty")
    if not found.texts:
        return None
    rng = types.Range(start=snap.position(start), end=snap.position(end))
    items = [types.InlineCompletionItem(insert_text=typed + t, range=rng) for t in found.texts[:n]]
    ls.record.add_latency("inline", (time.perf_counter() - started) * 1000)
    return types.InlineCompletionList(items=items)


async def completion(ls: KeystrokeServer, params: types.CompletionParams) -> types.CompletionList | None:
    started = time.perf_counter()
    if not (ls.items_static or ls.items_dynamic) or ls.config.completion_items == "off":
        return None
    if (found_at := locate(ls, params.text_document.uri, params.position)) is None:
        return None
    snap, cursor = found_at
    invoked = params.context is not None and params.context.trigger_kind == types.CompletionTriggerKind.Invoked
    found = await ls.suggest(snap, snap.text, cursor, feature="completion", n=1,
                             debounce_ms=0 if invoked else ls.config.debounce_ms)
    ls.record.count(found.status if found.texts or found.status != "served" else "empty")
    if not found.texts:
        return types.CompletionList(is_incomplete=True, items=[])
    start = word_start(snap.text, cursor)
    typed = snap.text[start:cursor]
    rng = types.Range(start=snap.position(start), end=snap.position(cursor))
    items = []
    for i, t in enumerate(found.texts):
        new_text = typed + t
        label = completion_label(new_text)
        items.append(types.CompletionItem(
            label=label, kind=types.CompletionItemKind.Text, detail="keystroke",
            filter_text=new_text.split("\n", 1)[0] if typed else label,
            sort_text=f"0{i}", insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=rng, new_text=new_text)))
    ls.record.add_latency("completion", (time.perf_counter() - started) * 1000)
    return types.CompletionList(is_incomplete=True, items=items)


ACTION_KINDS = {"implement": types.CodeActionKind.RefactorRewrite,
                "docstring": types.CodeActionKind.RefactorRewrite,
                "complete_block": types.CodeActionKind.RefactorRewrite}


def _client_resolves_edits(ls: KeystrokeServer) -> bool:
    td = ls.capabilities_of_client.text_document
    ca = td.code_action if td else None
    props = ca.resolve_support.properties if ca and ca.resolve_support else []
    return "edit" in props


def code_actions(ls: KeystrokeServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    """The actions a range offers; no model runs here (see `action_edit`)."""
    snap = ls.snapshot(params.text_document.uri)
    why = ls.gate(snap)
    if why not in (None, "loading"):   # actions may be listed while the model loads
        return None
    start, end = snap.offset(params.range.start), snap.offset(params.range.end)
    if start is None or end is None:
        return None
    specs = actions.find_actions(snap.text, snap.language_id, min(start, end), max(start, end))
    resolves = _client_resolves_edits(ls)
    out = []
    for spec in specs:
        data = {"uri": snap.uri, "version": snap.version, "spec": spec.to_data()}
        action = types.CodeAction(title=spec.title, kind=ACTION_KINDS.get(spec.kind, types.CodeActionKind.RefactorRewrite),
                                  data=data)
        if not resolves:   # e.g. eglot 1.9: a command that computes and applies the edit
            action.command = types.Command(title=spec.title, command=CMD_APPLY_ACTION, arguments=[data])
        out.append(action)
    return out or None


def current_spec(snap: Snapshot, data: dict) -> Any:
    """The action `data` describes, on the document as it is now; None if gone."""
    try:
        spec = actions.ActionSpec.from_data(data.get("spec"))
    except ValueError as e:
        log.warning("code action data rejected: %s", e)
        return None
    if data.get("version") == snap.version and spec.end <= len(snap.text):
        return spec
    # The document changed since the action was offered: find it again.
    here = min(spec.start, len(snap.text))
    for candidate in actions.find_actions(snap.text, snap.language_id, here, here):
        if candidate.kind == spec.kind and candidate.name == spec.name:
            return candidate
    return None


async def action_edit(ls: KeystrokeServer, data: Any) -> types.WorkspaceEdit | None:
    """Run the model for a code action the user picked; its edit, or None."""
    if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
        return None
    snap = ls.snapshot(data["uri"])
    if ls.gate(snap) is not None:
        return None
    spec = current_spec(snap, data)
    if spec is None:
        ls.notify_user("keystroke: the document changed; ask for the code action again")
        return None
    config, backend = ls.config, ls.backend
    root = ls.workspace_root()

    def make_work(ticket: Ticket) -> Callable[[], Any]:
        def work() -> Any:
            prefix, suffix, stop = actions.action_request(spec, snap.text)
            doc = DocumentView(snap.uri, snap.text, snap.language_id, snap.path)
            header = build_parts(doc, spec.start, [], config, count_tokens_of(backend), root).header
            request = CompletionRequest(doc_id=snap.uri, prefix=prefix, suffix=suffix, header=header,
                                        version=snap.version or 0,
                                        sampling=SamplingParams(temperature=config.temperature),
                                        stop=stop, n=1, is_cancelled=ticket.is_cancelled)
            result = backend.complete(request)
            if result.error or not result.candidates:
                return result, None
            return result, actions.action_edit(spec, snap.text, result.text)
        return work

    started = time.perf_counter()
    outcome = await ls.scheduler.run((snap.uri, "action"), make_work)
    ls.record.count(f"action_{outcome.status}")
    if outcome.status != "done":
        return None
    result, edit = outcome.value
    ls.record.add_result(result)
    if edit is None or ls.current_version(snap.uri) != snap.version:
        return None
    ls.record.add_latency("action", (time.perf_counter() - started) * 1000)
    e_start, e_end, new_text = edit
    text_edit = types.TextEdit(range=types.Range(start=snap.position(e_start), end=snap.position(e_end)),
                               new_text=new_text)
    ws = ls.capabilities_of_client.workspace
    if ws and ws.workspace_edit and ws.workspace_edit.document_changes:
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=snap.uri, version=snap.version),
            edits=[text_edit])])
    return types.WorkspaceEdit(changes={snap.uri: [text_edit]})


async def status(ls: KeystrokeServer) -> dict:
    info, stats = ls.engine_info()
    return status_report(state=ls.engine_state, model=ls.config.model, enabled=ls.config.enabled,
                         engine_info=info, engine_stats=stats, record=ls.record, error=ls.engine_error)


# ---------------------------------------------------------------------------
# Registration: thin handlers
# ---------------------------------------------------------------------------

def guarded(empty: Any = None) -> Callable:
    """Catch every exception of a handler: log it (with traceback: it is a
    bug) and answer `empty`. Cancellation passes through."""
    def wrap(fn: Callable) -> Callable:
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any) -> Any:
                try:
                    return await fn(*args)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s failed", fn.__name__)
                    return empty
            return run_async

        @functools.wraps(fn)
        def run_sync(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception:
                log.exception("%s failed", fn.__name__)
                return empty
        return run_sync
    return wrap


CODE_ACTION_KINDS = [types.CodeActionKind.RefactorRewrite]


def create_server(config: Config | None = None, *, quant: str = "auto",
                  loader: Callable[[Config], Any] | None = None) -> KeystrokeServer:
    server = KeystrokeServer(config, quant=quant, loader=loader)

    @server.feature(types.INITIALIZE)
    @guarded()
    def on_initialize(ls: KeystrokeServer, params: types.InitializeParams) -> None:
        ls.loop = asyncio.get_running_loop()
        ls.apply_settings(params.initialization_options, reload=False)
        if ls.want_completion_items():
            ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(
                resolve_provider=False, trigger_characters=[".", "(", " "]))(on_completion)
            ls.items_static = True

    @server.feature(types.INITIALIZED)
    @guarded()
    def on_initialized(ls: KeystrokeServer, params: types.InitializedParams) -> None:
        if ls.initialized_seen:
            log.warning("initialized sent twice; ignored")
            return
        ls.initialized_seen = True
        ls.spawn(ls.load_engine())

    @server.feature(types.SHUTDOWN)
    @guarded()
    def on_shutdown(ls: KeystrokeServer, params: Any) -> None:
        ls.scheduler.close()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    @guarded()
    async def on_configuration(ls: KeystrokeServer, params: types.DidChangeConfigurationParams) -> None:
        settings = params.settings
        caps = ls.capabilities_of_client.workspace
        if settings is None and caps is not None and caps.configuration:
            try:
                answer = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(
                    items=[types.ConfigurationItem(section="keystroke")])), 5)
                settings = answer[0] if answer else None
            except Exception as e:  # noqa: BLE001
                log.warning("workspace/configuration failed: %s", _short_error(e))
                return
        ls.apply_settings(settings)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    @guarded()
    async def on_inline_completion(ls: KeystrokeServer, params: types.InlineCompletionParams):
        return await inline_completion(ls, params)

    @guarded()
    async def on_completion(ls: KeystrokeServer, params: types.CompletionParams):
        return await completion(ls, params)

    server.completion_handler = on_completion

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=CODE_ACTION_KINDS, resolve_provider=True))
    @guarded()
    def on_code_action(ls: KeystrokeServer, params: types.CodeActionParams):
        return code_actions(ls, params)

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def on_code_action_resolve(ls: KeystrokeServer, params: types.CodeAction) -> types.CodeAction:
        try:
            params.edit = await action_edit(ls, params.data)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("codeAction/resolve failed")
        return params

    @server.command(CMD_APPLY_ACTION)
    @guarded()
    async def on_apply_action(ls: KeystrokeServer, *args: Any) -> bool:
        edit = await action_edit(ls, args[0] if args else None)
        if edit is None:
            return False
        try:
            answer = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label="keystroke"))
        except JsonRpcException as e:  # the client (or its user) declined the edit
            log.info("the client did not apply the edit: %s", e)
            return False
        return bool(getattr(answer, "applied", False))

    @server.command(CMD_STATUS)
    @guarded()
    async def on_status(ls: KeystrokeServer, *args: Any) -> dict:
        return await status(ls)

    @server.command(CMD_CLEAR_CACHE)
    @guarded(False)
    async def on_clear_cache(ls: KeystrokeServer, *args: Any) -> bool:
        backend = ls.backend
        if backend is None:
            return False
        await ls.scheduler.call(backend.clear_cache)
        log.info("caches cleared")
        return True

    @server.command(CMD_TOGGLE)
    @guarded()
    def on_toggle(ls: KeystrokeServer, *args: Any) -> dict:
        enabled = args[0] if args and isinstance(args[0], bool) else not ls.config.enabled
        ls.config = dataclasses.replace(ls.config, enabled=enabled)
        if not enabled:
            ls.scheduler.cancel_all()
        log.info("completions %s", "enabled" if enabled else "disabled")
        return {"enabled": enabled}

    return server
