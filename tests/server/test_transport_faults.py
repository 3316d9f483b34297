"""Bad framing never costs the messages after it: a frame whose
Content-Length is missing, not a plain number, absurdly large, or wrong
either way is answered (when its body is a request with an id) or skipped
with a warning, and the next messages are served. First the framing loop
alone, then `keystroke serve` over stdio, driven with raw bytes."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import assert_clean_log, initialize_raw, start_raw_server, wait_ready_raw
from keystroke.server import framing


def frame(payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def bad_frame(name: str, msg_id: str) -> tuple[bytes, bool]:
    """A request framed with one kind of bad header, and whether it can still be answered."""
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand",
                       "params": {"command": "keystroke.status"}}).encode()
    n = len(body)
    return {
        "missing": (b"Content-Type: application/vscode-jsonrpc\r\n\r\n" + body, True),
        "non-numeric": (b"Content-Length: abc\r\n\r\n" + body, True),
        "negative": (b"Content-Length: -%d\r\n\r\n" % n + body, True),
        "float": (b"Content-Length: %d.0\r\n\r\n" % n + body, True),
        "empty": (b"Content-Length: \r\n\r\n" + body, True),
        "nul-suffixed": (b"Content-Length: %d\x00\r\n\r\n" % n + body, True),
        "huge": (b"Content-Length: 100000000000000000000\r\n\r\n" + body, True),
        "too-large": (b"Content-Length: %d\r\n\r\n" % (n + 60) + body, True),
        "too-small": (b"Content-Length: %d\r\n\r\n" % (n - 20) + body, False),
        "no-blank-line": (b"Content-Length: %d\r\n" % n + body, True),
    }[name]


BAD = ["missing", "non-numeric", "negative", "float", "empty", "nul-suffixed", "huge", "too-large",
       "too-small", "no-blank-line"]


def status_request(msg_id: str) -> bytes:
    return frame({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand",
                  "params": {"command": "keystroke.status"}})


async def read_all(data: bytes, chunk: int, limit: int = 1 << 20) -> list:
    reader = asyncio.StreamReader()
    for i in range(0, len(data), chunk):
        reader.feed_data(data[i:i + chunk])
    reader.feed_eof()
    frames, items = framing.FrameReader(reader, limit=limit), []
    while (item := await asyncio.wait_for(frames.read(), 5)) is not None:
        items.append(item)
    return items


@pytest.mark.parametrize("chunk", [1, 13, 1 << 20])
@pytest.mark.parametrize("name", BAD)
def test_frame_reader_resynchronises_after_a_bad_header(name, chunk):
    bad, answerable = bad_frame(name, "bad")
    good = [status_request(f"ok-{i}") for i in range(5)]
    items = asyncio.run(read_all(bad + b"".join(good), chunk))
    bodies = [i for i in items if isinstance(i, bytes)]
    assert bodies[-5:] == [g.split(b"\r\n\r\n", 1)[1] for g in good]      # all five, intact, in order
    answers = [a for a in map(framing.answer_broken, [i for i in items if isinstance(i, framing.Broken)]) if a]
    if answerable:
        assert [a["id"] for a in answers] == ["bad"] and answers[0]["error"]["code"] == -32600


def test_frame_reader_keeps_valid_bodies_that_mention_content_length():
    tricky = [frame({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"text": "Content-Length: 5\r\n\r\nxy"}}),
              b"Content-Length: 29\r\n\r\n" + b'{\r\n"id": 2,\r\n"method": "m"\r\n}',      # raw CRLF between tokens
              b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + frame({"id": 3, "method": "m"})]
    for chunk in (1, 7, 1 << 20):
        items = asyncio.run(read_all(b"".join(tricky), chunk))
        assert [json.loads(i)["id"] for i in items] == [1, 2, 3]


def test_a_huge_body_is_skipped_without_being_buffered():
    """The announced size is refused at once; the body is dropped chunk by
    chunk up to the next header, the reader's buffer stays small."""
    async def run() -> tuple[list, int]:
        reader = asyncio.StreamReader()
        frames = framing.FrameReader(reader, limit=1 << 20)
        reader.feed_data(b"Content-Length: 100000000000000000000\r\n\r\n")
        first = await asyncio.wait_for(frames.read(), 5)
        assert isinstance(first, framing.Broken) and "above the limit" in first.why
        largest = 0
        pending = asyncio.ensure_future(frames.read())
        for _ in range(300):                     # 300 x 64 KiB of body
            reader.feed_data(b"x" * 65536)
            await asyncio.sleep(0)
            largest = max(largest, len(frames.buf))
        reader.feed_data(status_request("after"))
        reader.feed_eof()
        items = [await asyncio.wait_for(pending, 5)]
        while (item := await asyncio.wait_for(frames.read(), 5)) is not None:
            items.append(item)
        return items, largest
    items, largest = asyncio.run(run())
    assert largest <= 2 * 65536 + 4096
    assert json.loads(items[-1])["id"] == "after"


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("transport")
    proc, client = start_raw_server(model, tmp / "serve.log")
    try:
        initialize_raw(client, tmp, {"cacheDir": str(tmp / "kv")})
        yield proc, client, tmp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("name", BAD)
def test_server_answers_the_requests_after_a_bad_header(server, name):
    proc, client, _ = server
    bad, answerable = bad_frame(name, f"bad-{name}")
    ids = [f"{name}-{i}" for i in range(5)]
    client.send_bytes(bad + b"".join(status_request(i) for i in ids))
    t0 = time.monotonic()
    for msg_id in ids:
        answer = client.wait_response(msg_id, timeout=10)
        assert answer["result"]["state"] in ("loading", "ready"), answer
    assert time.monotonic() - t0 < 10
    if answerable:
        refused = client.wait_response(f"bad-{name}", timeout=5)
        assert refused["error"]["code"] == -32600, refused
    assert proc.poll() is None


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_server_refuses_a_100_exabyte_header_without_buffering_its_body(server):
    proc, client, tmp = server
    wait_ready_raw(client, timeout=60)           # the model's own memory is counted before
    before = peak_rss_kb(proc.pid)
    client.send_bytes(b"Content-Length: 100000000000000000000\r\n\r\n" + b"y" * (64 << 20)
                      + status_request("after-huge"))
    assert "result" in client.wait_response("after-huge", timeout=30)
    assert peak_rss_kb(proc.pid) - before < 16 * 1024, "the body was buffered"
    assert proc.poll() is None
    log = (tmp / "serve.log").read_text(errors="replace")
    assert "100000000000000000000 bytes, above the limit" in log     # refused, and said so
    assert_clean_log(log)
