"""The engine against today's llama.cpp on the same GGUF, through the path users run.

    python3 scripts/bench_engine.py [--models qwen2.5-coder-0.5b gemma3-270m] [--threads 2] [--repeats 2]
                                    [--only startup]

Each side runs in a fresh process of its own, one after the other (never at
once: on 2 cores both would fight over the threads), alternating, `--repeats`
times; medians are reported.

- keystroke: `Engine.load` then `Engine.complete` (what the server calls),
  int8 by default on CPU, no KV-cache on disk. Its packed weights are cached
  in a temporary folder: the first process converts the GGUF (reported as
  "first start"), the `--repeats` measured ones map the cached copy;
- llama.cpp: its own HTTP server from the prebuilt `xllamacpp` wheel,
  in-process in the child, asked over loopback (`/completion`).

Each side: one warm-up request (32 tokens of the file's start), then a
prompt of `--prompt` tokens (the standard library's argparse.py) and
`--decode` greedy tokens. Measured: start
to the first answer (process start to the warm-up's answer, the model loaded),
peak RSS and RSS after the request, prefill and decode tokens/s. Ratios are
keystroke / llama.cpp, from the same run. `--only startup` stops each child
after the warm-up's answer and reports the two start rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
METRICS = (("start_s", "start to first answer, s"), ("first_start_s", "first start (converting), s"), ("peak_rss_mb", "peak RSS, MB"),
           ("rss_mb", "RSS after the request, MB"), ("prefill_tok_s", "prefill, tok/s"),
           ("decode_tok_s", "decode, tok/s"),
           ("plain_decode_tok_s", "decode without drafted tokens, tok/s (llama.cpp: the same run)"))


def memory_mb() -> tuple[float, float]:
    """(peak, current) resident memory of this process."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024, int(status["VmRSS"].split()[0]) / 1024


STARTUP = ("start_s", "first_start_s")
WARM_CHARS = 2000   # the warm-up's text: tokenizing all of argparse.py is not part of a start


def side_keystroke(model: str, n_prompt: int, n_decode: int, threads: int, started: float,
                   cache_dir: str | None = None, startup_only: bool = False) -> dict:
    from keystroke.engine import CompletionRequest, Engine, StopPolicy
    engine = Engine.load(model, threads=threads, persist=False, cache_dir=Path(cache_dir) if cache_dir else None)
    stop = StopPolicy(max_tokens=n_decode, mode="free", stop_on_repetition=False)
    warm = engine.tokenizer.encode(SOURCE.read_text()[:WARM_CHARS])[:32]
    engine.complete(CompletionRequest(doc_id="warm", prefix=engine.tokenizer.decode(warm),
                                      stop=StopPolicy(max_tokens=1), use_cache=False))
    start_s = time.time() - started
    if startup_only:
        return {"start_s": start_s}
    ids = engine.tokenizer.encode(SOURCE.read_text())[:n_prompt]
    t = engine.complete(CompletionRequest(doc_id="bench", prefix=engine.tokenizer.decode(ids), stop=stop,
                                          use_cache=False)).timings
    peak, rss = memory_mb()
    engine.draft_tokens = 0    # the same request again, one model pass per token (engine/lookup.py)
    plain = engine.complete(CompletionRequest(doc_id="bench", prefix=engine.tokenizer.decode(ids), stop=stop,
                                              use_cache=False)).timings
    return {"start_s": start_s, "peak_rss_mb": peak, "rss_mb": rss, "prompt_tokens": t.computed_tokens,
            "prefill_tok_s": t.computed_tokens / (t.prefill_ms / 1000),
            "decode_tokens": t.decode_tokens, "decode_passes": t.decode_passes,
            "decode_tok_s": t.decode_tokens / (t.decode_ms / 1000),
            "plain_decode_tok_s": plain.decode_tokens / (plain.decode_ms / 1000),
            "int8_kernels": engine.info().get("int8_kernels")}


def side_llamacpp(model: str, n_prompt: int, n_decode: int, threads: int, started: float,
                  cache_dir: str | None = None, startup_only: bool = False) -> dict:
    from llamacpp_server import post as post_to, start

    from keystroke.engine import registry
    server, base = start(registry.resolve(model), threads=threads)  # noqa: F841 - it serves while referenced

    def post(path: str, body: dict) -> dict:
        return post_to(base, path, body)

    warm = post("/tokenize", {"content": SOURCE.read_text()[:WARM_CHARS]})["tokens"][:32]
    post("/completion", {"prompt": warm, "n_predict": 1, "temperature": 0, "cache_prompt": False})
    start_s = time.time() - started
    if startup_only:
        return {"start_s": start_s}
    ids = post("/tokenize", {"content": SOURCE.read_text()})["tokens"][:n_prompt]
    t = post("/completion", {"prompt": ids, "n_predict": n_decode, "temperature": 0, "top_k": 1,
                             "ignore_eos": True, "cache_prompt": False})["timings"]
    peak, rss = memory_mb()
    return {"start_s": start_s, "peak_rss_mb": peak, "rss_mb": rss, "prompt_tokens": t["prompt_n"],
            "prefill_tok_s": t["prompt_per_second"], "decode_tokens": t["predicted_n"],
            "decode_tok_s": t["predicted_per_second"], "plain_decode_tok_s": t["predicted_per_second"]}


