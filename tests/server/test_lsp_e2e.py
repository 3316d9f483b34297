"""End to end: pytest-lsp drives `python -m keystroke.server.cli serve` over
stdio, as an editor would. Expected suggestions are derived by running the
same request through the same model in this process (no hard-coded model
output)."""
from __future__ import annotations

import ast
import asyncio
import re
import time
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.uris import to_fs_path

from keystroke.engine import EngineSettings
from keystroke.server import features, pipeline
from keystroke.server.config import Config
from keystroke.server.context import DocumentView

from conftest import assert_clean_log, client_capabilities, cursor_at_end, send_raw

pytestmark = pytest.mark.asyncio


def expected(backend, tmp_path: Path, uri: str, text: str, offset: int, *, config: Config = Config(),
             language_id: str = "python", n: int = 1) -> list[str]:
    """What the server must suggest at `offset`: the same pipeline, in process."""
    path = Path(to_fs_path(uri))
    doc = DocumentView(uri, text, language_id, path)
    return pipeline.complete(backend, doc, offset, [], config, n=n, workspace_root=tmp_path).suggestions


def types_snapshot(uri: str, text: str):
    """The server's view of a just-opened document (version 1), for deriving what it must answer."""
    from pygls.workspace.position_codec import PositionCodec
    from keystroke.server.positions import Snapshot
    return Snapshot(uri, 1, text, "python", Path(to_fs_path(uri)), tuple(text.splitlines(True)), PositionCodec())


DOCS = [
    "import os\n\n\ndef read_config(path):\n    with open(path) as f:\n        return f.",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
    'GREETING = "h\u00e9llo \U0001F600\U0001F600"\nname = GREETING.up',   # non-BMP characters before the cursor
    "def add(a, b):\n    return a",
]


async def test_ghost_text_matches_the_model_and_replaces_typed_text(start_server, model, reference_backend, tmp_path):
    s = await start_server(model)
    nonempty = 0
    for i, text in enumerate(DOCS):
        uri = (tmp_path / f"doc{i}.py").as_uri()
        s.open(uri, text)
        line, char = cursor_at_end(text)
        got = await s.inline(uri, line, char)
        want = expected(reference_backend, tmp_path, uri, text, len(text))
        typed = text.split("\n")[-1]
        if not want:
            assert got is None or got.items == []
            continue
        nonempty += 1
        assert len(got.items) == 1                      # Automatic: one item
        item = got.items[0]
        assert item.insert_text == typed + want[0]      # the typed text is replaced, not duplicated
        assert item.range == types.Range(start=types.Position(line, 0), end=types.Position(line, char))
    assert nonempty >= 1
    assert_clean_log(s.log_text())


async def test_invoked_gives_several_distinct_items(start_server, model, tmp_path):
    s = await start_server(model, init_options={"candidates": 3, "temperature": 0.8})
    uri = (tmp_path / "inv.py").as_uri()
    text = DOCS[0]
    s.open(uri, text)
    line, char = cursor_at_end(text)
    got = await s.inline(uri, line, char, invoked=True)
    assert got is not None and 1 <= len(got.items) <= 3
    texts = [i.insert_text for i in got.items]
    assert len(set(texts)) == len(texts)
    assert all(t.startswith("        return f.") and len(t) > len("        return f.") for t in texts)


async def test_selected_completion_info_is_extended(start_server, model, reference_backend, tmp_path):
    s = await start_server(model)
    uri = (tmp_path / "sel.py").as_uri()
    text = "import os\nprint(os.pa"
    s.open(uri, text)
    # the client's completion widget has "os.path" selected over "pa"
    selected = types.SelectedCompletionInfo(
        range=types.Range(start=types.Position(1, 9), end=types.Position(1, 11)), text="path")
    got = await s.inline(uri, 1, 11, selected=selected)
    applied = "import os\nprint(os.path"
    want = expected(reference_backend, tmp_path, uri, applied, len(applied))
    if not want:
        assert got is None
        return
    item = got.items[0]
    assert item.insert_text == "print(os.path" + want[0]
    assert item.range == types.Range(start=types.Position(1, 0), end=types.Position(1, 11))


async def test_trigger_kind_zero_from_old_clients_is_accepted(start_server, model, tmp_path):
    s = await start_server(model)
    uri = (tmp_path / "old.py").as_uri()
    s.open(uri, DOCS[3])
    answer = await s.raw_request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 1, "character": 12},
        "context": {"triggerKind": 0}})
    assert "error" not in answer, answer


