"""The remote backend against a real HTTP peer: a small stdlib server on 127.0.0.1 in a thread.

Each test scripts what the server answers (SSE streams split at awkward
places, 4xx, 5xx, dropped connections, silence) and checks what the backend
sent and returned, and that it closed the stream when it should.
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from keystroke.engine import fim
from keystroke.engine.api import Candidate, CompletionRequest, CompletionResult, SamplingParams, StopPolicy
from keystroke.engine.backends import EngineSettings, make_backend, read_api_key
from keystroke.engine.errors import KeystrokeError
from keystroke.engine.remote import (RemoteBackend, RemoteSettings, hold_back_space, render_prompt, text_template,
                                     unheal)
from keystroke.engine.remote.breaker import CircuitBreaker
from keystroke.engine.remote.http import Endpoint

# ---------------------------------------------------------------------------
# The fake server
# ---------------------------------------------------------------------------

Script = Callable[["Handler", str, str, dict], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        self.server.owner.requests.append((method, self.path, dict(self.headers), body))
        self.close_connection = True
        try:
            self.server.owner.script(self, method, self.path, body)
        except (BrokenPipeError, ConnectionResetError):
            self.server.owner.disconnected_at.append(time.monotonic())

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # -- answers ----------------------------------------------------------
    def json(self, obj: object, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FakeServer"


class FakeServer:
    def __init__(self, script: Script, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.disconnected_at: list[float] = []
        self.httpd = _HTTPServer(("127.0.0.1", port), Handler)
        self.httpd.owner = self
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def posts(self, path_end: str = "completions") -> list[dict]:
        return [b for m, p, _, b in self.requests if m == "POST" and p.endswith(path_end)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(script: Script, **kw) -> FakeServer:
        s = FakeServer(script, **kw)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def openai_event(text: str, finish: str | None = None, index: int = 0, **extra) -> bytes:
    obj = {"object": "text_completion", "choices": [{"index": index, "text": text, "finish_reason": finish}],
           **extra}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stream_texts(pieces: list[str], finish: str = "stop", delay: float = 0.0) -> Script:
    """A completions endpoint streaming `pieces` (one event each), then [DONE]."""
    def script(h: Handler, method: str, path: str, body: dict) -> None:
        if not path.endswith("/completions"):
            h.json({"error": {"message": "not found"}}, 404)
            return
        h.start_sse()
        for i, piece in enumerate(pieces):
            h.chunk(openai_event(piece, finish if i == len(pieces) - 1 else None))
            if delay:
                time.sleep(delay)
        h.chunk(b"data: [DONE]\n\n")
        h.end_chunks()
    return script


def backend_for(url: str, **kw) -> RemoteBackend:
    kw.setdefault("fim", "none")
    kw.setdefault("model", "m")
    kw.setdefault("backoff_ms", 1)
    return RemoteBackend(RemoteSettings(url=url, **kw))


def req(prefix: str = "x = ", *, mode: str = "free", max_tokens: int = 64, **kw) -> CompletionRequest:
    kw.setdefault("stop", StopPolicy(max_tokens=max_tokens, mode=mode))
    return CompletionRequest(doc_id="a.py", prefix=prefix, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Prompt text
# ---------------------------------------------------------------------------

class _CharTokenizer:
    """Encodes text as code points; the template's tokens get ids above that range."""

    add_bos = False
    bos_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


@pytest.mark.parametrize("name", [n for n, _, _ in fim.KNOWN_TEMPLATES] + [None])
def test_rendered_prompt_is_the_local_layout_as_text(name):
    header, prefix, suffix = "# ctx.py\nimport os\n", "def f(x):\n    return ", "\n\nprint(f(1))\n"
    template = text_template(name) if name else None
    ids_template = None
    if template is not None:
        ids_template = fim.FimTemplate(template.name, template.prefix, template.suffix, template.middle,
                                       template.order, 0x110001, 0x110002, 0x110003)
    layout = fim.build_prompt(_CharTokenizer(), ids_template, header, prefix, suffix)  # type: ignore[arg-type]
    names = {0x110001: template and template.prefix, 0x110002: template and template.suffix,
             0x110003: template and template.middle}
    expected = "".join(names[i] if i in names else chr(i) for i in layout.ids)
    assert render_prompt(template, header, prefix, suffix) == expected
    if template is None:
        assert expected == header + prefix
    elif template.order == "spm":
        assert expected.endswith(header + prefix)       # typing only appends
    else:
        assert expected.endswith(suffix + template.middle + "    return ")  # the cursor's line in the middle


