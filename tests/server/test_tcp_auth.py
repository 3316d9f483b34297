"""`keystroke serve --tcp`: no token, no server; a client without the right
token is refused and disconnected; the right token gets a session.
Real sockets, on 127.0.0.1 only."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


from conftest import RawClient, assert_clean_log, serve_command, wait_ready_raw

TOKEN = "k3ystroke-test-token-0123456789"


def start_tcp(model: str, tmp_path: Path, *extra: str, env_token: str | None = TOKEN,
              auth_timeout: float | None = None) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("KEYSTROKE_TOKEN", None)
    if auth_timeout is not None:
        env["KEYSTROKE_AUTH_TIMEOUT"] = str(auth_timeout)
    if env_token is not None:
        env["KEYSTROKE_TOKEN"] = env_token
    proc = subprocess.Popen(serve_command(model, tmp_path / "tcp.log", "--tcp", "127.0.0.1:0", *extra),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("server did not listen")


def connect(port: int) -> tuple[socket.socket, RawClient]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock, RawClient(sock.recv, sock.sendall)


def initialize_params(tmp_path: Path, token: object = None) -> dict:
    options = {} if token is None else {"token": token}
    return {"processId": None, "rootUri": tmp_path.as_uri(), "capabilities": {},
            "initializationOptions": options}


def test_tcp_refuses_to_start_without_a_token(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("KEYSTROKE_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "keystroke.server.cli", "serve", "--tcp", "127.0.0.1:0",
                           "--log-file", str(tmp_path / "x.log")],
                          env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert b"token" in done.stderr and b"Traceback" not in done.stderr


def test_tcp_token_file_must_be_readable(tmp_path):
    done = subprocess.run([sys.executable, "-m", "keystroke.server.cli", "serve", "--tcp", "127.0.0.1:0",
                           "--token-file", str(tmp_path / "missing"), "--log-file", str(tmp_path / "x.log")],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, KEYSTROKE_TOKEN=""))
    assert done.returncode == 2 and b"token file" in done.stderr


def test_tcp_rejects_clients_without_the_token_and_serves_the_one_with_it(tmp_path, model):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    proc, port = start_tcp(model, tmp_path, "--token-file", str(token_file), env_token=None)
    try:
        # 1. a request that is not initialize
        sock, client = connect(port)
        answer = client.call("workspace/executeCommand", {"command": "keystroke.status"}, 1, timeout=30)
        assert answer["error"]["code"] == -32001
        assert client.closed.wait(10)            # and the connection is closed
        sock.close()
        # 2. initialize without a token, with a wrong one, with a non-string one, with garbage
        for i, token in enumerate([None, "wrong-token", 12345, TOKEN + "x"]):
            sock, client = connect(port)
            answer = client.call("initialize", initialize_params(tmp_path, token), 10 + i, timeout=30)
            assert answer["error"]["code"] == -32001, answer
            assert "unauthorized" in answer["error"]["message"]
            assert client.closed.wait(10)
            sock.close()
        sock, client = connect(port)
        client.send_bytes(b"Content-Length: 5\r\n\r\nhello")
        assert client.wait_response(None, timeout=30)["error"]["code"] == -32001
        assert client.closed.wait(10)
        sock.close()
        # 3. the right token: a normal session
        sock, client = connect(port)
        answer = client.call("initialize", initialize_params(tmp_path, TOKEN), 100, timeout=60)
        assert "result" in answer and answer["result"]["capabilities"]["inlineCompletionProvider"] is not None
        client.notify("initialized", {})
        status = wait_ready_raw(client)
        assert status["state"] == "ready"
        # a second client while the first is connected is refused too
        sock2, client2 = connect(port)
        answer2 = client2.call("initialize", initialize_params(tmp_path, TOKEN), 1, timeout=30)
        assert answer2["error"]["code"] == -32001
        sock2.close()
        assert client.call("shutdown", None, 101)["result"] is None
        client.notify("exit", None)
        assert proc.wait(60) == 0
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "tcp.log").read_text()
    assert TOKEN not in log                      # the token never reaches the log
    assert_clean_log(log)


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def disconnect(sock: socket.socket) -> None:
    """Really hang up: a bare close() while RawClient's thread sits in recv() sends nothing."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def test_tcp_closes_a_connection_that_does_not_authenticate_in_time(tmp_path, model):
    proc, port = start_tcp(model, tmp_path, auth_timeout=1)
    try:
        silent, silent_client = connect(port)                 # says nothing at all
        slow, slow_client = connect(port)                     # starts a header, never ends it
        slow_client.send_bytes(b"Content-Length: 40\r\n\r\n{")
        t0 = time.monotonic()
        for client in (silent_client, slow_client):
            answer = client.wait_response(None, timeout=10)
            assert answer["error"]["code"] == -32001 and "within 1 s" in answer["error"]["message"]
            assert client.closed.wait(10)
        assert 0.9 < time.monotonic() - t0 < 5
        disconnect(silent)
        disconnect(slow)
        serve_one_client_then_stop(proc, port, tmp_path, linger_s=1.5)   # an authenticated client has no deadline
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_clean_log((tmp_path / "tcp.log").read_text())


