"""The remote backend against a real server: llama.cpp's own HTTP server (the prebuilt
`xllamacpp` wheel, through scripts/llamacpp_server.py) serving SmolLM2-135M's GGUF on
loopback, started by the tests. It refuses n > 1, as llama-server does.

What must hold: completions through the backend and through `keystroke serve`;
cancellation closes the stream and so stops the remote generation; a server
killed mid-stream and restarted is used again by the same backend object;
greedy suggestions agree with the local engine on the same GGUF.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from keystroke.engine.api import CompletionRequest, SamplingParams, StopPolicy
from keystroke.engine.backends import make_backend
from keystroke.engine.loading.registry import resolve
from keystroke.engine.remote import hold_back_space, unheal
from keystroke.engine.stops import StopChecker

pytestmark = pytest.mark.real_model

READY_TIMEOUT_S = 120


SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llamacpp_server.py"


def _require_llama_cpp() -> None:
    try:
        import xllamacpp  # noqa: F401
    except ImportError as err:
        pytest.fail(f"llama.cpp's server (the xllamacpp wheel) is needed for the remote-engine tests ({err}); "
                    "install it with `pip install -e '.[bench]'` (.ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama.cpp server process on a loopback port; restartable on the same port."""

    def __init__(self, model: Path, log_path: Path) -> None:
        self.model = model
        self.port = _free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> float:
        """Start and wait until it answers; the seconds that took."""
        t0 = time.monotonic()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), str(self.model), "--port", str(self.port), "--threads", "1",
             "--ctx", "2048"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        while time.monotonic() - t0 < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise AssertionError(f"the llama.cpp server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"the llama.cpp server is not ready after {READY_TIMEOUT_S}s: {self.log_tail()}")
        # The first generation pages the mmapped weights in (seconds on a busy machine): do it here,
        # so the tests time keystroke and not that.
        self.complete_directly("x", 1)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log_tail_bytes(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def complete_directly(self, prompt: str, max_tokens: int) -> str:
        """The server's own greedy answer, not streamed, without keystroke in between."""
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "repeat_penalty": 1.0,
                           "stream": False}).encode()
        rq = urllib.request.Request(self.url + "/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(rq, timeout=60) as r:
            return json.load(r)["choices"][0]["text"]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    _require_llama_cpp()
    return resolve("smollm2-135m")


@pytest.fixture(scope="module")
def llama_server(smollm2, tmp_path_factory):
    server = LlamaServer(smollm2, tmp_path_factory.mktemp("llama") / "server.log")
    seconds = server.start()
    print(f"\nllama.cpp server ready in {seconds:.1f}s")
    yield server
    server.kill()


def remote(url: str, **engine) -> object:
    engine.setdefault("timeoutMs", 60_000)     # generous: CI machines and this one run several jobs at once
    return make_backend({"engine": {"backend": "remote", "url": url, **engine}})


def line_request(prefix: str, doc: str = "e2e.py", **kw) -> CompletionRequest:
    kw.setdefault("stop", StopPolicy(max_tokens=24, mode="line"))
    return CompletionRequest(doc_id=doc, prefix=prefix, use_cache=False, **kw)


PROMPT = "import os\n\n\ndef list_python_files(root):\n    result = []\n    for name in os.listdir(root):\n        if "


def test_completion_through_the_backend_matches_the_servers_own_answer(llama_server):
    backend = remote(llama_server.url)
    t0 = time.perf_counter()
    r = backend.complete(line_request(PROMPT))
    first_ms = (time.perf_counter() - t0) * 1000
    assert r.error is None and r.candidates, r.error
    # Derived, not hard-coded: the server's own greedy text for the prompt keystroke sends (the
    # cursor's trailing space held back), without that space, cut by the same line rule.
    sent, held = hold_back_space(None, PROMPT)
    assert held == " "
    direct = unheal(llama_server.complete_directly(sent, 24), held) or ""
    stop = StopChecker(StopPolicy(max_tokens=24, mode="line"), PROMPT.rsplit("\n", 1)[-1]).check(direct)
    assert r.text == (direct[:stop.cut] if stop else direct)
    assert r.text.strip(), "the model suggested nothing for an obvious condition"
    info = backend.info()
    assert info["model"] == str(llama_server.model)             # discovered from /v1/models
    assert (info["fim"], info["fim_source"]) == (None, "tokenizer")   # SmolLM2 has no FIM tokens
    # Typing on: the prompt grows at its end, the server's prompt cache keeps the rest.
    t1 = time.perf_counter()
    r2 = backend.complete(line_request(PROMPT + "name"))
    second_ms = (time.perf_counter() - t1) * 1000
    assert r2.error is None
    s = backend.stats()
    assert s["state"] == "up" and s["remote_requests"] == 2 and s["first_token_ms"]["count"] == 2
    print(f"\nremote line completion: first request {first_ms:.0f} ms (with model and template discovery), "
          f"next keystroke {second_ms:.0f} ms; first token p50 {s['first_token_ms']['p50']} ms")


def test_block_mode_and_stop_strings(llama_server):
    backend = remote(llama_server.url, fim="none")
    prefix = "def is_even(n):\n"
    r = backend.complete(CompletionRequest(doc_id="b.py", prefix=prefix, use_cache=False,
                                           stop=StopPolicy(max_tokens=48, mode="block")))
    direct = llama_server.complete_directly(prefix, 48)
    stop = StopChecker(StopPolicy(max_tokens=48, mode="block"), "").check(direct)
    assert r.text == (direct[:stop.cut] if stop else direct)
    r = backend.complete(CompletionRequest(doc_id="b.py", prefix=prefix, use_cache=False,
                                           stop=StopPolicy(max_tokens=48, stop_strings=("return",))))
    assert "return" not in r.text


# A prompt SmolLM2 continues for hundreds of tokens without an end token (greedy, on llama.cpp's server).
ENDLESS = "SQUARES = {\n    1: 1,\n    2: 4,\n    3: 9,\n"


def test_cancellation_closes_the_stream_and_stops_the_remote_generation(llama_server):
    backend = remote(llama_server.url, fim="none")
    free = StopPolicy(max_tokens=32, mode="free", stop_on_repetition=False)
    t0 = time.monotonic()
    r0 = backend.complete(CompletionRequest(doc_id="c.py", prefix="# Notes on Python.\n", stop=free, use_cache=False))
    per_token_s = (time.monotonic() - t0) / max(1, r0.candidates[0].tokens)
    long = StopPolicy(max_tokens=1500, mode="free", stop_on_repetition=False)
    t0 = time.monotonic()
    r = backend.complete(CompletionRequest(doc_id="c.py", prefix=ENDLESS, stop=long,
                                           use_cache=False, is_cancelled=lambda: time.monotonic() - t0 > 0.5))
    cancelled_after = time.monotonic() - t0
    assert r.candidates and r.candidates[0].stop_reason == "cancelled"
    assert 0.5 <= cancelled_after < 2.0
    # The server stopped decoding when the stream closed: the next request does not queue behind ~1500 tokens.
    t1 = time.monotonic()
    r2 = backend.complete(line_request("x = 1\ny = ", stop=StopPolicy(max_tokens=2, mode="line")))
    next_s = time.monotonic() - t1
    remaining_s = (1500 - r.candidates[0].tokens) * per_token_s
    assert r2.error is None and next_s < remaining_s / 2, \
        f"the next request waited {next_s:.1f}s (the rest of the generation: ~{remaining_s:.0f}s)"
    print(f"\ncancelled after {cancelled_after:.2f}s with {r.candidates[0].tokens} tokens; next request took "
          f"{next_s:.2f}s (finishing the generation would have taken ~{remaining_s:.0f}s)")


def test_every_request_kind_against_llama_cpps_server(llama_server):
    """Automatic (one line), invoked (several candidates: llama-server refuses n > 1), block, and /infill
    (which this model, without FIM tokens, cannot serve: a clear refusal, and the engine is not "down")."""
    backend = remote(llama_server.url, fim="none")
    line = backend.complete(line_request(PROMPT))
    assert line.error is None and line.text and "\n" not in line.text
    several = backend.complete(line_request(PROMPT, n=3, sampling=SamplingParams(temperature=0.8, seed=3)))
    assert several.error is None and 1 <= len(several.candidates) <= 3 and all(c.text for c in several.candidates)
    assert backend.stats()["rejected"] == 0
    block = backend.complete(CompletionRequest(doc_id="b.py", prefix="def is_even(n):\n", use_cache=False,
                                               stop=StopPolicy(max_tokens=48, mode="block")))
    assert block.error is None and block.candidates[0].stop_reason in ("block", "eos", "max_tokens")
    infill_backend = remote(llama_server.url, fim="infill")
    infill = infill_backend.complete(CompletionRequest(
        doc_id="i.py", prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n", use_cache=False,
        stop=StopPolicy(max_tokens=16, mode="line")))
    assert not infill.candidates and "refused" in infill.error and "Infill is not supported" in infill.error
    assert infill_backend.stats()["state"] == "up" and infill_backend.stats()["retries"] == 0


def test_server_killed_mid_stream_and_restarted(smollm2, tmp_path):
    server = LlamaServer(smollm2, tmp_path / "server.log")
    server.start()
    try:
        backend = remote(server.url, fim="none", retries=1, failureThreshold=1, cooldownMs=300, timeoutMs=5000)
        states: list[str] = []
        backend.watch(lambda state, message: states.append(state))
        assert backend.complete(line_request("a = ")).error is None
        got_text = threading.Event()

        def is_cancelled() -> bool:   # a spy: it sees the stream progress, never cancels
            got_text.set()
            return False
        results = []
        worker = threading.Thread(target=lambda: results.append(backend.complete(CompletionRequest(
            doc_id="k.py", prefix="# Notes\n", use_cache=False, is_cancelled=is_cancelled,
            stop=StopPolicy(max_tokens=1500, stop_on_repetition=False)))))
        worker.start()
        assert got_text.wait(30)
        time.sleep(0.3)                      # mid-stream
        server.kill()
        worker.join(30)
        (broken,) = results
        assert broken.candidates == [] and "unreachable" in broken.error, broken
        assert backend.info()["state"] == "down" and states == ["down"]
        down_answer = backend.complete(line_request("b = "))
        assert "unreachable" in down_answer.error     # immediately, from the breaker
        restart_s = server.start()
        t0 = time.monotonic()
        while True:                          # the editor keeps typing; the same backend object recovers
            r = backend.complete(line_request("c = "))
            if r.error is None:
                break
            assert time.monotonic() - t0 < 30, r.error
            time.sleep(0.1)
        recovered_s = time.monotonic() - t0
        assert backend.info()["state"] == "up" and states == ["down", "up"] and backend.stats()["times_down"] == 1
        print(f"\nserver restarted in {restart_s:.1f}s; backend recovered {recovered_s:.2f}s after that")
    finally:
        server.kill()


# ---------------------------------------------------------------------------
# Agreement with the local engine
# ---------------------------------------------------------------------------

STDLIB_FILES = ["json/decoder.py", "textwrap.py", "shlex.py", "fnmatch.py", "csv.py", "string.py",
                "colorsys.py", "bisect.py", "heapq.py", "base64.py", "glob.py", "statistics.py"]
WINDOW_CHARS = 600
KINDS = ("line start", "after = or (", "after a name")


def agreement_prompts() -> list[tuple[str, str]]:
    """(kind, prefix) cut from real stdlib code, deterministically, two per file.

    "line start": the cursor after the indentation of a code line (the editor
    just auto-indented); "after = or (": after the first `= ` or `(` of a
    line; "after a name": after the first name of a line's code.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for f, rel in enumerate(STDLIB_FILES):
        text = (stdlib / rel).read_text(encoding="utf-8")
        lines = text.split("\n")
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line) + 1)
        picks: dict[str, list[int]] = {k: [] for k in KINDS}
        for i, line in enumerate(lines[40:], 40):
            body = line.strip()
            if not line.startswith("    ") or len(body) < 12 or body[0] in "#'\"" or body.startswith(("def ", "class ")):
                continue
            indent = len(line) - len(line.lstrip())
            picks["line start"].append(offsets[i] + indent)
            marks = [line.find(m, indent) + len(m) for m in ("= ", "(") if line.find(m, indent) > indent]
            if marks:
                picks["after = or ("].append(offsets[i] + min(marks))
            name = len(body) - len(body.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789"))
            if 0 < name < len(body):
                picks["after a name"].append(offsets[i] + indent + name)
        for k, kind in enumerate((KINDS[f % 3], KINDS[(f + 1) % 3])):   # every kind, spread over files
            cuts = picks[kind]
            if cuts:
                cut = cuts[(2 * k + 1) * len(cuts) // 4]
                window = text[max(0, cut - WINDOW_CHARS):cut]
                out.append((kind, window[window.find("\n") + 1:] if cut > WINDOW_CHARS else window))
    return out


def test_greedy_agreement_with_the_local_engine(llama_server, tmp_path):
    from keystroke.engine import Engine

    prompts = agreement_prompts()
    assert len(prompts) >= 20
    local = Engine.load(llama_server.model, quant="fp32", persist=False, cache_dir=tmp_path)
    backend = remote(llama_server.url, fim="none")
    same = {k: [0, 0] for k in KINDS}
    timing = {"local": 0.0, "remote": 0.0}
    examples = []
    for i, (kind, prefix) in enumerate(prompts):
        rq = dict(prefix=prefix, stop=StopPolicy(max_tokens=16, mode="line"), sampling=SamplingParams())
        t0 = time.perf_counter()
        want = local.complete(CompletionRequest(doc_id=f"local{i}.py", use_cache=False, **rq))
        t1 = time.perf_counter()
        got = backend.complete(CompletionRequest(doc_id=f"remote{i}.py", use_cache=False, **rq))
        t2 = time.perf_counter()
        timing["local"] += t1 - t0
        timing["remote"] += t2 - t1
        assert got.error is None, got.error
        first_line = lambda s: s.split("\n", 1)[0].rstrip()  # noqa: E731
        agree = first_line(got.text) == first_line(want.text)
        same[kind][0] += int(agree)
        same[kind][1] += 1
        if not agree:
            examples.append((prefix.rsplit("\n", 1)[-1], want.text, got.text))
    total = sum(a for a, _ in same.values()), sum(n for _, n in same.values())
    rate = total[0] / total[1]
    print(f"\ngreedy first-line agreement, remote llama.cpp vs local fp32 engine on {llama_server.model.name}: "
          f"{total[0]}/{total[1]} = {rate:.0%} (" +
          ", ".join(f"{k}: {a}/{n}" for k, (a, n) in same.items()) + ")"
          f"; time per prompt: local {timing['local'] / total[1] * 1000:.0f} ms, "
          f"remote {timing['remote'] / total[1] * 1000:.0f} ms")
    for line, want, got in examples:
        print(f"  differs after {line!r}: local {want!r} vs remote {got!r}")
    # Measured here: 13/24 (54%). The floor is lower than that on purpose: the two engines
    # compute in different float orders (llama.cpp multiplies the Q4_1 blocks directly), and
    # at a cursor right after indentation the local engine's token healing tends to add
    # indentation (5 of 8 such prompts here) where the remote text-level healing does not.
    assert rate >= 0.4


# ---------------------------------------------------------------------------
# Through `keystroke serve`
# ---------------------------------------------------------------------------

def test_completions_through_keystroke_serve(llama_server, tmp_path):
    asyncio.run(_serve_session(llama_server, tmp_path))


async def _serve_session(llama_server: LlamaServer, tmp_path: Path) -> None:
    from lsprotocol import types
    from pytest_lsp.client import make_test_lsp_client

    from keystroke.server import pipeline
    from keystroke.server.config import Config
    from keystroke.server.context import DocumentView

    settings = {"engine": {"backend": "remote", "url": llama_server.url, "fim": "none"}}
    log_file = tmp_path / "serve.log"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "keystroke.server.cli", "serve", "--log-file", str(log_file),
                          "--log-level", "debug", env=env)
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities())),
            root_uri=tmp_path.as_uri(), initialization_options=settings))
        deadline = time.monotonic() + 60
        while True:
            status = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="keystroke.status"))
            if status["state"] == "ready":
                break
            assert status["state"] != "failed" and time.monotonic() < deadline, status
            await asyncio.sleep(0.1)
        text = PROMPT
        uri = (tmp_path / "served.py").as_uri()
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        lines = text.split("\n")
        got = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(len(lines) - 1, len(lines[-1])),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        # The same pipeline in this process, through the same remote server: what the editor must see.
        backend = make_backend(settings)
        doc = DocumentView(uri, text, "python", tmp_path / "served.py")
        want = pipeline.complete(backend, doc, len(text), [], Config(), workspace_root=tmp_path).suggestions
        assert want, "the in-process pipeline suggested nothing"
        assert got is not None and len(got.items) == 1
        assert got.items[0].insert_text.endswith(want[0])
        status = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="keystroke.status"))
        assert "remote" in json.dumps(status)
    finally:
        try:
            await asyncio.wait_for(client.shutdown_session(), 20)
        except Exception:  # noqa: BLE001
            pass
        await client.stop()
    log_text = log_file.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-3000:]