def test_trailing_whitespace_is_held_back_and_expected_first():
    qwen, starcoder = text_template("qwen"), text_template("starcoder")
    assert hold_back_space(None, "def f():\n    ") == ("def f():\n", "    ")
    assert hold_back_space(starcoder, "x = ") == ("x =", " ")           # SPM: the prefix ends the prompt
    assert hold_back_space(qwen, "x = ") == ("x =", " ")                # PSM too: the typed line ends the prompt
    assert hold_back_space(None, "x") == ("x", "")
    assert unheal("      return x", "    ") == "  return x"             # the model indents further
    assert unheal("  ", "    ") is None                                  # undecided yet
    assert unheal("  y", "    ") == "y"                                  # other indentation: the cursor's stays
    assert unheal("\n", " ") == "\n"
    assert unheal("abc", "") == "abc"


def test_indentation_is_not_typed_twice(serve):
    server = serve(stream_texts(["\n", "       ", " return", " a", "\n"]))
    r = backend_for(server.url).complete(req("def f(a):\n    if a:\n        ", mode="line"))
    assert server.posts()[0]["prompt"] == "def f(a):\n    if a:\n"
    assert (r.text, r.candidates[0].stop_reason) == ("", "line")        # the model ended the line at once
    server2 = serve(stream_texts(["       ", " return", " a", "\n"]))
    r = backend_for(server2.url).complete(req("def f(a):\n    if a:\n        ", mode="line"))
    assert (r.text, r.candidates[0].stop_reason) == ("return a", "line")


def test_codellama_text_spelling_has_no_sentencepiece_marker():
    assert text_template("codellama").prefix == "<PRE>"
    with pytest.raises(ValueError):
        text_template("nope")


