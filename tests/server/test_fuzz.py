"""Hostile input: thousands of malformed messages and edit sequences sent to
one `keystroke serve` process. Afterwards every request has been answered,
the server still completes normally, and its log holds no traceback."""
from __future__ import annotations

import itertools
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_clean_log, initialize_raw, start_raw_server, wait_ready_raw

URIS = ["file:///fuzz/a.py", "file:///fuzz/b.rs", "file:///fuzz/%E2%98%83.py", "untitled:Untitled-1",
        "file:///fuzz/never-opened.py", "not a uri", "", "file:///etc/passwd", "file:///dev/zero"]
METHODS = ["textDocument/inlineCompletion", "textDocument/completion", "textDocument/codeAction",
           "codeAction/resolve", "workspace/executeCommand", "textDocument/didOpen", "textDocument/didChange",
           "textDocument/didClose", "workspace/didChangeConfiguration", "$/cancelRequest", "initialize",
           "initialized", "textDocument/hover", "$/setTrace", "window/workDoneProgress/cancel", "unknown/method"]
# Settings that would reload the engine, switch completions off or slow every
# request for the rest of the run are left to test_config.py and the e2e tests.
SAFE_SETTINGS = ["temperature", "candidates", "completionItems", "bogus"]

pieces = st.sampled_from(list("abc xyz():\n\r\t{}[]\"'#=.\\") +
                         ["\x00", "\ud800", "\udfff", "\U0001F600", "\u00e9", "\u2028", "\r\n",
                          "def ", "    return ", "class ", "pass"])
texts = st.lists(pieces, max_size=30).map("".join)
ints = st.one_of(st.integers(-3, 40), st.integers(-2**40, 2**40), st.sampled_from([2**31, 2**53, -1]))
json_leaf = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False), texts)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
position = st.one_of(st.fixed_dictionaries({"line": ints, "character": ints}), json_value)
rng = st.one_of(st.fixed_dictionaries({"start": position, "end": position}), json_value)
uri = st.one_of(st.sampled_from(URIS), texts)
doc_id = st.fixed_dictionaries({"uri": uri})


# Plausible traffic on the documents that are open: edits with real ranges,
# requests at real positions, so the model runs between the hostile messages.
OPEN = URIS[:3]
near = st.fixed_dictionaries({"line": st.integers(0, 2), "character": st.integers(0, 30)})
clean = texts.map(lambda t: t.replace("\x00", ""))
PLAUSIBLE = {
    "textDocument/didOpen": st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({
        "uri": st.sampled_from(OPEN), "languageId": st.sampled_from(["python", "rust"]),
        "version": st.integers(0, 100), "text": clean.map(lambda t: "def f(x):\n    " + t)})}),
    "textDocument/didChange": st.fixed_dictionaries({
        "textDocument": st.fixed_dictionaries({"uri": st.sampled_from(OPEN), "version": st.integers(0, 10**6)}),
        "contentChanges": st.lists(st.fixed_dictionaries({
            "range": st.fixed_dictionaries({"start": near, "end": near}), "text": clean}), min_size=1, max_size=3)}),
    "textDocument/inlineCompletion": st.fixed_dictionaries({
        "textDocument": st.fixed_dictionaries({"uri": st.sampled_from(OPEN)}), "position": near,
        "context": st.fixed_dictionaries({"triggerKind": st.sampled_from([0, 1, 2])})}),
    "textDocument/completion": st.fixed_dictionaries({
        "textDocument": st.fixed_dictionaries({"uri": st.sampled_from(OPEN)}), "position": near}),
    "textDocument/codeAction": st.fixed_dictionaries({
        "textDocument": st.fixed_dictionaries({"uri": st.sampled_from(OPEN)}),
        "range": st.fixed_dictionaries({"start": near, "end": near}), "context": st.just({"diagnostics": []})}),
}


def params_for(method: str):
    if method in ("textDocument/inlineCompletion", "textDocument/completion"):
        return st.fixed_dictionaries({"textDocument": doc_id, "position": position}, optional={
            "context": st.fixed_dictionaries({"triggerKind": st.one_of(ints, json_value)}, optional={
                "selectedCompletionInfo": st.fixed_dictionaries({"range": rng, "text": texts})})})
    if method == "textDocument/codeAction":
        return st.fixed_dictionaries({"textDocument": doc_id, "range": rng,
                                      "context": st.just({"diagnostics": []})})
    if method == "codeAction/resolve":
        return st.fixed_dictionaries({"title": texts, "data": st.one_of(json_value, st.fixed_dictionaries({
            "uri": uri, "version": ints, "spec": st.one_of(json_value, st.fixed_dictionaries({
                "kind": st.sampled_from(["implement", "docstring", "complete_block", "x"]), "title": texts,
                "start": ints, "end": ints, "indent": st.sampled_from(["", "    ", "x"]), "name": texts}))}))})
    if method == "workspace/executeCommand":
        return st.fixed_dictionaries({"command": st.one_of(st.sampled_from(
            ["keystroke.status", "keystroke.clearCache", "keystroke.applyAction", "nope"]),
            texts)}, optional={"arguments": st.lists(json_value, max_size=3)})
    if method == "textDocument/didOpen":
        return st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({
            "uri": uri, "languageId": st.sampled_from(["python", "rust", "klingon", ""]),
            "version": ints, "text": st.one_of(texts, st.just("x = 1\n" * 50_000))})})
    if method == "textDocument/didChange":
        change = st.one_of(st.fixed_dictionaries({"range": rng, "text": texts}), st.fixed_dictionaries({"text": texts}),
                           json_value)
        return st.fixed_dictionaries({"textDocument": st.fixed_dictionaries({"uri": uri, "version": ints}),
                                      "contentChanges": st.lists(change, max_size=4)})
    if method == "textDocument/didClose":
        return st.fixed_dictionaries({"textDocument": doc_id})
    if method == "workspace/didChangeConfiguration":
        return st.fixed_dictionaries({"settings": st.one_of(json_value, st.dictionaries(
            st.sampled_from(SAFE_SETTINGS), json_value, max_size=4))})
    if method == "$/cancelRequest":
        return st.fixed_dictionaries({"id": st.one_of(ints, texts, json_value)})
    return json_value