def serve_one_client_then_stop(proc, port: int, tmp_path, linger_s: float = 0.0) -> None:
    """The server still listens: a client authenticates (and stays `linger_s`), leaves, and the server exits 0."""
    sock, client = connect(port)
    assert "result" in client.call("initialize", initialize_params(tmp_path, TOKEN), 1, timeout=60)
    time.sleep(linger_s)
    assert not client.closed.is_set()
    disconnect(sock)
    assert proc.wait(10) == 0


def test_tcp_refuses_a_100_mb_first_frame_without_reading_it(tmp_path, model):
    proc, port = start_tcp(model, tmp_path)
    try:
        before = peak_rss_kb(proc.pid)
        sock, client = connect(port)
        size = 100 << 20

        def send_body() -> None:
            try:
                sock.sendall(b"Content-Length: %d\r\n\r\n" % size)
                chunk = b"x" * (1 << 20)
                for _ in range(size // len(chunk)):
                    sock.sendall(chunk)
            except OSError:                                   # the server hung up: expected
                pass
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = client.wait_response(None, timeout=10)
        assert client.closed.wait(10)                         # refused, and the connection closed
        sender.join(10)
        disconnect(sock)
        assert peak_rss_kb(proc.pid) - before < 16 * 1024, "the frame was buffered"
        assert answer["error"]["code"] == -32001 and "above the limit" in answer["error"]["message"]
        serve_one_client_then_stop(proc, port, tmp_path)      # the next client is served
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_clean_log((tmp_path / "tcp.log").read_text())


def test_tcp_server_stops_promptly_when_its_client_disconnects(tmp_path, model):
    """Even mid-decode, and with another (unauthenticated) connection open."""
    proc, port = start_tcp(model, tmp_path)
    try:
        idle = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock, client = connect(port)
        params = initialize_params(tmp_path, TOKEN)
        params["initializationOptions"].update(maxTokens=2048, debounceMs=0, candidates=10,
                                               cacheDir=str(tmp_path / "kv"))
        assert "result" in client.call("initialize", params, 1, timeout=60)
        client.notify("initialized", {})
        wait_ready_raw(client, timeout=60)
        uri = (tmp_path / "long.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "def f(x):\n"}})
        client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 1, "character": 0},
            "context": {"triggerKind": 1}}, "long")
        deadline = time.monotonic() + 30
        while "context for" not in (tmp_path / "tcp.log").read_text(errors="replace"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
        assert "long" not in client.responses                 # the engine is decoding
        t0 = time.monotonic()
        disconnect(sock)
        code = proc.wait(10)
        elapsed = time.monotonic() - t0
        stderr = proc.stderr.read().decode(errors="replace")
        assert code == 0, (code, stderr[-2000:])
        assert elapsed < 2, f"stopped {elapsed:.1f} s after its client left"
        assert "terminate called" not in stderr and "Fatal Python error" not in stderr
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_clean_log((tmp_path / "tcp.log").read_text())
