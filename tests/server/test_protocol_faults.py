"""Messages a sloppy client sends: every request gets a response, and what
the server reads later is checked at the door. In process through the
protocol (`LocalServer`), then once over stdio against `keystroke serve`."""
from __future__ import annotations

import asyncio
import logging

import pytest
from lsprotocol import types

from conftest import LocalServer, assert_clean_log, initialize_raw, start_raw_server

pytestmark = pytest.mark.asyncio

URI = "file:///w/a.py"
TEXT = "def add(a, b):\n    return a\n"
ORIGIN = {"line": 0, "character": 0}


def change_params(text: str = "x", version: int = 2) -> dict:
    return {"textDocument": {"uri": URI, "version": version},
            "contentChanges": [{"range": {"start": ORIGIN, "end": ORIGIN}, "text": text}]}


NOTIFICATIONS_WITH_ID = [
    ("textDocument/didSave", {"textDocument": {"uri": URI}}),
    ("initialized", {}),
    ("textDocument/didChange", change_params()),
    ("workspace/didChangeConfiguration", {"settings": {"keystroke": {"enabled": False}}}),
    ("$/setTrace", {"value": "verbose"}),
    ("textDocument/didOpen", {"textDocument": {"uri": "file:///w/b.py", "languageId": "python",
                                               "version": 1, "text": "b = 1"}}),
    ("textDocument/didClose", {"textDocument": {"uri": URI}}),
    ("$/cancelRequest", {"id": "init"}),
    ("textDocument/willSave", {"textDocument": {"uri": URI}, "reason": 1}),
    ("exit", None),
]


@pytest.mark.parametrize("method, params", NOTIFICATIONS_WITH_ID, ids=[m for m, _ in NOTIFICATIONS_WITH_ID])
async def test_a_notification_sent_with_an_id_is_answered_and_not_acted_on(local_server, method, params):
    local_server.open(URI, TEXT)
    answer = await local_server.call(method, params, msg_id=41)
    await asyncio.sleep(0.05)   # a handler that had been started would have run by now
    assert answer["error"]["code"] == types.ErrorCodes.InvalidRequest
    assert answer["error"]["message"] == f"{method} is a notification; it takes no id"
    server = local_server.server
    # not acted on: a client that resends it as a notification must not get it twice
    assert local_server.text(URI) == TEXT and server.current_version(URI) == 1
    assert server.snapshot("file:///w/b.py") is None
    assert not server.engine_load_started and server.config.enabled
    assert server.protocol.trace == types.TraceValue.Off


@pytest.mark.parametrize("method, params", [("unknown/method", None), ("unknown/method", {"a": 1}),
                                            ("$/unknown", None), ("textDocument/hover", None),
                                            ("textDocument/hover", {"textDocument": 3})])
async def test_a_method_without_handler_is_method_not_found_with_or_without_params(method, params):
    local = LocalServer()
    before = await local.call(method, params, msg_id="early")
    assert before["error"]["code"] == types.ErrorCodes.ServerNotInitialized
    await local.initialize()
    answer = await local.call(method, params, msg_id="late")
    assert answer["error"]["code"] == types.ErrorCodes.MethodNotFound, answer


async def test_a_notification_without_params_for_an_unknown_method_is_ignored(local_server, caplog):
    local_server.send({"jsonrpc": "2.0", "method": "unknown/notification"})
    assert not [r for r in caplog.records if "malformed" in r.getMessage()]
    assert (await local_server.call("shutdown", None, msg_id="s"))["result"] is None


BAD_OPENS = [
    ("languageId", 5), ("languageId", None), ("uri", 5), ("text", None), ("text", 5),
    ("version", "1"), ("version", 1.5), ("version", True), ("version", None),
]


@pytest.mark.parametrize("field, value", BAD_OPENS)
async def test_a_did_open_with_a_field_of_the_wrong_type_is_refused_with_a_warning(local_server, caplog, field,
                                                                                   value):
    item = {"uri": URI, "languageId": "python", "version": 1, "text": TEXT, field: value}
    local_server.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": item}})
    assert local_server.server.documents() == {}
    assert any(r.levelno == logging.WARNING and f"textDocument.{field} must be" in r.getMessage()
               for r in caplog.records)


BAD_CHANGES = [
    {"textDocument": {"uri": URI, "version": "2"}, "contentChanges": [{"text": "x"}]},
    {"textDocument": {"uri": URI, "version": None}, "contentChanges": [{"text": "x"}]},
    {"textDocument": {"uri": 5, "version": 2}, "contentChanges": [{"text": "x"}]},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": None}]},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": 5}]},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": {"text": "x"}},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": "ok"}, {"text": 7}]},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": "0", "character": 0}, "end": ORIGIN}, "text": "x"}]},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [
        {"range": {"start": ORIGIN, "end": {"line": 0, "character": 1.5}}, "text": "x"}]},
    {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"range": None, "text": "x"}]},
]


@pytest.mark.parametrize("params", BAD_CHANGES)
async def test_a_did_change_with_a_field_of_the_wrong_type_changes_nothing(local_server, caplog, params):
    local_server.open(URI, TEXT)
    local_server.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": params})
    assert local_server.text(URI) == TEXT and local_server.server.current_version(URI) == 1
    assert any(r.levelno == logging.WARNING and "textDocument/didChange refused" in r.getMessage()
               for r in caplog.records)


async def test_an_int_language_id_breaks_no_later_request(local_server, caplog):
    local_server.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": URI, "languageId": 5, "version": 1, "text": TEXT}}})
    rng = {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 4}}
    actions = await local_server.call("textDocument/codeAction", {
        "textDocument": {"uri": URI}, "range": rng, "context": {"diagnostics": []}}, msg_id="a")
    inline = await local_server.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": rng["start"], "context": {"triggerKind": 1}}, msg_id="i")
    assert "result" in actions and "result" in inline
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_raw_faults_over_stdio_are_all_answered(model, tmp_path):
    log_file = tmp_path / "serve.log"
    proc, client = start_raw_server(model, log_file)
    try:
        initialize_raw(client, tmp_path)
        for i, (method, params) in enumerate(NOTIFICATIONS_WITH_ID[:5]):
            answer = client.call(method, params, msg_id=f"n{i}", timeout=30)
            assert answer["error"]["code"] == types.ErrorCodes.InvalidRequest, answer
            assert "is a notification" in answer["error"]["message"]
        client.send({"jsonrpc": "2.0", "id": "u", "method": "unknown/method"})
        assert client.wait_response("u", 30)["error"]["code"] == types.ErrorCodes.MethodNotFound
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": URI, "languageId": 5, "version": 1, "text": TEXT}})
        rng = {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 4}}
        answer = client.call("textDocument/codeAction", {"textDocument": {"uri": URI}, "range": rng,
                                                         "context": {"diagnostics": []}}, msg_id="a", timeout=30)
        assert "result" in answer, answer
        status = client.call("workspace/executeCommand", {"command": "keystroke.status"}, msg_id="st", timeout=30)
        assert status["result"]["enabled"] is True   # didChangeConfiguration with an id was not applied
        log = log_file.read_text(encoding="utf-8", errors="replace")
        assert "textDocument.languageId must be a string" in log
        assert "AttributeError" not in log
        assert_clean_log(log)
    finally:
        proc.kill()
        proc.wait(10)