@st.composite
def message(draw):
    """One hostile message: (bytes to send, id a response must come back for or None)."""
    shape = draw(st.sampled_from(["plausible"] * 8 + ["lsp"] * 8 + ["json", "bytes", "header", "deep", "broken"]))
    if shape == "json":
        body = json.dumps(draw(json_value)).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=60))
    elif shape == "deep":
        depth = draw(st.integers(100, 50_000))
        body = b"[" * depth + b"]" * depth
    elif shape == "header":   # self-delimiting header garbage: the stream resynchronises
        return draw(st.sampled_from([b"X-Junk: 1\r\n\r\n", b"Content-Length: abc\r\n\r\n",
                                     b"Content-Length: -4\r\n\r\n", b"\r\n\r\n"])), None
    else:
        if shape == "plausible":
            method = draw(st.sampled_from(sorted(PLAUSIBLE)))
            params = draw(PLAUSIBLE[method])
        else:
            method = draw(st.sampled_from(METHODS))
            params = draw(params_for(method))
        msg: dict = {"jsonrpc": "2.0", "method": method, "params": params}
        tracked = None
        if method not in ("textDocument/didOpen", "textDocument/didChange", "textDocument/didClose",
                          "workspace/didChangeConfiguration", "$/cancelRequest", "initialized"):
            if draw(st.integers(0, 9)) == 0:
                msg["id"] = draw(st.one_of(st.floats(), st.booleans(), st.lists(ints, max_size=2), st.none()))
            else:
                tracked = msg["id"] = f"fuzz-{next(COUNTER)}"
        if shape == "broken":
            del msg[draw(st.sampled_from(["jsonrpc", "params", "method"]))]
            if "method" not in msg:
                tracked = None
        body = json.dumps(msg).encode()
        return b"Content-Length: %d\r\n\r\n" % len(body) + body, tracked
    return b"Content-Length: %d\r\n\r\n" % len(body) + body, None


COUNTER = itertools.count()
SENT = {"messages": 0, "requests": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("fuzz")
    proc, client = start_raw_server(model, tmp / "fuzz.log")
    initialize_raw(client, tmp, {"maxTokens": 4, "debounceMs": 0, "cacheDir": str(tmp / "kv")})
    wait_ready_raw(client)
    client.notify("textDocument/didOpen", {"textDocument": {
        "uri": URIS[0], "languageId": "python", "version": 1, "text": "def f(x):\n    return x\n"}})
    yield proc, client, tmp
    if proc.poll() is None:
        proc.kill()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(message(), min_size=15, max_size=25))
def test_hostile_messages(server, batch):
    proc, client, _ = server
    for data, _ in batch:
        client.send_bytes(data)
    SENT["messages"] += len(batch)
    for _, msg_id in batch:
        if msg_id is not None:
            SENT["requests"] += 1
            answer = client.wait_response(msg_id, timeout=120)   # the editor never waits forever
            assert ("result" in answer) != ("error" in answer)
            if "error" in answer:
                assert answer["error"]["code"] != -32603, answer  # no internal error: no bug hit
    assert proc.poll() is None


def test_server_still_completes_after_the_fuzz(server):
    proc, client, tmp = server
    assert SENT["messages"] >= 2000, SENT
    # settings the fuzz may have changed (the engine's own were left alone)
    client.notify("workspace/didChangeConfiguration", {"settings": {
        "enabled": True, "maxDocumentBytes": 1_000_000, "enabledLanguages": "*", "maxTokens": 8}})
    uri = "file:///fuzz/final.py"
    client.notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "python", "version": 1, "text": "def add(a, b):\n    return a"}})
    status = wait_ready_raw(client)
    before = status["server"]["reuse"]["engine_calls"]
    print("fuzz:", SENT, status["server"]["outcomes"], "engine calls", before)
    answer = client.call("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 1, "character": 12},
        "context": {"triggerKind": 1}}, "final", timeout=120)
    assert "error" not in answer, answer
    items = (answer["result"] or {}).get("items", [])
    assert all(i["insertText"].startswith("    return a") for i in items)
    after = client.call("workspace/executeCommand", {"command": "keystroke.status"}, "final-status")["result"]
    assert after["server"]["reuse"]["engine_calls"] == before + 1    # the model really ran
    assert proc.poll() is None
    time.sleep(0.5)
    assert_clean_log((tmp / "fuzz.log").read_text(encoding="utf-8", errors="replace"))