async def test_completion_items_for_clients_without_ghost_text(start_server, model, reference_backend, tmp_path):
    s = await start_server(model, capabilities=client_capabilities(inline=False))
    assert s.init.capabilities.completion_provider is not None
    uri = (tmp_path / "items.py").as_uri()
    text = DOCS[1]
    s.open(uri, text)
    line, char = cursor_at_end(text)
    got = await s.client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, char),
        context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked)))
    want = expected(reference_backend, tmp_path, uri, text, len(text))
    assert got.is_incomplete
    if not want:
        assert got.items == []
        return
    item = got.items[0]
    new_text = want[0]                                  # the cursor follows "self.": no word typed yet
    assert item.text_edit.new_text == new_text          # the whole suggestion
    assert item.label == features.completion_label(new_text)  # its first line
    assert item.text_edit.range == types.Range(start=types.Position(line, char), end=types.Position(line, char))


@pytest.mark.parametrize("items,inline,advertised", [
    ("auto", True, False), ("auto", False, True), ("on", True, True), ("off", False, False)])
async def test_completion_capability_follows_client_and_config(start_server, model, items, inline, advertised):
    s = await start_server(model, init_options={"completionItems": items},
                           capabilities=client_capabilities(inline=inline), ready=False)
    assert (s.init.capabilities.completion_provider is not None) == advertised


async def test_code_action_resolve_gives_an_edit_that_parses(start_server, model, reference_backend, tmp_path):
    s = await start_server(model)
    uri = (tmp_path / "act.py").as_uri()
    text = 'import math\n\n\ndef area(radius):\n    """Area of a circle."""\n    pass\n\n\nprint(area(2))\n'
    s.open(uri, text)
    actions = await s.client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(5, 4), end=types.Position(5, 4)),
        context=types.CodeActionContext(diagnostics=[])))
    implement = [a for a in actions if a.title.lower().startswith("implement")]
    assert implement and implement[0].edit is None      # the model has not run yet
    resolved = await s.client.code_action_resolve_async(implement[0])
    assert resolved.edit is not None
    edits = resolved.edit.document_changes[0].edits
    new = apply_edits(text, edits)
    assert new != text or "pass" in new
    ast.parse(new)
    assert new.startswith("import math\n\n\ndef area(radius):\n")
    assert new.endswith("print(area(2))\n")
    # What the model's text lost on the way (cut lines, kept as a comment) is told to the user.
    spec = features.current_spec(types_snapshot(uri, text), implement[0].data)
    doc = DocumentView(uri, text, "python", Path(to_fs_path(uri)))
    request = pipeline.plan_action(spec, doc, Config(), count_tokens=reference_backend.count_tokens,
                                   workspace_root=tmp_path)
    want = pipeline.finish_action(reference_backend.complete(request), spec, text)
    told = [m.message for m in s.client.messages if m.message.startswith("keystroke: " + spec.title)]
    assert told == ([f"keystroke: {want.title}"] if want.note else []), (want, told)


async def test_code_action_command_for_clients_without_resolve(start_server, model, tmp_path):
    s = await start_server(model, capabilities=client_capabilities(resolve=False))
    applied: list[types.ApplyWorkspaceEditParams] = []

    @s.client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply(params: types.ApplyWorkspaceEditParams):
        applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    uri = (tmp_path / "cmd.py").as_uri()
    text = "def double(x):\n    raise NotImplementedError\n"
    s.open(uri, text)
    # raw JSON: lsprotocol's client-side union (Command | CodeAction) misreads a CodeAction with a command
    answer = await s.raw_request("textDocument/codeAction", {
        "textDocument": {"uri": uri}, "range": {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 5}},
        "context": {"diagnostics": []}})
    implement = [a for a in answer["result"] if a["title"].lower().startswith("implement")][0]
    assert "edit" not in implement
    command = implement["command"]
    assert command["command"] == "keystroke.applyAction"
    ok = await s.client.workspace_execute_command_async(types.ExecuteCommandParams(
        command=command["command"], arguments=command["arguments"]))
    assert ok is True and len(applied) == 1
    edit = applied[0].edit
    edits = edit.document_changes[0].edits
    ast.parse(apply_edits(text, edits))


def apply_edits(text: str, edits) -> str:
    lines = text.splitlines(True)

    def offset(p: types.Position) -> int:
        before = sum(len(x) for x in lines[: p.line])
        return before + len(lines[p.line].encode("utf-16-le")[: 2 * p.character].decode("utf-16-le")) \
            if p.line < len(lines) else len(text)
    for e in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True):
        a, b = offset(e.range.start), offset(e.range.end)
        text = text[:a] + e.new_text + text[b:]
    return text


