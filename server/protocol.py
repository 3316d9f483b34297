"""pygls's protocol, hardened against what hostile or sloppy clients send.

Malformed messages get an error response (pygls would drop them and leave
the client waiting); requests before `initialize` or after `shutdown` get
the errors LSP specifies; a notification method sent with an id is answered
InvalidRequest and not acted on (a client that retries it as a notification
must not see an edit applied twice); a request for a method without handler
is MethodNotFound, with or without params; document-sync messages whose
fields have the wrong JSON types are refused whole with a warning (the
converter would turn 5 into "5", None into "None"), the rest goes to the
session, which refuses binary or huge documents and unknown uris.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol, lsp_method

if TYPE_CHECKING:
    from keystroke.server.session import KeystrokeServer

log = logging.getLogger("keystroke.lsp")


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
        self.initialize_received = False

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
        if kind["is_request"] and is_notification(method):
            log.warning("%s sent with an id: not acted on", method)
            return BadMessage(reply_id, method, types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message=f"{method} is a notification; it takes no id"), **kind)
        if (problem := sync_problem(method, data.get("params"))) is not None:
            log.warning("%s refused: %s", method, problem)
            return BadMessage(reply_id, method, types.ResponseError(
                code=types.ErrorCodes.InvalidParams, message=f"invalid params for {method}: {problem}"), **kind)
        from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage
        try:
            data = lenient_message(data)
            if kind["is_request"]:
                if not self._handles(method):  # pygls answers MethodNotFound, whatever the params
                    return self._converter.structure({"params": None, **data}, JsonRPCRequestMessage)
                return self._converter.structure(data, self.get_message_type(method) or JsonRPCRequestMessage)
            if kind["is_response"]:
                if "error" in data:
                    return self._converter.structure(data, types.ResponseErrorMessage)
                return self._converter.structure(data, self._result_types.pop(msg_id, None) or JsonRPCResponseMessage)
            message_type = self.get_message_type(method or "")
            if message_type is None:
                return self._converter.structure({"params": None, **data}, JsonRPCNotification)
            return self._converter.structure(data, message_type)
        except Exception as e:  # noqa: BLE001 - the client sent something we cannot read
            detail = short_error(e)
            log.warning("malformed %s message: %s", method or "response", detail)
            return BadMessage(reply_id, method, types.ResponseError(
                code=types.ErrorCodes.InvalidParams, message=f"invalid params for {method}: {detail}"), **kind)

    def _handles(self, method: str) -> bool:
        return method in self.fm.builtin_features or method in self.fm.features

    def handle_message(self, message: Any) -> None:
        if isinstance(message, BadMessage):
            self._answer_bad(message)
            return
        method = getattr(message, "method", None)
        is_request = _valid_id(getattr(message, "id", None)) and isinstance(method, str)
        if method == types.EXIT:
            return super().handle_message(message)
        if not self.initialize_received:
            if method == types.INITIALIZE and is_request:
                self.initialize_received = True
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


def is_notification(method: Any) -> bool:
    """Whether LSP defines `method` as a notification (a message without id)."""
    message_type = types.METHOD_TO_TYPES.get(method, (None,))[0]
    return message_type is not None and "id" not in attrs.fields_dict(message_type)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_position(v: Any) -> bool:
    return isinstance(v, dict) and _is_int(v.get("line")) and _is_int(v.get("character"))


_SYNC_FIELDS = {
    types.TEXT_DOCUMENT_DID_OPEN: {"uri": str, "languageId": str, "version": int, "text": str},
    types.TEXT_DOCUMENT_DID_CHANGE: {"uri": str, "version": int},
    types.TEXT_DOCUMENT_DID_CLOSE: {"uri": str},
}


def sync_problem(method: Any, params: Any) -> str | None:
    """What is wrong with the fields of a document-sync message that the
    server reads later, or None. The converter would turn a number into a
    string (`"5"`, `"None"`), a float or string into an int, or keep an int
    languageId; such a message is refused whole (a didOpen opens nothing)."""
    fields = _SYNC_FIELDS.get(method)
    if fields is None:
        return None
    doc = params.get("textDocument") if isinstance(params, dict) else None
    if not isinstance(doc, dict):
        return "textDocument must be an object"
    for name, kind in fields.items():
        value = doc.get(name)
        if not (_is_int(value) if kind is int else isinstance(value, kind)):
            return f"textDocument.{name} must be {'an integer' if kind is int else 'a string'}, not {value!r:.40}"
    if method != types.TEXT_DOCUMENT_DID_CHANGE:
        return None
    changes = params.get("contentChanges")
    if not isinstance(changes, list):
        return "contentChanges must be an array"
    for change in changes:
        if not isinstance(change, dict) or not isinstance(change.get("text"), str):
            return "each content change needs a string text"
        rng = change.get("range", None)
        if "range" in change and not (isinstance(rng, dict) and _is_position(rng.get("start"))
                                      and _is_position(rng.get("end"))):
            return "a content change's range must hold integer lines and characters"
    return None


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."
