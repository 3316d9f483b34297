"""The server's state: documents, configuration, the engine and its worker.

`KeystrokeServer` owns what lives as long as a session: the open documents
(with the documents it refuses), the configuration, the backend and its
loading, the scheduler, the latency record and the suggestions last shown.
Request logic lives in `features`, registration in `lsp`.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Awaitable, Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from keystroke.engine.api import Backend, CompletionRequest, CompletionResult
from keystroke.engine.errors import KeystrokeError
from keystroke.server import pipeline
from keystroke.server.acceptance import AcceptanceStats
from keystroke.server.config import Config, engine_changed, parse_config
from keystroke.server.context import DocumentView
from keystroke.server.debounce import TypingPace
from keystroke.server.inflight import Flight, Flights, rest_after
from keystroke.server.metrics import LatencyRecord
from keystroke.server.positions import Snapshot, clean_text, document_problem, lsp_lines, position_to_offset
from keystroke.server.protocol import KeystrokeProtocol, short_error
from keystroke.server.scheduler import Outcome, Scheduler, Ticket
from keystroke.server.secrets import redact_secrets
from keystroke.server.speculation import Answer, Guess, Guesses, extends

log = logging.getLogger("keystroke.lsp")

NAME = "keystroke"
VERSION = "0.1.0"


def load_backend(config: Config, *, quant: str = "auto") -> Backend:
    """The engine for `config`: the local model, or a remote server (runs on the scheduler's worker)."""
    from keystroke.engine import make_backend
    return make_backend(config.engine_settings(quant=quant))


def describe_provenance(provenance: list[dict]) -> str:
    """One log line for a prompt's parts: `source tokens tok (items from origins)`, in prompt order."""
    parts = []
    for e in provenance:
        origins = ", ".join(str(o) for o in e.get("origins", [])[:4])
        parts.append(f"{e['source']} {e['tokens']} tok ({e['items']}{' from ' + origins if origins else ''})")
    return "; ".join(parts)


def display_uri(uri: str) -> str:
    return redact_secrets(uri.rsplit("/", 1)[-1])[:120]


class Suggestions:
    """Post-processed suggestions for one cursor, or why there are none."""

    def __init__(self, texts: list[str], reason: str, result: CompletionResult | None = None) -> None:
        self.texts = texts
        self.reason = reason       # served | typed_through | superseded | cancelled | stale | error ...
        self.result = result


class KeystrokeServer(LanguageServer):
    def __init__(self, config: Config | None = None, *, quant: str = "auto",
                 loader: Callable[[Config], Backend] | None = None) -> None:
        super().__init__(NAME, VERSION, protocol_cls=KeystrokeProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.config = config or Config()
        self.quant = quant
        self.loader = loader or (lambda cfg: load_backend(cfg, quant=self.quant))
        self.scheduler = Scheduler()
        self.record = LatencyRecord()
        self.shown = pipeline.TypedThrough()
        self.acceptance = AcceptanceStats()
        self.guesses = Guesses()            # the suggestion after an accept, computed ahead
        self.flights = Flights()            # generations running, for requests typed into them
        self.pace = TypingPace()            # the user's typing intervals, for the adaptive debounce
        self.backend: Backend | None = None
        self.engine_state = "loading"       # loading | ready | failed
        self.engine_error: str | None = None
        self.refused: dict[str, str] = {}   # uri -> why it gets no completions
        self.items_static = False           # completion advertised in InitializeResult
        self.items_dynamic = False          # registered with client/registerCapability
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine_load_started = False    # on the first `initialized` notification
        self._load_generation = 0
        self._tasks: set[asyncio.Task] = set()

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
            log.warning("could not show a message: %s", short_error(e))

    def report_server_error(self, error: Exception, source: Any) -> None:
        """pygls calls this for failures it caught; log them, do not pop up.
        Protocol answers (unknown method, bad params) are not bugs: no traceback."""
        from pygls.exceptions import JsonRpcException
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
        return Snapshot(uri, doc.version, text, doc.language_id or "", _fs_path(uri),
                        lsp_lines(text), doc.position_codec)

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
            log.warning("didChange for a document that is not open: %s", redact_secrets(str(uri))[:200])
            return
        old = doc.source
        for change in params.content_changes:
            new = clean_text(change.text)
            text = _edited(doc, change.range, new) \
                if isinstance(change, types.TextDocumentContentChangePartial) else new
            if text is None:
                log.warning("didChange with a range outside %s; change ignored", uri[:200])
                continue
            # Not pygls's incremental edit: it splits lines like str.splitlines
            # and puts an edit past a line's end one character early.
            doc.apply_change(types.TextDocumentContentChangeWholeDocument(text=text))
            if "\x00" in new or len(doc.source) > self.config.max_document_bytes // 4:
                problem = document_problem(doc.source, self.config.max_document_bytes)
                if problem:
                    self._refuse(uri, problem)
                    return
        doc.version = params.text_document.version
        self.pace.keystroke()
        self.acceptance.changed(uri, old, doc.source)
        self.guesses.changed(uri, doc.source)
        if log.isEnabledFor(logging.DEBUG):  # lets a test (or a bug report) compare copies
            log.debug("%s is version %s: %d characters, crc32 %08x", display_uri(uri), doc.version,
                      len(doc.source), zlib.crc32(doc.source.encode("utf-8")))

    def close_document(self, uri: str) -> None:
        self.refused.pop(uri, None)
        self.shown.forget(uri)
        self.acceptance.closed(uri)
        self.guesses.drop(uri)
        if self.find_document(uri) is not None:
            self.workspace.remove_text_document(uri)
        backend = self.backend
        if backend is not None:
            self.scheduler.submit_background(lambda: backend.close_document(uri))

    def _refuse(self, uri: str, problem: str) -> None:
        self.refused[uri] = problem
        self.shown.forget(uri)
        self.acceptance.closed(uri)
        self.guesses.drop(uri)
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
        self.shown.forget()
        self.guesses.drop()
        self.flights.drop()
        config = self.config
        token = await self._begin_progress(f"loading {config.model}")
        started = time.perf_counter()
        try:
            backend = await self.scheduler.call(lambda: self.loader(config))
        except Exception as e:  # noqa: BLE001 - shown to the user
            if generation != self._load_generation:
                return
            self.engine_state = "failed"
            self.engine_error = e.problem + (f" ({e.hint})" if e.hint else "") if isinstance(e, KeystrokeError) \
                else short_error(e)
            if not isinstance(e, KeystrokeError):
                log.error("model loading failed", exc_info=e)
            self.notify_user(f"keystroke: could not load model {config.model!r}: {self.engine_error}",
                             types.MessageType.Error)
            self._end_progress(token, "failed")
            return
        if generation != self._load_generation:  # a newer configuration superseded this load
            return
        self.backend = backend
        self.engine_state, self.engine_error = "ready", None
        loop = asyncio.get_running_loop()  # a remote backend calls from the worker thread
        backend.watch(lambda state, message: loop.call_soon_threadsafe(
            self.notify_user, f"keystroke: {message}",
            types.MessageType.Warning if state == "down" else types.MessageType.Info))
        # The model and its imports are millions of long-lived objects: keep them out of the cyclic
        # GC's full collections, which otherwise pause the event loop for 100 ms and more.
        gc.freeze()
        log.info("model %s loaded in %.1f s", config.model, time.perf_counter() - started)
        self._end_progress(token, f"{config.model} ready")

    async def _begin_progress(self, message: str) -> str | None:
        caps = self.capabilities_of_client
        if caps.window is None or not caps.window.work_done_progress:
            return None
        token = f"keystroke-load-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="keystroke", message=message, cancellable=False))
        except Exception as e:  # noqa: BLE001 - progress is a nicety
            log.info("no progress reporting: %s", short_error(e))
            return None
        return token

    def _end_progress(self, token: str | None, message: str) -> None:
        if token:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    def engine_info(self) -> tuple[dict | None, dict | None]:
        backend = self.backend
        if backend is None:
            return None, None
        info = stats = None
        try:
            info = backend.info()
        except Exception as e:  # noqa: BLE001
            log.warning("engine info failed: %s", short_error(e))
        try:
            stats = backend.stats()
        except Exception as e:  # noqa: BLE001
            log.warning("engine stats failed: %s", short_error(e))
        return info, stats

    # -- configuration ---------------------------------------------------
    def apply_settings(self, raw: object, *, reload: bool = True) -> list[str]:
        """Merge the editor's settings; reload the engine when its settings changed."""
        old = self.config
        self.config, warnings = parse_config(raw, old)
        for w in warnings:
            log.warning("%s", w)
        if warnings:
            self.notify_user("\n".join(warnings))
        if reload and engine_changed(old, self.config) and self.loop is not None:
            self.spawn(self.load_engine())
        return warnings

    def want_completion_items(self) -> bool:
        mode = self.config.completion_items
        if mode == "on":
            return True
        if mode == "off":
            return False
        td = self.capabilities_of_client.text_document
        return td is None or td.inline_completion is None

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

    def debounce_ms(self) -> float:
        """The wait before an Automatic request runs: `debounceMs` when set, else from the user's typing."""
        c = self.config
        if c.debounce_ms is not None:
            return float(c.debounce_ms)
        return self.pace.debounce_ms(c.debounce_min_ms, max(c.debounce_min_ms, c.debounce_max_ms))

    def view(self, snap: Snapshot, text: str | None = None) -> DocumentView:
        return DocumentView(snap.uri, snap.text if text is None else text, snap.language_id, snap.path)

    def other_documents(self, uri: str) -> list[DocumentView]:
        return [DocumentView(other_uri, doc.source, doc.language_id or "", _fs_path(other_uri))
                for other_uri, doc in list(self.documents().items())
                if other_uri != uri and other_uri not in self.refused]

    def workspace_root(self) -> Path | None:
        try:
            root = self.workspace.root_path
        except RuntimeError:
            return None
        return Path(root) if root else None

    def _work(self, doc: DocumentView, offset: int, others: list[DocumentView], n: int, ticket: Ticket,
              config: Config, backend: Backend, *, speculating_after: CompletionRequest | None = None,
              on_text: Callable[[str], None] | None = None) -> Callable[[], Answer | None]:
        """The worker's job for one cursor: plan, engine, post-process (the pipeline's three steps).

        Speculative work (`speculating_after`: the request whose suggestion is
        assumed accepted) gives up, with None, before the engine runs when its
        prompt is not that request's plus the suggestion (see speculation.py)."""
        root = self.workspace_root()

        def work() -> Answer | None:
            plan = pipeline.plan(doc, offset, others, config, n=n, count_tokens=backend.count_tokens,
                                 workspace_root=root, is_cancelled=ticket.is_cancelled, on_text=on_text)
            if speculating_after is not None:
                if not extends(speculating_after, plan.request):
                    return None
            else:
                self.record.add_context(plan.provenance)
                log.debug("context for %s: %s", display_uri(doc.uri), describe_provenance(plan.provenance))
            result = backend.complete(plan.request)
            return Answer(result, pipeline.finish(result, plan), plan.mode, plan.request)
        return work

    async def suggest(self, snap: Snapshot, text: str, offset: int, *, feature: str, n: int,
                      debounce_ms: float) -> Suggestions:
        """Suggestions at `offset` of `text` (the snapshot's text, possibly
        with a selected completion applied): the rest of the last suggestion
        when the user typed into it, the guess made for this state after an
        accept, else the pipeline's answer from the model."""
        key = (snap.uri, feature)
        if (rest := self.shown.rest(snap.uri, text, offset, n)) is not None:
            self.scheduler.supersede(key)
            self.flights.drop(key)
            self.record.add_typed_through()
            self.shown.remember(snap.uri, text, offset, rest)
            return Suggestions(rest, "typed_through")
        if n == 1 and (guess := self.guesses.find(snap.uri, text, offset)) is not None:
            self.flights.drop(key)
            found = await self._from_guess(snap, key, guess, text, offset)
            if found is not None:
                return found
        if n == 1 and self.config.reuse_in_flight and (joinable := self.flights.joinable(key, text, offset)):
            found = await self._from_flight(snap, key, *joinable, text, offset)
            if found is not None:
                return found
        self.flights.drop(key)
        doc, others, config, backend = self.view(snap, text), self.other_documents(snap.uri), self.config, self.backend
        started: list[Flight] = []

        def make_work(ticket: Ticket) -> Callable[[], Answer | None]:
            on_text = None
            if n == 1:
                flight = self.flights.start(key, Flight(text[:offset], text[offset:], ticket,
                                                        asyncio.get_running_loop()))
                started.append(flight)
                on_text = flight.update
            return self._work(doc, offset, others, n, ticket, config, backend, on_text=on_text)
        outcome: Outcome | None = None
        try:
            outcome = await self.scheduler.run(key, make_work, debounce_ms=debounce_ms)
        except asyncio.CancelledError:   # $/cancelRequest
            self.record.count("cancelled")
            raise
        finally:
            if started:
                self.flights.finish(key, started[0], outcome.value if outcome is not None else None)
        if outcome.status != "done":
            return Suggestions([], outcome.status)
        result, texts, mode, request = outcome.value
        self.record.add_result(result)
        if result.error:
            log.warning("engine error: %s", result.error)
            return Suggestions([], "error", result)
        if self.current_version(snap.uri) != snap.version:
            return Suggestions([], "stale", result)
        self._shown(snap, text, offset, texts, n, mode, request)
        return Suggestions(texts, "served", result)

    async def _from_guess(self, snap: Snapshot, key: Any, guess: Guess, text: str, offset: int) -> Suggestions | None:
        """The guess's answer (waiting for it if it still runs); None when it has none to give."""
        joined = not guess.future.done()
        outcome = await self.scheduler.wait_for(key, guess.future)
        if outcome.status == "superseded":
            return Suggestions([], "superseded")
        if outcome.status != "done" or outcome.value is None:   # preempted, or gave up as too costly
            return None
        result, texts, mode, request = outcome.value
        if result.error or any(c.stop_reason == "cancelled" for c in result.candidates):
            return None
        self.guesses.counts["joined" if joined else "answered"] += 1
        self.record.add_result(result)
        if self.current_version(snap.uri) != snap.version:
            return Suggestions([], "stale", result)
        self._shown(snap, text, offset, texts, 1, mode, request)
        return Suggestions(texts, "speculated", result)

    async def _from_flight(self, snap: Snapshot, key: Any, flight: Flight, typed: str, text: str,
                           offset: int) -> Suggestions | None:
        """The rest of the running generation after `typed`, once it is done; None when it has none to
        give (the request then runs the model)."""
        flight.typed = typed
        self.flights.counts["joined"] += 1
        outcome = await self.scheduler.wait_for(key, flight.future, keep=flight.ticket)
        if outcome.status == "superseded":
            return Suggestions([], "superseded")
        answer = outcome.value if outcome.status == "done" else None
        rest = rest_after(answer, typed, pipeline.stop_mode(self.view(snap, text), offset))
        if rest is None:
            self.flights.counts["declined"] += 1
            return None
        self.flights.counts["reused"] += 1
        if self.current_version(snap.uri) != snap.version:
            return Suggestions([], "stale", answer.result)
        self._shown(snap, text, offset, rest, 1, answer.mode, answer.request)
        return Suggestions(rest, "in_flight", answer.result)

    def _shown(self, snap: Snapshot, text: str, offset: int, texts: list[str], n: int, mode: str,
               request: CompletionRequest) -> None:
        """Suggestions go to the client: remember them, count them, and guess what follows their accept."""
        self.shown.remember(snap.uri, text, offset, texts)
        self.acceptance.shown(snap.uri, text, offset, texts[:n], language_id=snap.language_id, mode=mode)
        if n == 1 and texts and self.config.speculate and self.backend is not None:
            before, after, suggestion = text[:offset], text[offset:], texts[0]
            doc = self.view(snap, before + suggestion + after)
            others, config, backend = self.other_documents(snap.uri), self.config, self.backend
            # At once: the accept may come soon, and the next keystroke stops it within a decode
            # step or a prefill layer (the scheduler preempts it, the engine checks between both).
            ticket, fut = self.scheduler.speculate(
                lambda t: self._work(doc, len(before) + len(suggestion), others, 1, t, config, backend,
                                     speculating_after=request))
            fut.add_done_callback(_log_failure)
            self.guesses.add(snap.uri, Guess(before, suggestion, after, ticket, fut))


def _log_failure(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("speculative completion failed", exc_info=fut.exception())


def _fs_path(uri: str) -> Path | None:
    try:
        p = to_fs_path(uri)
    except Exception:  # noqa: BLE001 - odd uris have no path
        return None
    return Path(p) if p else None


def _edited(doc: Any, rng: types.Range, text: str) -> str | None:
    """`doc`'s text with `rng` replaced by `text` (LSP's lines, the document's
    position encoding, a position past a line's end at its end); None when
    the range is outside the document or backwards."""
    source = doc.source
    lines = lsp_lines(source)
    start = position_to_offset(lines, doc.position_codec, rng.start)
    end = position_to_offset(lines, doc.position_codec, rng.end)
    if start is None or end is None or start > end:
        return None
    return source[:start] + text + source[end:]
