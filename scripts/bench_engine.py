"""Engine throughput: prefill and decode tokens/s, keystroke (fp32, int8) next to llama.cpp.

    python scripts/bench_engine.py [--models gemma3-270m smollm2-135m] [--threads 2]

For each model it reads the same standard-library file with each engine:
prefill of 512 and 2048 tokens (one forward over the prompt, logits of the
last position only), then decode: one token at a time after a 512-token
context, `--decode` steps. llama.cpp runs through llama-cpp-python on the
same GGUF with the same thread count in the same process (a benchmark-only
extra built from source: `pip install llama-cpp-python==0.3.36`); when it
is absent the script says so and prints no ratio for it.
Prints a Markdown table, ratios against llama.cpp.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

from keystroke.engine.loading.gguf import load_gguf
from keystroke.engine.model import Transformer
from keystroke.engine.quantize import quantize_model
from keystroke.engine.loading.registry import resolve

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` timings (seconds): the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_torch(path: Path, quant: str, ids: list[int], decode_steps: int, repeats: int) -> dict:
    cfg, weights, _tok, _meta = load_gguf(path)
    model = Transformer.from_weights(cfg, weights)
    del weights
    if quant != "fp32":
        quantize_model(model, quant, model.phase)
        model.embed.weight = torch.nn.Parameter(model.embed.weight.half(), requires_grad=False)
    out = {}
    for n in (512, 2048):
        def prefill():
            cache = model.new_cache(capacity=n)
            for s in range(0, n, 512):  # the engine's chunking
                model(torch.tensor([ids[s:min(n, s + 512)]]), cache)
        out[f"prefill{n}"] = n / best_of(prefill, repeats)
    rates = []
    for _ in range(repeats):
        cache = model.new_cache(capacity=512 + decode_steps)
        model(torch.tensor([ids[:512]]), cache)
        t = time.perf_counter()
        for i in range(decode_steps):
            model(torch.tensor([[ids[512 + i]]]), cache, decode=True)
        rates.append(decode_steps / (time.perf_counter() - t))
    out["decode"] = max(rates)
    del model
    gc.collect()
    return out


def bench_llama_cpp(path: Path, threads: int, text: str, decode_steps: int, repeats: int) -> dict | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=True)
    out = {}
    for n in (512, 2048):
        def prefill():
            llm.reset()
            llm.eval(ids[:n])
        out[f"prefill{n}"] = n / best_of(prefill, repeats)
    rates = []
    for _ in range(repeats):
        llm.reset()
        llm.eval(ids[:512])
        t = time.perf_counter()
        for i in range(decode_steps):
            llm.eval([ids[512 + i]])
        rates.append(decode_steps / (time.perf_counter() - t))
    out["decode"] = max(rates)
    del llm
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=64, help="decode steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = SOURCE.read_text()
    print(f"torch {torch.__version__}, {args.threads} threads, text: {SOURCE} ({len(text)} chars)")
    rows = []
    for name in args.models:
        path = resolve(name)
        _cfg, _w, tok, _m = load_gguf(path)
        del _w
        ids = ([tok.bos_id] if tok.add_bos and tok.bos_id is not None else []) + tok.encode(text)
        if len(ids) < 2048 + args.decode:
            raise SystemExit(f"{SOURCE} is too short for this benchmark")
        results = {q: bench_torch(path, q, ids, args.decode, args.repeats) for q in ("fp32", "int8")}
        ref = bench_llama_cpp(path, args.threads, text, args.decode, args.repeats)
        if ref is None:
            print("llama-cpp-python is not installed: no llama.cpp column "
                  "(pip install llama-cpp-python==0.3.36 builds it from source)")
        for metric in ("prefill512", "prefill2048", "decode"):
            row = [name, metric] + [f"{results[q][metric]:.1f}" for q in ("fp32", "int8")]
            if ref is not None:
                row += [f"{ref[metric]:.1f}"] + [f"{results[q][metric] / ref[metric]:.2f}x" for q in ("fp32", "int8")]
            rows.append(row)
    head = ["model", "metric (tok/s)", "keystroke fp32", "keystroke int8", "llama.cpp", "fp32/llama.cpp",
            "int8/llama.cpp"]
    width = len(rows[0]) if rows else len(head)
    print("| " + " | ".join(head[:width]) + " |")
    print("|" + "---|" * width)
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
