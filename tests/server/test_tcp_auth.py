"""`keystroke serve --tcp`: no token, no server; a client without the right
token is refused and disconnected; the right token gets a session.
Real sockets, on 127.0.0.1 only."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path


from conftest import RawClient, assert_clean_log, serve_command, wait_ready_raw

TOKEN = "k3ystroke-test-token-0123456789"


def start_tcp(model: str, tmp_path: Path, *extra: str, env_token: str | None = TOKEN) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("KEYSTROKE_TOKEN", None)
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
