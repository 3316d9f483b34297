"""The hardened protocol's message reading, in process (no subprocess, no transport)."""
from __future__ import annotations

import pytest
from lsprotocol import types

from keystroke.server.lsp import create_server
from keystroke.server.protocol import BadMessage, lenient_message


def inline_request(trigger_kind):
    return {"jsonrpc": "2.0", "id": 1, "method": types.TEXT_DOCUMENT_INLINE_COMPLETION,
            "params": {"textDocument": {"uri": "file:///a.py"}, "position": {"line": 0, "character": 0},
                       "context": {"triggerKind": trigger_kind}}}


@pytest.mark.parametrize("sent, read", [(0, 1), (1, 1), (2, 2), (7, 2), (True, 2), ("1", 2), (None, 2)])
def test_vscode_raw_trigger_kinds_are_read_as_lsp_ones(sent, read):
    assert lenient_message(inline_request(sent))["params"]["context"]["triggerKind"] == read


def test_other_methods_pass_untouched():
    data = {"jsonrpc": "2.0", "id": 1, "method": "textDocument/completion", "params": {"context": {"triggerKind": 0}}}
    assert lenient_message(data)["params"]["context"]["triggerKind"] == 0


@pytest.fixture(scope="module")
def protocol():
    return create_server().protocol


@pytest.mark.parametrize("data", [
    {"jsonrpc": "1.0", "id": 1, "method": "initialize", "params": {}},
    {"jsonrpc": "2.0", "id": 1.5, "method": "initialize", "params": {}},
    {"jsonrpc": "2.0", "id": True, "method": "initialize", "params": {}},
    {"jsonrpc": "2.0", "id": 1, "method": 5, "params": {}},
])
def test_invalid_jsonrpc_is_an_invalid_request(protocol, data):
    msg = protocol.structure_message(data)
    assert isinstance(msg, BadMessage) and msg.error.code == types.ErrorCodes.InvalidRequest
    assert msg.is_request == ("method" in data and "id" in data)


def test_params_of_the_wrong_shape_are_invalid_params_with_the_method_named(protocol):
    msg = protocol.structure_message({"jsonrpc": "2.0", "id": 7, "method": types.TEXT_DOCUMENT_INLINE_COMPLETION,
                                      "params": {"textDocument": 3}})
    assert isinstance(msg, BadMessage) and msg.id == 7 and msg.is_request
    assert msg.error.code == types.ErrorCodes.InvalidParams
    assert types.TEXT_DOCUMENT_INLINE_COMPLETION in msg.error.message


def test_a_valid_request_is_structured(protocol):
    msg = protocol.structure_message(inline_request(0))
    assert isinstance(msg, types.InlineCompletionRequest)
    assert msg.params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked


@pytest.mark.parametrize("method", ["textDocument/didSave", "initialized", "textDocument/didChange",
                                    "workspace/didChangeConfiguration", "$/setTrace", "exit", "$/cancelRequest"])
def test_a_notification_method_with_an_id_is_an_invalid_request(protocol, method):
    msg = protocol.structure_message({"jsonrpc": "2.0", "id": 3, "method": method, "params": {}})
    assert isinstance(msg, BadMessage) and msg.is_request and msg.id == 3
    assert msg.error.code == types.ErrorCodes.InvalidRequest
    assert msg.error.message == f"{method} is a notification; it takes no id"


@pytest.mark.parametrize("method", ["unknown/method", "textDocument/hover"])
def test_a_request_for_a_method_without_handler_needs_no_params(protocol, method):
    msg = protocol.structure_message({"jsonrpc": "2.0", "id": 4, "method": method})
    assert not isinstance(msg, BadMessage) and msg.id == 4 and msg.method == method


def test_a_did_open_with_an_int_language_id_is_refused(protocol):
    msg = protocol.structure_message({"jsonrpc": "2.0", "method": types.TEXT_DOCUMENT_DID_OPEN, "params": {
        "textDocument": {"uri": "file:///a.py", "languageId": 5, "version": 1, "text": "x"}}})
    assert isinstance(msg, BadMessage) and not msg.is_request
    assert "textDocument.languageId must be a string" in msg.error.message