async def test_typing_into_a_suggestion_is_answered_without_the_engine(start_server, model, tmp_path):
    s = await start_server(model, init_options={"debounceMs": 0})
    uri = (tmp_path / "through.py").as_uri()
    text = "def total(items):\n    return sum("
    s.open(uri, text)
    line, char = cursor_at_end(text)
    first = await s.inline(uri, line, char)
    assert first is not None, "the tiny model suggested nothing"
    suggestion = first.items[0].insert_text[len("    return sum("):]
    assert len(suggestion.split("\n")[0]) > 1, f"the tiny model's suggestion is too short to type into: {suggestion!r}"
    typed = suggestion[:1]
    s.change(uri, (line, char), (line, char), typed)
    again = await s.inline(uri, line, char + 1)
    assert again is not None and again.items[0].insert_text == first.items[0].insert_text
    reuse = (await s.status())["server"]["reuse"]
    assert reuse["engine_calls"] == 1 and reuse["typed_through"] == 1


async def test_cache_size_mb_is_the_kv_memory_budget(start_server, model, tmp_path):
    """cacheSizeMb sets the KV-cache's memory budget (as the editors' settings say), not the disk's."""
    s = await start_server(model, init_options={"cacheSizeMb": 7})
    kv = (await s.status())["engine_stats"]["kv"]
    assert kv["memory_budget_mb"] == 7
    assert kv["disk_budget_mb"] == EngineSettings().disk_budget_mb
    s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"cacheSizeMb": 9}))
    for _ in range(300):   # the engine reloads with the new budget
        st = await s.status()
        if st["state"] == "ready" and st["engine_stats"]["kv"]["memory_budget_mb"] == 9:
            break
        await asyncio.sleep(0.1)
    assert st["engine_stats"]["kv"]["memory_budget_mb"] == 9


async def test_status_clear_cache_and_toggle(start_server, model, tmp_path):
    s = await start_server(model)
    uri = (tmp_path / "st.py").as_uri()
    s.open(uri, DOCS[3])
    await s.inline(uri, 1, 12)
    st = await s.status()
    assert st["state"] == "ready" and st["enabled"] is True
    for key in ("model", "device", "dtype", "engine", "engine_stats"):
        assert st[key] is not None, key
    inline = st["server"]["latency"]["inline"]
    assert inline["count"] >= 1 or st["server"]["outcomes"].get("empty", 0) >= 1
    assert set(st["server"]["reuse"]) >= {"reused_ratio", "reused_memory_ratio", "reused_disk_ratio"}
    assert st["server"]["reuse"]["engine_calls"] == 1
    # provenance of the last prompt: which sources went in and their tokens, in the status and the debug log
    last = {e["source"]: e for e in st["server"]["context"]["last"]}
    assert last["prefix"]["tokens"] > 0 and last["prefix"]["origins"] == ["st.py"] and "header" in last
    assert st["server"]["context"]["sources"]["prefix"]["prompts"] == 1
    assert re.search(r"context for st\.py: .*prefix \d+ tok \(\d+ from st\.py\)", s.log_text())
    cleared = await s.client.workspace_execute_command_async(types.ExecuteCommandParams(command="keystroke.clearCache"))
    assert cleared is True
    off = await s.client.workspace_execute_command_async(types.ExecuteCommandParams(command="keystroke.toggle"))
    assert off == {"enabled": False}
    assert await s.inline(uri, 1, 12, invoked=True) is None
    assert (await s.status())["server"]["outcomes"]["disabled"] == 1
    on = await s.client.workspace_execute_command_async(types.ExecuteCommandParams(command="keystroke.toggle"))
    assert on == {"enabled": True}


async def test_cancel_request_answers_at_once(start_server, model, tmp_path):
    s = await start_server(model, init_options={"debounceMs": 5000})
    uri = (tmp_path / "cancel.py").as_uri()
    s.open(uri, DOCS[3])
    task = asyncio.ensure_future(s.raw_request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 1, "character": 12},
        "context": {"triggerKind": 2}}, msg_id="cancel-me"))
    await asyncio.sleep(0.3)
    t0 = time.perf_counter()
    s.cancel("cancel-me")
    answer = await asyncio.wait_for(task, 5)
    assert time.perf_counter() - t0 < 1.0
    assert answer["error"]["code"] == types.LSPErrorCodes.RequestCancelled
    assert (await s.status())["server"]["outcomes"].get("cancelled") == 1
    # the next request is served normally
    await s.inline(uri, 1, 12, invoked=True)
    assert (await s.status())["server"]["reuse"]["engine_calls"] == 1