def test_endpoint_paths():
    e = Endpoint.parse("https://gpu.example/proxy/v1/")
    assert (e.port, e.openai_path("completions"), e.root_path("infill")) == (443, "/proxy/v1/completions",
                                                                             "/proxy/infill")
    e = Endpoint.parse("http://localhost:8080")
    assert (e.openai_path("models"), e.root_path("tokenize")) == ("/v1/models", "/tokenize")
    for bad in ("ftp://x", "http://", "http://u:p@host/v1", "http://host:99999"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

def test_streams_text_and_sends_the_request_fields(serve):
    server = serve(stream_texts([" 1", " +", " 2"], finish="stop"))
    b = backend_for(server.url, model="coder")
    r = b.complete(req("x = ", sampling=SamplingParams(temperature=0.2, top_p=0.9, top_k=20, seed=7),
                       max_tokens=16, stop=StopPolicy(max_tokens=16, stop_strings=("\n\n",))))
    assert r.error is None and r.text == "1 + 2" and r.candidates[0].stop_reason == "stop_string"
    (body,) = server.posts()
    assert body["prompt"] == "x =" and body["stream"] is True and body["model"] == "coder"   # space held back
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (16, 0.2, 0.9, 20, 7)
    assert body["stop"] == ["\n\n"] and body["cache_prompt"] is True and body["repeat_penalty"] == 1.0
    assert body["n"] == 1
    assert r.timings.decode_tokens == 3 and r.timings.prefill_ms > 0


def test_sse_split_at_every_byte_with_crlf_comments_and_multiline_data(serve):
    events = (b": ping\r\n\r\n" + openai_event("h\u00e9").replace(b"\n\n", b"\r\n\r\n")
              + b"data:" + json.dumps({"choices": [{"index": 0, "text": "llo"}]}).encode() + b"\n\n"
              + b"event: message\ndata: {\"choices\": [{\"index\": 0,\ndata:  \"text\": \"!\"}]}\n\n"
              + b"data: [DONE]\n\n")

    def script(h, method, path, body):
        h.start_sse()
        for i in range(len(events)):     # one byte per HTTP chunk: every boundary is exercised
            h.chunk(events[i:i + 1])
        h.end_chunks()
    server = serve(script)
    r = backend_for(server.url).complete(req())
    assert r.error is None and r.text == "h\u00e9llo!" and r.candidates[0].stop_reason == "eos"


def test_plain_json_answer_when_the_server_ignores_stream(serve):
    server = serve(lambda h, m, p, b: h.json({"choices": [{"index": 0, "text": "42", "finish_reason": "length"}],
                                              "usage": {"prompt_tokens": 5, "completion_tokens": 1}}))
    r = backend_for(server.url).complete(req())
    assert (r.text, r.candidates[0].stop_reason, r.timings.prompt_tokens) == ("42", "max_tokens", 5)


def test_llama_cpp_timings_report_the_remote_cache(serve):
    def script(h, method, path, body):
        h.start_sse()
        h.chunk(openai_event("a"))
        h.chunk(openai_event("b", "length", timings={"prompt_n": 3, "cache_n": 40, "predicted_n": 2}))
        h.chunk(b"data: [DONE]\n\n")
        h.end_chunks()
    server = serve(script)
    b = backend_for(server.url)
    r = b.complete(req())
    assert (r.timings.reused_memory_tokens, r.timings.computed_tokens, r.timings.prompt_tokens) == (40, 3, 43)
    assert b.stats()["remote_cached_tokens"] == 40


def test_line_mode_stop_rule_closes_the_stream(serve):
    # The server would go on for 200 pieces; the local StopChecker ends the line and hangs up.
    server = serve(stream_texts(["foo(", "1)", "\n", "bar"] + ["x"] * 200, delay=0.01))
    t0 = time.monotonic()
    r = backend_for(server.url).complete(req("y = ", mode="line"))
    assert (r.text, r.candidates[0].stop_reason) == ("foo(1)", "line")
    assert time.monotonic() - t0 < 1.0
    deadline = time.monotonic() + 2
    while not server.disconnected_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.disconnected_at, "the server never saw the client leave"


def test_a_last_line_that_jumps_over_the_suffix_is_cut_at_the_servers_end(serve):
    """The server ends the stream after `return x` with code of the same block below: the same rule
    as the local engine's end token (stops.StopChecker.finish)."""
    for suffix, expected, reason in (("\n    y = 1\n", "", "suffix"), ("\nz = 2\n", "    return x", "eos")):
        server = serve(stream_texts(["    return", " x"], finish="stop"))
        r = backend_for(server.url).complete(req("def f(x):\n", suffix=suffix,
                                                 stop=StopPolicy(mode="line", language_id="python")))
        assert (r.candidates[0].text, r.candidates[0].stop_reason) == (expected, reason)


def test_max_tokens_counted_on_pieces(serve):
    server = serve(stream_texts(["a"] * 50, delay=0.002))
    r = backend_for(server.url).complete(req(max_tokens=5))
    assert (r.text, r.candidates[0].stop_reason, r.candidates[0].tokens) == ("aaaaa", "max_tokens", 5)


def test_n_choices_interleaved(serve):
    def script(h, method, path, body):
        h.start_sse()
        for text0, text1 in (("a", "c"), ("b", "d")):
            h.chunk(openai_event(text0, index=0))
            h.chunk(openai_event(text1, index=1))
        h.chunk(openai_event("", "stop", index=0))
        h.chunk(openai_event("", "length", index=1))
        h.chunk(b"data: [DONE]\n\n")
        h.end_chunks()
    server = serve(script)
    r = backend_for(server.url).complete(req(n=2, sampling=SamplingParams(temperature=0.8)))
    assert [(c.text, c.stop_reason) for c in r.candidates] == [("ab", "eos"), ("cd", "max_tokens")]
    assert server.posts()[0]["n"] == 2


def test_a_server_that_refuses_n_is_asked_one_candidate_at_a_time(serve):
    """llama.cpp's server answers n > 1 with HTTP 400: learnt once, then each candidate is its own request."""
    def script(h, method, path, body):
        if body.get("n", 1) > 1:
            h.json({"error": {"code": 400, "type": "invalid_request_error",
                              "message": f"Field 'n': Value must be between 1 <= value <= 1, but got {body['n']}"}}, 400)
            return
        h.start_sse()
        h.chunk(openai_event(f"seed{body.get('seed')}", "stop"))
        h.chunk(b"data: [DONE]\n\n")
        h.end_chunks()
    server = serve(script)
    backend = backend_for(server.url, retries=0)
    r = backend.complete(req(n=3, sampling=SamplingParams(temperature=0.8, seed=7)))
    assert r.error is None and [c.text for c in r.candidates] == ["seed7", "seed8", "seed9"]
    assert [b["n"] for b in server.posts()] == [3, 1, 1, 1]
    again = backend.complete(req(n=2, sampling=SamplingParams(temperature=0.8, seed=1)))
    assert [c.text for c in again.candidates] == ["seed1", "seed2"]
    assert [b["n"] for b in server.posts()][4:] == [1, 1]       # no second refusal: it was learnt
    assert backend.stats()["rejected"] == 0


def test_other_refusals_of_several_candidates_are_errors(serve):
    def script(h, method, path, body):
        h.json({"error": {"message": "the prompt is too long"}}, 400)
    server = serve(script)
    r = backend_for(server.url, retries=0).complete(req(n=3, sampling=SamplingParams(temperature=0.8)))
    assert r.error and "too long" in r.error and len(server.posts()) == 1


def test_error_event_in_stream_is_reported(serve):
    def script(h, method, path, body):
        h.start_sse()
        h.chunk(b'data: {"error": {"message": "context window exceeded"}}\n\n')
        h.end_chunks()
    server = serve(script)
    r = backend_for(server.url).complete(req())
    assert r.candidates == [] and "context window exceeded" in r.error


# ---------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------

def test_cancellation_closes_the_stream_within_a_chunk(serve):
    sent: list[float] = []

    def script(h, method, path, body):
        h.start_sse()
        for _ in range(500):
            h.chunk(openai_event("t"))
            sent.append(time.monotonic())
            time.sleep(0.01)
    server = serve(script)
    cancel_at: list[float] = []

    def is_cancelled() -> bool:
        if len(sent) >= 5 and not cancel_at:
            cancel_at.append(time.monotonic())
        return bool(cancel_at)
    r = backend_for(server.url).complete(req(is_cancelled=is_cancelled))
    # The client may have read fewer chunks than the server wrote when the
    # cancel came; what it keeps must be exactly what it read, nothing more.
    assert r.candidates[0].stop_reason == "cancelled"
    assert r.text == "t" * len(r.text) and len(r.text) <= len(sent)
    deadline = time.monotonic() + 2
    while not server.disconnected_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.disconnected_at, "the stream stayed open after cancellation"
    after = [t for t in sent if t > cancel_at[0]]
    assert len(after) <= 3, f"{len(after)} chunks were sent after cancelling"


def test_cancellation_while_the_server_is_silent(serve):
    # A long prefill: headers, then nothing. The watcher closes the socket.
    def script(h, method, path, body):
        h.start_sse()
        time.sleep(3)
        h.chunk(openai_event("late"))
    server = serve(script)
    start = time.monotonic()
    b = backend_for(server.url, timeout_ms=10_000)
    r = b.complete(req(is_cancelled=lambda: time.monotonic() - start > 0.2))
    assert time.monotonic() - start < 0.8
    assert r.error is None and [c.stop_reason for c in r.candidates] == ["cancelled"]
    assert b.breaker.state == "up"


def test_deadline_closes_the_stream(serve):
    server = serve(stream_texts(["z"] * 300, delay=0.01))
    t0 = time.monotonic()
    r = backend_for(server.url).complete(req(stop=StopPolicy(max_tokens=500, deadline_ms=150)))
    assert r.candidates[0].stop_reason == "deadline" and time.monotonic() - t0 < 0.6
    assert 0 < len(r.text) < 300


def test_already_cancelled_sends_nothing(serve):
    server = serve(stream_texts(["a"]))
    r = backend_for(server.url).complete(req(is_cancelled=lambda: True))
    assert r.candidates[0].stop_reason == "cancelled" and server.requests == []


# ---------------------------------------------------------------------------
# Failures, retries, the breaker
# ---------------------------------------------------------------------------

def test_4xx_is_not_retried(serve):
    server = serve(lambda h, m, p, b: h.json({"error": {"message": "model 'm' not found"}}, 404))
    b = backend_for(server.url, retries=3)
    r = b.complete(req())
    assert r.candidates == [] and "HTTP 404" in r.error and "model 'm' not found" in r.error
    assert len(server.posts()) == 1 and b.stats()["retries"] == 0 and b.breaker.state == "up"


def test_5xx_is_retried_with_backoff_then_succeeds(serve):
    calls = []

    def script(h, method, path, body):
        calls.append(1)
        if len(calls) <= 2:
            h.json({"error": "loading model"}, 503)
        else:
            stream_texts(["ok"])(h, method, path, body)
    server = serve(script)
    delays: list[float] = []
    b = RemoteBackend(RemoteSettings(url=server.url, model="m", fim="none", retries=2, backoff_ms=100),
                      sleep=delays.append)
    r = b.complete(req())
    assert r.text == "ok" and len(server.posts()) == 3 and b.stats()["retries"] == 2
    assert sum(delays) == pytest.approx(0.1 + 0.2, abs=0.02)    # 100 ms, then 200 ms


def test_connection_refused_message_and_breaker_opens(serve):
    port = free_port()
    b = RemoteBackend(RemoteSettings(url=f"http://127.0.0.1:{port}/v1", model="m", fim="none", retries=1,
                                     backoff_ms=1, failure_threshold=2, cooldown_ms=60_000))
    states: list[str] = []
    b.watch(lambda state, message: states.append(state))
    r1 = b.complete(req())
    assert r1.candidates == [] and r1.error.startswith(f"remote engine at http://127.0.0.1:{port}/v1 is unreachable")
    assert "refused" in r1.error.lower()
    assert b.breaker.state == "up"
    b.complete(req())
    assert b.breaker.state == "down" and states == ["down"]
    # Down: the answer is immediate and nothing is attempted.
    t0 = time.perf_counter()
    r3 = b.complete(req())
    assert (time.perf_counter() - t0) < 0.01 and "unreachable" in r3.error
    s = b.stats()
    assert (s["state"], s["remote_requests"], s["refused_while_down"], s["failures"]) == ("down", 4, 1, 2)


def test_breaker_probes_after_cooldown_and_recovers(serve):
    healthy = {"on": False}
    clock = {"t": 0.0}

    def script(h, method, path, body):
        if healthy["on"]:
            stream_texts(["back"])(h, method, path, body)
        else:
            h.json({"error": "overloaded"}, 503)
    server = serve(script)
    b = RemoteBackend(RemoteSettings(url=server.url, model="m", fim="none", retries=0, failure_threshold=2,
                                     cooldown_ms=1000), clock=lambda: clock["t"])
    states: list[str] = []
    b.watch(lambda state, message: states.append(state))
    b.complete(req()), b.complete(req())
    assert b.breaker.state == "down" and len(server.posts()) == 2
    for _ in range(5):
        assert "unreachable" in b.complete(req()).error
    assert len(server.posts()) == 2                     # no hammering while down
    clock["t"] = 1.5                                    # cool-down over: one probe, still failing
    b.complete(req())
    assert len(server.posts()) == 3 and b.breaker.state == "down" and b.breaker.cooldown_s == 2.0
    clock["t"] = 2.5
    b.complete(req())
    assert len(server.posts()) == 3                     # the doubled cool-down holds
    clock["t"] = 4.0
    healthy["on"] = True
    r = b.complete(req())
    assert r.text == "back" and b.breaker.state == "up" and states == ["down", "up"]


def test_breaker_lets_one_probe_through():
    clock = {"t": 0.0}
    br = CircuitBreaker(threshold=1, cooldown_s=1, clock=lambda: clock["t"])
    assert br.failure("x") is True and br.state == "down" and not br.allow()
    clock["t"] = 1.0
    assert br.allow() and br.state == "probing" and not br.allow()
    br.release()
    assert br.allow()
    assert br.success() is True and br.state == "up" and br.failures == 0


def test_stream_broken_midway_is_retried(serve):
    calls = []

    def script(h, method, path, body):
        calls.append(1)
        h.start_sse()
        h.chunk(openai_event("par"))
        if len(calls) == 1:
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)    # the server dies mid-answer
            return
        h.chunk(openai_event("tial", "stop"))
        h.chunk(b"data: [DONE]\n\n")
        h.end_chunks()
    server = serve(script)
    b = backend_for(server.url)
    r = b.complete(req())
    assert r.text == "partial" and len(calls) == 2 and b.stats()["retries"] == 1


