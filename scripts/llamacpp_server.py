#!/usr/bin/env python3
"""Today's llama.cpp server on a GGUF, from the prebuilt `xllamacpp` wheel (nothing to compile).

    python3 scripts/llamacpp_server.py MODEL.gguf --port 8080 [--threads 2] [--ctx 4096]

xllamacpp embeds llama.cpp's own C++ HTTP server (`/health`, `/tokenize`,
`/completion`, `/infill`, `/v1/completions`, `/v1/models`): this starts it on
127.0.0.1 and keeps the process alive until it is terminated. The remote-engine
tests and the benchmarks run it as a subprocess, so llama.cpp never shares a
process (or its threads' timing) with keystroke.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model: str, *, port: int | None = None, threads: int = 1, ctx: int = 4096,
          alias: str | None = None) -> tuple[Any, str]:
    """llama.cpp's server on `model` in this process, ready: (the server object, keep it referenced; its URL)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.port = port or free_port()
    params.n_ctx = ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    if alias:
        params.model_alias = alias
    server = xllamacpp.Server(params)   # serves from its own threads
    base = f"http://127.0.0.1:{params.port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(base + "/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return server, base


def post(base: str, path: str, body: dict) -> dict:
    """One JSON request to the server, its JSON answer."""
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.load(answer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--alias", default=None, help="the model name /v1/models reports")
    args = ap.parse_args(argv)

    server, _ = start(args.model, port=args.port, threads=args.threads, ctx=args.ctx, alias=args.alias)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