def agreement(model: str, n_prompt: int, threads: int) -> float:
    """Share of `n_prompt` positions of argparse.py where int8 and fp32 logits have the same argmax."""
    import torch

    from keystroke.engine import Engine
    top = {}
    for quant in ("fp32", "int8"):
        engine = Engine.load(model, quant=quant, threads=threads, persist=False)
        ids = engine.tokenizer.encode(SOURCE.read_text())[:n_prompt - int(engine.tokenizer.add_bos)]
        if engine.tokenizer.add_bos:
            ids = [engine.tokenizer.bos_id] + ids
        with torch.inference_mode():
            logits = engine.model(torch.tensor([ids]), engine.model.new_cache(capacity=len(ids)), last_only=False)
        top[quant] = logits[0].argmax(-1)
        del engine, logits
    return (top["fp32"] == top["int8"]).float().mean().item()


def run_side(side: str, model: str, args: argparse.Namespace, cache_dir: str) -> dict:
    """One measurement in a fresh process; its start time is taken here, before the interpreter starts."""
    cmd = [sys.executable, __file__, "--side", side, "--models", model, "--threads", str(args.threads),
           "--prompt", str(args.prompt), "--decode", str(args.decode), "--started", repr(time.time()),
           "--cache-dir", cache_dir] + (["--only", args.only] if args.only else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"the {side} side failed on {model}:\n{done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "gemma3-270m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    ap.add_argument("--decode", type=int, default=64, help="greedy tokens after the prompt")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--side", choices=("keystroke", "llamacpp"), help=argparse.SUPPRESS)
    ap.add_argument("--started", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=("startup",), help="measure only the starts (no long request)")
    ap.add_argument("--agreement", action="store_true",
                    help="instead: how often int8 and fp32 logits agree on the top token (no llama.cpp)")
    args = ap.parse_args(argv)
    if args.agreement:
        for model in args.models:
            print(f"{model}: int8 and fp32 argmax agree at {agreement(model, args.prompt, args.threads):.1%} "
                  f"of {args.prompt} positions of {SOURCE.name}", flush=True)
        return 0
    if args.side:   # a child: one measurement, one JSON line
        measure = side_keystroke if args.side == "keystroke" else side_llamacpp
        print(json.dumps(measure(args.models[0], args.prompt, args.decode, args.threads, args.started,
                                 args.cache_dir, startup_only=args.only == "startup")))
        return 0

    print(f"{args.threads} threads, {args.prompt}-token prompt from {SOURCE.name}, {args.decode} decode tokens, "
          f"median of {args.repeats} fresh processes per side\n")
    print("| model | metric | keystroke | llama.cpp | keystroke / llama.cpp |\n|---|---|---|---|---|")
    kernels: dict[str, dict | None] = {}
    for model in args.models:
        runs: dict[str, list[dict]] = {"keystroke": [], "llamacpp": []}
        with tempfile.TemporaryDirectory(prefix="keystroke-bench-") as cache_dir:
            first = run_side("keystroke", model, args, cache_dir)   # converts and caches the weights
            for _ in range(args.repeats):
                for side in runs:
                    runs[side].append(run_side(side, model, args, cache_dir))
        for side in runs:   # llama.cpp has nothing to convert: its first start is any start
            for r in runs[side]:
                r["first_start_s"] = first["start_s"] if side == "keystroke" else r["start_s"]
        for key, label in METRICS:
            if args.only == "startup" and key not in STARTUP:
                continue
            ks = statistics.median(r[key] for r in runs["keystroke"])
            lc = statistics.median(r[key] for r in runs["llamacpp"])
            print(f"| {model} | {label} | {ks:.1f} | {lc:.1f} | {ks / lc:.2f}x |", flush=True)
        kernels[model] = runs["keystroke"][-1].get("int8_kernels")
    for model, k in kernels.items():   # which int8 kernel served (engine/native.py): on some CPUs it decides the speed
        if k:
            print(f"\n{model}: keystroke's int8 products: decode rows {k['decode_rows']}, prompt rows {k['prompt_rows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
