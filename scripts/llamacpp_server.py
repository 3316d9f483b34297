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
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--alias", default=None, help="the model name /v1/models reports")
    args = ap.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    if args.alias:
        params.model_alias = args.alias
    server = xllamacpp.Server(params)   # serves from its own threads
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