async def test_newest_request_supersedes_older_ones(start_server, model, tmp_path):
    s = await start_server(model, init_options={"debounceMs": 300})
    uri = (tmp_path / "sup.py").as_uri()
    text = DOCS[3]
    s.open(uri, text)
    first = asyncio.ensure_future(s.inline(uri, 1, 12))
    await asyncio.sleep(0.05)
    s.change(uri, (1, 12), (1, 12), " +")          # the user typed on; Neovim sends another request
    t_change = time.perf_counter()
    second = asyncio.ensure_future(s.inline(uri, 1, 14))
    old = await first
    t_old = time.perf_counter()
    assert old is None and t_old - t_change < 0.2   # answered empty at once
    await second
    outcomes = (await s.status())["server"]["outcomes"]
    assert outcomes.get("superseded") == 1


async def test_result_for_a_stale_version_is_dropped(start_server, model, tmp_path):
    s = await start_server(model, init_options={"debounceMs": 300})
    uri = (tmp_path / "stale.py").as_uri()
    s.open(uri, DOCS[3])
    request = asyncio.ensure_future(s.inline(uri, 1, 12))
    await asyncio.sleep(0.05)
    s.change(uri, (0, 0), (0, 0), "# edited\n")      # no new request follows
    assert await request is None
    assert (await s.status())["server"]["outcomes"].get("stale") == 1


async def test_config_change_with_invalid_keys(start_server, model, tmp_path):
    s = await start_server(model)
    s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"keystroke": {"maxTokens": "lots", "bogusKey": 1, "candidates": 2}}))
    for _ in range(100):
        if any("maxTokens" in m.message for m in s.client.messages):
            break
        await asyncio.sleep(0.05)
    warning = [m for m in s.client.messages if "maxTokens" in m.message]
    assert warning and "bogusKey" in warning[0].message and warning[0].type == types.MessageType.Warning
    uri = (tmp_path / "cfg.py").as_uri()
    s.open(uri, DOCS[0])
    line, char = cursor_at_end(DOCS[0])
    got = await s.inline(uri, line, char, invoked=True)
    assert got is None or len(got.items) <= 2     # candidates=2 applied, the server kept running
    assert (await s.status())["state"] == "ready"