def test_recovers_when_the_server_comes_back_on_the_same_port(serve):
    port = free_port()
    b = RemoteBackend(RemoteSettings(url=f"http://127.0.0.1:{port}/v1", model="m", fim="none", retries=0,
                                     failure_threshold=1, cooldown_ms=100))
    assert "unreachable" in b.complete(req()).error and b.breaker.state == "down"
    serve(stream_texts(["hello"]), port=port)
    time.sleep(0.15)
    r = b.complete(req())
    assert r.text == "hello" and b.breaker.state == "up"


def test_silent_server_times_out(serve):
    def script(h, method, path, body):
        time.sleep(1.0)
    server = serve(script)
    b = backend_for(server.url, timeout_ms=200, retries=0)
    t0 = time.monotonic()
    r = b.complete(req())
    assert time.monotonic() - t0 < 0.8 and "did not answer in time" in r.error


def test_fallback_to_local_while_down(serve):
    port = free_port()
    loads: list[int] = []

    class Local:
        def complete(self, request):
            return CompletionResult([Candidate("local!", "eos")])

        def stats(self):
            return {"requests": 1}

        def clear_cache(self):
            pass

        def close_document(self, doc_id):
            pass

    def loader(settings):
        loads.append(1)
        return Local()
    b = make_backend({"model": "whatever", "engine": {"backend": "remote", "url": f"http://127.0.0.1:{port}",
                                                      "fallback": "local", "retries": 0, "failureThreshold": 1}},
                     local_loader=loader)
    assert loads == []                                  # lazy: nothing loaded while not needed
    assert b.complete(req()).text == "local!"
    assert b.complete(req()).text == "local!"
    assert loads == [1] and b.stats()["fallback_requests"] == 2 and b.stats()["fallback"] == {"requests": 1}


