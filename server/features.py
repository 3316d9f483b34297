"""What each LSP request does: plain async functions of the server and the params.

Each one turns LSP params into plain values, asks the session and the
pipeline, and turns the answer back into LSP types. Registration (and the
catch-all error handling) is in `lsp`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from lsprotocol import types

from keystroke.server import actions, pipeline
from keystroke.server.metrics import status_report
from keystroke.server.positions import Snapshot, clean_text, line_start, word_start
from keystroke.server.scheduler import Ticket
from keystroke.server.session import KeystrokeServer, Suggestions

log = logging.getLogger("keystroke.lsp")

CMD_APPLY_ACTION = "keystroke.applyAction"   # code actions for clients without resolve
CMD_ACCEPTED = "keystroke.accepted"          # the inline items' command: the client inserted one
ACTION_KINDS = {"implement": types.CodeActionKind.RefactorRewrite,
                "docstring": types.CodeActionKind.RefactorRewrite,
                "complete_block": types.CodeActionKind.RefactorRewrite}

def completion_label(new_text: str) -> str:
    """First line of the suggestion, or its first non-blank line when it starts with a break."""
    first = new_text.split("\n", 1)[0].rstrip()
    if first.strip():
        return first
    return next((x.strip() for x in new_text.splitlines() if x.strip()), new_text.strip())


def locate(ls: KeystrokeServer, uri: str, position: types.Position) -> tuple[Snapshot, int] | None:
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


def _count(ls: KeystrokeServer, found: Suggestions) -> None:
    ls.record.count(found.reason if found.texts or found.reason != "served" else "empty")


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
                             debounce_ms=ls.debounce_ms() if automatic else 0)
    _count(ls, found)
    if not found.texts:
        return None
    rng = types.Range(start=snap.position(start), end=snap.position(end))
    # LSP 3.18: clients run an item's command after inserting it; it tells the acceptance counts.
    accepted = types.Command(title="keystroke: accepted", command=CMD_ACCEPTED, arguments=[snap.uri])
    items = [types.InlineCompletionItem(insert_text=typed + t, range=rng, command=accepted)
             for t in found.texts[:n]]
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
                             debounce_ms=0 if invoked else ls.debounce_ms())
    _count(ls, found)
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


def _client_resolves_edits(ls: KeystrokeServer) -> bool:
    td = ls.capabilities_of_client.text_document
    ca = td.code_action if td else None
    props = ca.resolve_support.properties if ca and ca.resolve_support else []
    return "edit" in props


async def code_actions(ls: KeystrokeServer, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    """The actions a range offers; no model runs here (see `action_workspace_edit`).

    Finding them parses the document (a 1 MB file, or a 150 KB def header, takes
    longer than the event loop may be held): that runs in a thread, on the snapshot."""
    snap = ls.snapshot(params.text_document.uri)
    why = ls.gate(snap)
    if why not in (None, "loading"):   # actions may be listed while the model loads
        return None
    start, end = snap.offset(params.range.start), snap.offset(params.range.end)
    if start is None or end is None:
        return None
    specs = await asyncio.to_thread(actions.find_actions, snap.text, snap.language_id, min(start, end),
                                    max(start, end))
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


def current_spec(snap: Snapshot, data: dict) -> actions.ActionSpec | None:
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


async def action_workspace_edit(ls: KeystrokeServer, data: Any) -> types.WorkspaceEdit | None:
    """Run the model for a code action the user picked; its edit, or None.

    When the model's text did not go in whole (cut to the lines that parse,
    or kept as a comment), the user is told why."""
    if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
        return None
    snap = ls.snapshot(data["uri"])
    if ls.gate(snap) is not None:
        return None
    spec = await asyncio.to_thread(current_spec, snap, data)
    if spec is None:
        ls.notify_user("keystroke: the document changed; ask for the code action again")
        return None
    config, backend, root, doc = ls.config, ls.backend, ls.workspace_root(), ls.view(snap)

    def make_work(ticket: Ticket) -> Callable[[], Any]:
        def work() -> Any:
            request = pipeline.plan_action(spec, doc, config, count_tokens=backend.count_tokens,
                                           workspace_root=root, is_cancelled=ticket.is_cancelled)
            result = backend.complete(request)
            return result, pipeline.finish_action(result, spec, snap.text)
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
    if edit.note:
        ls.notify_user(f"keystroke: {edit.title}", types.MessageType.Info)
    text_edit = types.TextEdit(range=types.Range(start=snap.position(edit.start), end=snap.position(edit.end)),
                               new_text=edit.new_text)
    ws = ls.capabilities_of_client.workspace
    if ws and ws.workspace_edit and ws.workspace_edit.document_changes:
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=snap.uri, version=snap.version),
            edits=[text_edit])])
    return types.WorkspaceEdit(changes={snap.uri: [text_edit]})


def status_answer(ls: KeystrokeServer) -> dict:
    """The answer of `keystroke.status`."""
    info, stats = ls.engine_info()
    return status_report(state=ls.engine_state, model=ls.config.model, enabled=ls.config.enabled,
                         engine_info=info, engine_stats=stats, record=ls.record, error=ls.engine_error,
                         acceptance=ls.acceptance.summary(),
                         speculation=ls.guesses.summary(list(ls.scheduler.preempt_waits_ms)),
                         in_flight=ls.flights.summary(),
                         debounce={"mode": "fixed" if ls.config.debounce_ms is not None else "adaptive",
                                   "ms": round(ls.debounce_ms(), 1), "intervals": ls.pace.intervals()})