async def test_bad_documents_and_positions(start_server, model, tmp_path):
    s = await start_server(model, init_options={"maxDocumentBytes": 10_000})
    huge = (tmp_path / "huge.py").as_uri()
    s.open(huge, "x = 1\n" * 5000)                      # 30 kB > 10 kB
    binary = (tmp_path / "blob.bin").as_uri()
    s.open(binary, "abc\x00\x01\x02def")
    for _ in range(100):
        if len(s.client.messages) >= 2:
            break
        await asyncio.sleep(0.05)
    texts = [m.message for m in s.client.messages]
    assert any("maxDocumentBytes" in t and "huge.py" in t for t in texts)
    assert any("binary" in t and "blob.bin" in t for t in texts)
    assert await s.inline(huge, 0, 3) is None
    assert await s.inline(binary, 0, 3) is None
    s.change(huge, (0, 0), (0, 0), "more")              # edits to a refused document are ignored
    assert await s.inline((tmp_path / "never-opened.py").as_uri(), 0, 0) is None
    ok = (tmp_path / "ok.py").as_uri()
    s.open(ok, "def f(x):\n    return x\n", language_id="klingon")
    assert await s.inline(ok, 99, 0) is None            # no such line
    await s.inline(ok, 1, 999)                          # past the end of a line: its end
    bad = await s.raw_request("textDocument/inlineCompletion", {
        "textDocument": {"uri": ok}, "position": {"line": -1, "character": 0}, "context": {"triggerKind": 2}})
    assert bad["error"]["code"] == types.ErrorCodes.InvalidParams
    surrogate = (tmp_path / "sur.py").as_uri()
    send_raw(s.client, {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": surrogate, "languageId": "python", "version": 1, "text": "s = '\ud800'\nt = s"}}})
    await s.inline(surrogate, 1, 5)
    assert len(s.client.messages) == 2                 # one message per refused document
    assert (await s.status())["state"] == "ready"
    assert_clean_log(s.log_text())


async def test_progress_is_reported_while_loading(start_server, model):
    s = await start_server(model)
    reports = [r for token, rs in s.client.progress_reports.items() for r in rs]
    assert [r.kind for r in reports] == ["begin", "end"]
    # the server's log reaches the editor too
    assert any("loaded" in m.message for m in s.client.log_messages)


async def test_model_load_failure_is_shown_and_server_keeps_serving(start_server, tmp_path):
    s = await start_server(tmp_path / "no-such-model.gguf", ready=False)
    for _ in range(200):
        st = await s.status()
        if st["state"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert st["state"] == "failed" and st["error"]
    errors = [m for m in s.client.messages if m.type == types.MessageType.Error]
    assert errors and "no-such-model" in errors[0].message
    uri = (tmp_path / "x.py").as_uri()
    s.open(uri, "x = ")
    assert await s.inline(uri, 0, 4) is None


async def test_requests_before_initialize_and_after_shutdown(tmp_path, model):
    from conftest import start_raw_server, initialize_raw
    proc, client = start_raw_server(model, tmp_path / "raw.log")
    try:
        early = client.call("textDocument/completion", {"textDocument": {"uri": "file:///a.py"},
                                                        "position": {"line": 0, "character": 0}}, 1, timeout=30)
        assert early["error"]["code"] == types.ErrorCodes.ServerNotInitialized
        assert "result" in initialize_raw(client, tmp_path)
        again = client.call("initialize", {"capabilities": {}}, 2)
        assert again["error"]["code"] == types.ErrorCodes.InvalidRequest
        assert client.call("shutdown", None, 3)["result"] is None
        late = client.call("workspace/executeCommand", {"command": "keystroke.status"}, 4)
        assert late["error"]["code"] == types.ErrorCodes.InvalidRequest
        client.notify("exit", None)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_clean_log((tmp_path / "raw.log").read_text())


# ---------------------------------------------------------------------------
# The real default model
# ---------------------------------------------------------------------------

@pytest.mark.real_model
async def test_real_model_ghost_text(start_server, real_model, tmp_path):
    s = await start_server(real_model)
    uri = (tmp_path / "fib.py").as_uri()
    text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fib"
    s.open(uri, text)
    line, char = cursor_at_end(text)
    t0 = time.perf_counter()
    got = await s.inline(uri, line, char)
    elapsed = time.perf_counter() - t0
    assert got is not None and len(got.items) == 1
    item = got.items[0]
    assert item.insert_text.startswith("    return fib") and len(item.insert_text) > len("    return fib")
    assert "\n" not in item.insert_text             # mid-line: one line
    # type one more character, as an editor would, and ask again
    s.change(uri, (line, char), (line, char), "o")
    t0 = time.perf_counter()
    again = await s.inline(uri, line, char + 1)
    warm = time.perf_counter() - t0
    assert again is None or again.items[0].insert_text.startswith("    return fibo")
    st = await s.status()
    assert st["model"] and st["server"]["latency"]["inline"]["count"] >= 1
    print(f"real model, automatic inline completion through LSP: first {elapsed * 1000:.0f} ms, "
          f"after typing one character {warm * 1000:.0f} ms; engine: {st['engine_stats']}")


@pytest.mark.real_model
async def test_real_model_cancel_stops_a_running_decode(start_server, real_model, tmp_path):
    s = await start_server(real_model, init_options={"maxTokens": 256, "debounceMs": 0})
    uri = (tmp_path / "long.py").as_uri()
    text = "import json\n\n\ndef load_settings(path):\n    "
    s.open(uri, text)
    task = asyncio.ensure_future(s.raw_request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 4, "character": 4},
        "context": {"triggerKind": 1}}, msg_id="long"))
    await asyncio.sleep(0.8)
    t0 = time.perf_counter()
    s.cancel("long")
    answer = await asyncio.wait_for(task, 60)
    waited = time.perf_counter() - t0
    if "error" in answer:
        assert answer["error"]["code"] == types.LSPErrorCodes.RequestCancelled
        assert waited < 1.0
    # the worker is free again: a new request is answered
    await s.inline(uri, 4, 4)


async def test_finding_code_actions_on_a_huge_file_does_not_hold_the_loop(start_server, model, tmp_path):
    """find_actions parses the document: on a 150 KB def header it takes about a second, in a thread."""
    s = await start_server(model)
    uri = (tmp_path / "wide.py").as_uri()
    header = "def wide(" + ", ".join(f"a{i}=({i}, [{i}])" for i in range(12_000)) + "):\n"
    text = header + "    pass\n"
    s.open(uri, text)
    started = time.perf_counter()
    listing = asyncio.ensure_future(s.client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(1, 4), end=types.Position(1, 4)),
        context=types.CodeActionContext(diagnostics=[]))))
    await asyncio.sleep(0.05)
    status = await s.status()
    status_s = time.perf_counter() - started
    found = await listing
    assert status["state"] == "ready" and status_s < 0.5, f"status waited {status_s:.2f}s behind the code action"
    assert found and any(a.title.lower().startswith("implement") for a in found)
    assert "held the event loop" not in s.log_text()