# ---------------------------------------------------------------------------
# FIM: explicit, detected, /infill
# ---------------------------------------------------------------------------

def test_explicit_template_renders_fim_prompt(serve):
    server = serve(stream_texts(["b"]))
    backend_for(server.url, fim="qwen").complete(
        CompletionRequest(doc_id="a.py", prefix="a = ", suffix="\nprint(a)", header="# h\n"))
    # the typed line goes after <|fim_middle|>, its trailing space held back (see hold_back_space)
    assert server.posts()[0]["prompt"] == "<|fim_prefix|># h\n<|fim_suffix|>\nprint(a)<|fim_middle|>a ="


def test_auto_template_from_the_servers_tokenizer_and_model_list(serve):
    specials = {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"}

    def tokenize(text: str) -> list[int]:
        out, i = [1], 0                                 # a BOS, then one id per special or character
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            out.append(7 if hit else ord(text[i]))
            i += len(hit) if hit else 1
        return out

    def script(h, method, path, body):
        if path == "/v1/models":
            h.json({"object": "list", "data": [{"id": "bigcode/starcoder2-3b"}]})
        elif path == "/tokenize":
            h.json({"tokens": tokenize(body["prompt"])} if "prompt" in body else {"detail": "no"},
                   200 if "prompt" in body else 422)    # vLLM's shape only
        else:
            stream_texts(["1"])(h, method, path, body)
    server = serve(script)
    b = RemoteBackend(RemoteSettings(url=server.url, fim="auto"))
    b.complete(CompletionRequest(doc_id="a.py", prefix="p", suffix="s"))
    assert b.info()["fim"] == "starcoder" and b.info()["fim_source"] == "tokenizer"
    body = server.posts()[-1]
    assert body["model"] == "bigcode/starcoder2-3b"
    assert body["prompt"] == "<fim_prefix><fim_suffix>s<fim_middle>p"    # SPM, as the local engine


def test_auto_template_falls_back_to_the_model_name_then_plain(serve):
    server = serve(lambda h, m, p, b: h.json({}, 404) if not p.endswith("completions")
                   else stream_texts(["1"])(h, m, p, b))
    b = RemoteBackend(RemoteSettings(url=server.url, model="Qwen/Qwen2.5-Coder-7B", fim="auto"))
    b.complete(CompletionRequest(doc_id="a.py", prefix="p", suffix="s"))
    assert (b.info()["fim"], b.info()["fim_source"]) == ("qwen", "model name")
    b2 = RemoteBackend(RemoteSettings(url=server.url, model="llama-3-8b", fim="auto"))
    b2.complete(CompletionRequest(doc_id="a.py", prefix="p", suffix="s"))
    assert b2.info()["fim"] is None and server.posts()[-1]["prompt"] == "p"


def test_infill_endpoint(serve):
    def script(h, method, path, body):
        h.start_sse()
        h.chunk(b'data: {"content": "mid", "stop": false}\n\n')
        h.chunk(b'data: {"content": "dle", "stop": true, "stop_type": "limit", '
                b'"timings": {"prompt_n": 2, "cache_n": 9}}\n\n')
        h.end_chunks()
    server = serve(script)
    b = RemoteBackend(RemoteSettings(url=f"http://127.0.0.1:{server.port}", fim="infill"))
    r = b.complete(CompletionRequest(doc_id="a.py", prefix="a", suffix="z", header="H",
                                     stop=StopPolicy(max_tokens=9)))
    assert (r.text, r.candidates[0].stop_reason, r.timings.reused_memory_tokens) == ("middle", "max_tokens", 9)
    (m, path, _, body), = server.requests
    assert path == "/infill" and (body["input_prefix"], body["input_suffix"], body["n_predict"]) == ("Ha", "z", 9)


# ---------------------------------------------------------------------------
# Settings, keys, TLS
# ---------------------------------------------------------------------------

def test_key_from_env_goes_only_into_the_authorization_header(serve, monkeypatch, caplog):
    monkeypatch.setenv("KS_TEST_KEY", "sk-secret-123")
    server = serve(stream_texts(["k"]))
    caplog.set_level(logging.DEBUG)
    b = make_backend({"engine.backend": "remote", "engine.url": server.url, "engine.apiKeyEnv": "KS_TEST_KEY",
                      "engine.fim": "none", "engine.model": "m"})
    assert b.complete(req()).text == "k"
    headers = server.requests[-1][2]
    assert headers["Authorization"] == "Bearer sk-secret-123"
    for shown in (repr(b.settings), repr(b.client), json.dumps(b.info()), json.dumps(b.stats()), caplog.text):
        assert "sk-secret-123" not in shown


def test_key_from_file(tmp_path):
    f = tmp_path / "key"
    f.write_text("file-key\n")
    f.chmod(0o600)
    assert read_api_key({"apiKeyFile": str(f)}) == "file-key"
    with pytest.raises(KeystrokeError, match="cannot read the API key file"):
        read_api_key({"apiKeyFile": str(tmp_path / "missing")})


def test_bad_settings_give_clear_errors(monkeypatch):
    monkeypatch.delenv("KS_UNSET_KEY", raising=False)
    cases = [({"engine": {"backend": "gpu"}}, "must be \"local\" or \"remote\""),
             ({"engine": {"backend": "remote"}}, "engine.url is not set"),
             ({"engine": {"backend": "remote", "url": "ftp://x"}}, "http:// or https://"),
             ({"engine": {"backend": "remote", "url": "http://x", "apiKey": "k"}}, "not read from settings"),
             ({"engine": {"backend": "remote", "url": "http://x", "apiKeyEnv": "KS_UNSET_KEY"}}, "is not set"),
             ({"engine": {"backend": "remote", "url": "http://x", "fim": "magic"}}, "engine.fim must be"),
             ({"engine": {"backend": "remote", "url": "http://x", "timeoutMs": "fast"}}, "engine.timeoutMs"),
             ({"engine": {"backend": "remote", "url": "http://x", "verifyTls": "no"}}, "engine.verifyTls"),
             ({"engine": {"backend": "remote", "url": "http://x", "fallback": "yes"}}, "engine.fallback"),
             ({"engine": "remote"}, "must be an object")]
    for settings, message in cases:
        with pytest.raises(KeystrokeError, match=message.replace("(", r"\(")):
            make_backend(settings, local_loader=lambda s: pytest.fail("no local engine wanted"))


def test_local_is_the_default_and_sends_nothing():
    seen = []
    backend = make_backend({"model": "smollm2-135m", "quant": "fp32"}, local_loader=lambda s: seen.append(s) or "L")
    assert backend == "L" and seen == [EngineSettings(model="smollm2-135m", quant="fp32")]


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_is_verified_by_default(serve, self_signed, caplog):
    cert, key = self_signed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = serve(stream_texts(["secure"]), tls=ctx)
    url = f"https://127.0.0.1:{server.port}/v1"
    r = backend_for(url, retries=0).complete(req())
    assert r.candidates == [] and "could not be verified" in r.error
    assert server.posts() == []                                     # no prompt left the client
    caplog.set_level(logging.WARNING)
    b = backend_for(url, verify_tls=False)
    assert "TLS verification is off" in caplog.text
    assert b.complete(req()).text == "secure"
