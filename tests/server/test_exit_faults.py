"""`keystroke serve` ends cleanly however the client leaves it: no SIGABRT
("terminate called without an active exception") from an engine thread
still inside torch while the interpreter exits, and no KV spill left
half-done on disk. Real subprocesses with the tiny model."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import RawClient, assert_clean_log, initialize_raw, serve_command, wait_ready_raw

# An invoked completion then samples ten candidates of up to 2,048 tokens: seconds of decoding.
LONG = {"maxTokens": 2048, "debounceMs": 0, "candidates": 10}
FATAL = ("Fatal Python error", "terminate called", "Traceback")


class Server:
    """`keystroke serve` over stdio, its stderr kept in a file."""

    def __init__(self, model: str, tmp: Path, name: str, options: dict) -> None:
        self.log, self.stderr = tmp / f"{name}.log", tmp / f"{name}.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(serve_command(model, self.log), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err,
                                         env=dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache")))

        def write(data: bytes) -> None:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        self.client = RawClient(self.proc.stdout.read1, write)
        initialize_raw(self.client, tmp, options)
        wait_ready_raw(self.client, timeout=60)

    def open(self, uri: str, text: str) -> None:
        self.client.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text}})

    def inline(self, uri: str, line: int, character: int, msg_id: str, *, invoked: bool) -> None:
        self.client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1 if invoked else 2}}, msg_id)

    def wait_exit(self, timeout: float = 15) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        return code, self.stderr.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for_log(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.01)


def test_closing_stdin_mid_decode_exits_cleanly(model, tmp_path):
    for run in range(3):
        s = Server(model, tmp_path, f"decode{run}", {"cacheDir": str(tmp_path / "kv"), **LONG})
        try:
            uri = (tmp_path / f"long{run}.py").as_uri()
            s.open(uri, "def f(x):\n")
            s.inline(uri, 1, 0, "long", invoked=True)
            wait_for_log(s.log, "context for")          # the worker has begun this request
            time.sleep(0.1)                             # ... and is decoding
            assert "long" not in s.client.responses     # still decoding: the test closes mid-decode
            t0 = time.monotonic()
            s.proc.stdin.close()
            code, stderr = s.wait_exit()
            assert code == 0, (code, stderr[-2000:])
            assert not any(f in stderr for f in FATAL), stderr[-2000:]
            assert time.monotonic() - t0 < 5             # the decode stopped within a token or so
        finally:
            s.kill()
        assert_clean_log(s.log.read_text())


def test_shutdown_right_after_did_close_spills_the_kv_cache_cleanly(model, tmp_path):
    """didClose spills a document's KV entry on the worker; shutdown and
    exit follow at once, with the spills of many documents still queued.
    The server waits for them, exits 0, and the next server on the same
    cacheDir reuses every entry from disk."""
    options = {"cacheDir": str(tmp_path / "kv"), "maxTokens": 4, "debounceMs": 0}
    for run in range(3):
        docs = [((tmp_path / f"doc{i}.py").as_uri(), f"def function_{i}_{run}(value):\n    return value * {i} + ")
                for i in range(12)]   # new text each run: no answer comes from the response cache
        s = Server(model, tmp_path, f"close{run}", options)
        try:
            for i, (uri, text) in enumerate(docs):
                s.open(uri, text)
                s.inline(uri, 1, len(text.split("\n")[1]), f"c{i}", invoked=False)
            for i in range(len(docs)):
                assert "result" in s.client.wait_response(f"c{i}", timeout=30)
            for uri, _ in docs:                         # each has a KV entry in memory now
                s.client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            s.client.request("shutdown", None, "down")
            s.client.notify("exit", None)
            code, stderr = s.wait_exit()
            assert code == 0, (code, stderr[-2000:])
            assert not any(f in stderr for f in FATAL), stderr[-2000:]
        finally:
            s.kill()
        assert_clean_log(s.log.read_text())

    s = Server(model, tmp_path, "after", options)
    try:
        for i, (uri, text) in enumerate(docs):
            s.open(uri, text)
            s.inline(uri, 1, len(text.split("\n")[1]), f"again{i}", invoked=True)
            answer = s.client.wait_response(f"again{i}", timeout=30)
            assert "result" in answer, answer
        st = s.client.call("workspace/executeCommand", {"command": "keystroke.status"}, "st")["result"]
        kv = st["engine_stats"]["kv"]
        assert kv["hits_disk"] == len(docs) and kv["corrupt"] == 0, kv   # every spill is whole on disk
        s.client.call("shutdown", None, "down")
        s.client.notify("exit", None)
        assert s.wait_exit()[0] == 0
    finally:
        s.kill()
    assert_clean_log(s.log.read_text())
