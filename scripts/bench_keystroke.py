"""Replay typing in real files and time each completion, as an editor would ask for them.

    python scripts/bench_keystroke.py [--model qwen2.5-coder-0.5b] [--chars 120] [--edits 60]

Two traces over code no one here wrote:

- typing: a function of a standard-library module is removed and typed back
  character by character; after every character the editor asks for a
  single-line suggestion at the cursor (ghost text, greedy, <= 16 tokens).
- edits: the diff between two released versions of a real package
  (`six` 1.15.0 -> 1.16.0, fetched with pip and checked by sha256): each
  hunk's old lines are deleted and its new lines typed, mid-file, with a
  request after every 4th character.

Each trace runs, every configuration in its own subprocess (so RSS is its
own), with the same prompts:

- keystroke: the engine with its per-document KV-cache and typing-through;
- no-cache: the same engine, every request from scratch;
- llama.cpp: today's llama.cpp server (the prebuilt xllamacpp wheel) on the
  same GGUF, same threads, asked with `cache_prompt` (it reuses the longest
  common token prefix with its last prompt);
- lsp: keystroke through `keystroke serve` over stdio (didChange, then
  textDocument/inlineCompletion), to show the server's own overhead.

Prompts are built by the server's pipeline (keystroke.server.pipeline) with
the server's default settings, for the document at the cursor. Reported: p50/p95 latency to the
suggestion, tokens computed vs reused per request, typing-through hits,
peak RSS, and ratios against the no-cache run and llama.cpp.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TYPING_FILE = STDLIB / "textwrap.py"
TYPING_FUNCTION = "def indent(text, prefix, predicate=None):"
EDIT_PACKAGE = "six"
EDIT_VERSIONS = {  # version -> sha256 of the wheel on PyPI
    "1.15.0": "8b74bedcbbbaca38ff6d7491d76f2b06b3592611af620f8426e82dddb04a5ced",
    "1.16.0": "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
}
MAX_TOKENS = 16


# ----------------------------------------------------------------- traces
def rest_of_line(text: str, at: int) -> str:
    end = text.find("\n", at)
    return text[at:] if end < 0 else text[at:end]


def typing_trace(chars: int) -> list[tuple[str, int, str]]:
    """(text, cursor, what the user goes on to type on the line) after each typed character of a stdlib function."""
    src = TYPING_FILE.read_text()
    start = src.index(TYPING_FUNCTION)
    end = src.index("\n\n\n", start)
    whole = src[start:end]
    body = whole[:chars]
    base = src[:start] + src[end:]
    return [(base[:start] + body[:i] + base[start:], start + i, rest_of_line(whole, i)) for i in range(1, len(body) + 1)]


def _six_source(version: str, workdir: Path) -> str:
    wheel = workdir / f"six-{version}-py2.py3-none-any.whl"
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        f"six=={version}", "-d", str(workdir)], check=True, capture_output=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != EDIT_VERSIONS[version]:
        raise SystemExit(f"{wheel.name}: sha256 {digest} is not the pinned one")
    with zipfile.ZipFile(wheel) as z:
        return z.read("six.py").decode()


def edit_trace(max_requests: int, workdir: Path) -> list[tuple[str, int, str]]:
    """(text, cursor, the rest of the line being typed) while replaying six 1.15.0 -> 1.16.0, hunk by hunk, typing the new lines."""
    old, new = (_six_source(v, workdir) for v in EDIT_VERSIONS)
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    lines = list(a)
    steps: list[tuple[str, int]] = []
    shift = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        at = i1 + shift
        del lines[at:at + (i2 - i1)]
        typed = "".join(b[j1:j2])
        head = "".join(lines[:at])
        tail = "".join(lines[at:])
        for k in range(1, len(typed) + 1):
            if k % 4 == 0 or k == len(typed):
                steps.append((head + typed[:k] + tail, len(head) + k, rest_of_line(typed, k)))
        lines[at:at] = b[j1:j2]
        shift += (j2 - j1) - (i2 - i1)
        if len(steps) >= max_requests:
            break
    assert "".join(lines[:]) != old
    return steps[:max_requests]


# -------------------------------------------------------------- prompting
def settings():
    """The server's default settings, with this benchmark's token budget."""
    from keystroke.server.config import Config
    return Config(max_tokens=MAX_TOKENS)


def document(text: str):
    from keystroke.server.context import DocumentView
    return DocumentView(uri="file:///bench.py", text=text, language_id="python", path=None)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------ one config
def run_engine(trace, model: str, threads: int, use_cache: bool) -> dict:
    """The server's pipeline in process (line mode, as llama.cpp's rows stop at a newline):
    with the cache, typing-through answers first, as in the server."""
    import dataclasses

    from keystroke.engine import Engine
    from keystroke.server import pipeline
    engine = Engine.load(model, threads=threads, persist=False)
    typed = pipeline.TypedThrough()
    rows = []
    for text, cursor, _ in trace:
        t = time.perf_counter()
        if use_cache:
            done = pipeline.complete(engine, document(text), cursor, [], settings(), mode="line", typed=typed)
        else:
            plan = pipeline.plan(document(text), cursor, [], settings(), count_tokens=engine.count_tokens,
                                 mode="line")
            result = engine.complete(dataclasses.replace(plan.request, use_cache=False))
            done = pipeline.Completed(plan, result, pipeline.finish(result, plan))
        ms = (time.perf_counter() - t) * 1000
        timings = done.result.timings if done.result else None
        rows.append({"ms": ms, "computed": timings.computed_tokens if timings else 0,
                     "reused": timings.reused_tokens if timings else 0,
                     "typed_through": done.typed_through, "text": (done.suggestions or [""])[0]})
    return {"rows": rows, "rss_mb": rss_mb()}


def run_llama_cpp(trace, model: str, threads: int) -> dict:
    """llama.cpp's own server (the xllamacpp wheel, in this process) asked over loopback with `cache_prompt`:
    the very token ids of keystroke's prompt (same template, same text; fim.build_prompt with the model's
    own tokenizer, read from the GGUF), stopping at a newline."""
    from llamacpp_server import post as post_to, start

    from keystroke.engine import fim, registry
    from keystroke.engine.loading.gguf import GGUFFile
    from keystroke.engine.tokenizer import Tokenizer
    from keystroke.server import pipeline
    path = registry.resolve(model)
    gguf = GGUFFile(path)
    try:
        tokenizer = Tokenizer.from_gguf_metadata({k: v for k, v in gguf.metadata.items() if k.startswith("tokenizer.")})
    finally:
        gguf.close()
    template = fim.detect_template(tokenizer)
    server, base = start(path, threads=threads)  # noqa: F841 - it serves while referenced

    def post(path: str, body: dict) -> dict:
        return post_to(base, path, body)

    count = _token_counter(tokenizer.encode)
    rows = []
    for text, cursor, _ in trace:
        r = pipeline.plan(document(text), cursor, [], settings(), count_tokens=count, mode="line").request
        ids = fim.build_prompt(tokenizer, template, r.header, r.prefix, r.suffix,
                               files=[(f.path, f.text) for f in r.files], path=r.path).ids
        t = time.perf_counter()
        out = post("/completion", {"prompt": ids, "n_predict": MAX_TOKENS,
                                   "temperature": 0, "top_k": 1, "stop": ["\n"], "cache_prompt": True})
        ms = (time.perf_counter() - t) * 1000
        timings = out.get("timings", {})
        rows.append({"ms": ms, "computed": timings.get("prompt_n", 0), "reused": timings.get("cache_n", 0),
                     "typed_through": False, "text": out.get("content", "")})
    return {"rows": rows, "rss_mb": rss_mb()}


def run_lsp(trace, model: str, threads: int) -> dict:
    """The same document states through `keystroke serve` over stdio, timed at the client.

    Each step sends didChange (whole text) then an Automatic inline completion
    request at the cursor, waits for the answer, and records its latency.
    """
    import asyncio

    from lsprotocol import types as t
    from pygls.lsp.client import LanguageClient

    uri = "file:///bench.py"

    def position(text: str, offset: int) -> t.Position:
        line = text.count("\n", 0, offset)
        col = offset - (text.rfind("\n", 0, offset) + 1)
        return t.Position(line=line, character=len(text[offset - col:offset].encode("utf-16-le")) // 2)

    async def replay() -> list[dict]:
        client = LanguageClient("bench", "1")
        await client.start_io(sys.executable, "-m", "keystroke.server.cli", "serve", "--model", model,
                              "--threads", str(threads))
        opts = {"maxTokens": MAX_TOKENS, "debounceMs": 0}
        await client.initialize_async(t.InitializeParams(
            capabilities=t.ClientCapabilities(), initialization_options=opts))
        client.initialized(t.InitializedParams())
        text0 = trace[0][0]
        client.text_document_did_open(t.DidOpenTextDocumentParams(
            t.TextDocumentItem(uri=uri, language_id="python", version=0, text=text0)))
        ctx = t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic)
        for _ in range(600):  # wait for the model: the first answer with items (or 120 s)
            r = await client.text_document_inline_completion_async(t.InlineCompletionParams(
                text_document=t.TextDocumentIdentifier(uri=uri), position=position(text0, trace[0][1]),
                context=ctx))
            if r and (r.items if hasattr(r, "items") else r):
                break
            await asyncio.sleep(0.2)
        rows = []
        for version, (text, cursor, _) in enumerate(trace, start=1):
            client.text_document_did_change(t.DidChangeTextDocumentParams(
                text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[t.TextDocumentContentChangeWholeDocument(text=text)]))
            start = time.perf_counter()
            r = await client.text_document_inline_completion_async(t.InlineCompletionParams(
                text_document=t.TextDocumentIdentifier(uri=uri), position=position(text, cursor), context=ctx))
            ms = (time.perf_counter() - start) * 1000
            items = (r.items if hasattr(r, "items") else r) or []
            # token counts stay inside the server: the lsp row reports latency only
            rows.append({"ms": ms, "computed": None, "reused": None, "typed_through": None,
                         "text": items[0].insert_text if items else ""})
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return rows

    return {"rows": asyncio.run(replay()), "rss_mb": None}


def _token_counter(encode):
    cache: dict[str, int] = {}

    def count(s: str) -> int:
        n = cache.get(s)
        if n is None:
            n = cache[s] = len(encode(s))
        return n
    return count


# ------------------------------------------------------------------ report
def summarize(name: str, result: dict) -> dict:
    rows = result["rows"]
    ms = sorted(r["ms"] for r in rows)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    counted = rows[0]["computed"] is not None
    model_runs = [r["ms"] for r in rows if not r["typed_through"]] or [0.0]
    model_computed = [r["computed"] for r in rows if not r["typed_through"]] if counted else []
    # A suggestion "completes the line" when it is exactly what the user goes on to type on it (lsp rows
    # answer with the whole line's replacement, so they are not judged).
    judged = [r for r in rows if r["rest"].strip()] if name != "lsp" else []
    return {"config": name, "requests": len(rows), "p50_ms": statistics.median(ms), "p95_ms": p95,
            "p50_model_ms": statistics.median(model_runs),
            "computed_model_median": statistics.median(model_computed) if model_computed else None,
            "completes_line": (sum(r["text"].rstrip() == r["rest"].rstrip() for r in judged) / len(judged))
            if judged else None,
            "computed_median": statistics.median(r["computed"] for r in rows) if counted else None,
            "computed_mean": statistics.fmean(r["computed"] for r in rows) if counted else None,
            "reused_mean": statistics.fmean(r["reused"] for r in rows) if counted else None,
            "typed_through": sum(r["typed_through"] for r in rows) if counted else None,
            "rss_mb": result.get("rss_mb")}


def child(args) -> int:
    torch_threads = args.threads
    os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
    workdir = Path(args.workdir)
    trace = typing_trace(args.chars) if args.trace == "typing" else edit_trace(args.edits, workdir)
    if args.config == "keystroke":
        res = run_engine(trace, args.model, args.threads, use_cache=True)
    elif args.config == "no-cache":
        res = run_engine(trace, args.model, args.threads, use_cache=False)
    elif args.config == "llama.cpp":
        res = run_llama_cpp(trace, args.model, args.threads)
    else:
        res = run_lsp(trace, args.model, args.threads)
    for row, (_, _, rest) in zip(res["rows"], trace):
        row["rest"] = rest
    Path(args.out).write_text(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered name or GGUF (default: the default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chars", type=int, default=120, help="characters typed in the typing trace")
    ap.add_argument("--edits", type=int, default=60, help="requests in the edit trace")
    ap.add_argument("--traces", nargs="+", default=["typing", "edits"])
    ap.add_argument("--configs", nargs="+", default=["keystroke", "no-cache", "llama.cpp", "lsp"])
    ap.add_argument("--json", default=None, help="write all results here")
    # internal: one configuration in a child process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--trace", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model is None:
        from keystroke.engine import DEFAULT_MODEL
        args.model = DEFAULT_MODEL
    if args.child:
        return child(args)

    workdir = Path(tempfile.mkdtemp(prefix="keystroke-bench-"))
    print(f"model {args.model}, {args.threads} threads, max {MAX_TOKENS} tokens per suggestion, line mode")
    all_results = {}
    for trace in args.traces:
        summaries = []
        for config in args.configs:
            if config == "llama.cpp":
                try:
                    import xllamacpp  # noqa: F401
                except ImportError:
                    print("xllamacpp is not installed: no llama.cpp row (pip install -e '.[bench]')")
                    continue
            out = workdir / f"{trace}-{config}.json"
            cmd = [sys.executable, __file__, "--child", "--config", config, "--trace", trace, "--out", str(out),
                   "--workdir", str(workdir), "--model", args.model, "--threads", str(args.threads),
                   "--chars", str(args.chars), "--edits", str(args.edits)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{trace}/{config} failed:\n{proc.stderr[-3000:]}")
                continue
            res = json.loads(out.read_text())
            summaries.append(summarize(config, res))
            all_results[f"{trace}/{config}"] = res
            print(f"  {trace}/{config}: {len(res['rows'])} requests in {time.perf_counter() - t:.0f}s", flush=True)
        print_table(trace, summaries)
    if args.json:
        Path(args.json).write_text(json.dumps(all_results))
    return 0


def print_table(trace: str, summaries: list[dict]) -> None:
    by = {s["config"]: s for s in summaries}
    base, ref = by.get("no-cache"), by.get("llama.cpp")
    print(f"\n### {trace} trace\n")
    print("| config | requests | p50 ms | p95 ms | p50 ms of model runs | tokens computed (median / mean) | "
          "tokens computed, model runs (median) | reused (mean) | typed-through | completes the line | "
          "peak RSS MB | p50 vs no-cache | p50 vs llama.cpp | p95 vs llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        vs_base = f"{s['p50_ms'] / base['p50_ms']:.2f}x" if base else "-"
        vs_ref = f"{s['p50_ms'] / ref['p50_ms']:.2f}x" if ref else "-"
        vs_ref95 = f"{s['p95_ms'] / ref['p95_ms']:.2f}x" if ref else "-"
        model_tokens = f"{s['computed_model_median']:.0f}" if s["computed_model_median"] is not None else "-"
        line = f"{s['completes_line'] * 100:.0f}%" if s["completes_line"] is not None else "-"
        rss = f"{s['rss_mb']:.0f}" if s["rss_mb"] else "-"
        if s["computed_median"] is None:
            tokens, reused, through = "-", "-", "-"
        else:
            tokens = f"{s['computed_median']:.0f} / {s['computed_mean']:.1f}"
            reused, through = f"{s['reused_mean']:.0f}", str(s["typed_through"])
        print(f"| {s['config']} | {s['requests']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
              f"{s['p50_model_ms']:.0f} | {tokens} | {model_tokens} | "
              f"{reused} | {through} | {line} | {rss} | {vs_base} | {vs_ref} | {vs_ref95} |")
    print()


if __name__ == "__main__":
    sys.exit(main())
