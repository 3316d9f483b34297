"""Replay "accept, then keep typing" through `keystroke serve` and time the request after each accept.

    python scripts/bench_accept.py [--model NAME] [--lines 12] [--think-ms 300]

The trace, over code no one here wrote (a standard-library function, as in
scripts/bench_keystroke.py): the function is removed, then written back line
by line. For each of its lines, the client types the line's indentation and
first characters (asking for a suggestion every 4th character, as the
typing trace does), shows the last suggestion for `--think-ms` (a person
reads ghost text before pressing Tab), applies it as an editor's accept does
(one didChange), and asks again at the end of the accepted text: that is the
request this benchmark is about. Then it types the rest of the real line
over what it accepted (the accepted text stays: an editor keeps it) and a
line break.

Both configurations run in the same process one after the other, each its
own `keystroke serve` with the same settings but one:

- speculation: the server computes the suggestion for the state after the
  accept while the suggestion is shown (server/speculation.py);
- no speculation: `speculate: false`, every request after an accept runs the model.

Reported: p50/p95 of the request after an accept, the share of those answered
without running the model (from a finished guess) and of those that waited
on a running one, the share that got a suggestion at all (after a line
accepted at its end, often none), p50 of the typing requests, and the cancellation bound:
how long user requests queued behind speculative work waited (p50, max),
next to one decode step (mean ms per decoded token) of the same server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILE = STDLIB / "textwrap.py"
FUNCTION = "def wrap(self, text):"      # TextWrapper.wrap and the methods after it
MAX_TOKENS = 16
URI = "file:///bench_accept.py"


def source_lines(n: int) -> tuple[str, list[str], str]:
    """(head, the first `n` non-blank code lines from FUNCTION on, tail): the file around them."""
    src = FILE.read_text()
    start = src.index(FUNCTION)
    start = src.rindex("\n", 0, start) + 1
    lines = src[start:].split("\n")
    picked, used, in_docstring = [], 0, False
    for line in lines:
        used += 1
        quotes = line.count('"""')
        if in_docstring or quotes:           # docstrings are prose: the trace writes code only
            in_docstring = in_docstring != (quotes % 2 == 1)
            continue
        if line.strip():
            picked.append(line)
        if len(picked) == n:
            break
    rest = "\n".join(lines[used:])
    return src[:start], picked, "\n" + rest


def position(text: str, offset: int):
    from lsprotocol import types as t
    line = text.count("\n", 0, offset)
    col = offset - (text.rfind("\n", 0, offset) + 1)
    return t.Position(line=line, character=len(text[offset - col:offset].encode("utf-16-le")) // 2)


async def replay(model: str, threads: int, n_lines: int, think_ms: float, speculate: bool) -> dict:
    import tempfile

    from lsprotocol import types as t
    from pygls.lsp.client import LanguageClient

    head, lines, tail = source_lines(n_lines)
    client = LanguageClient("bench-accept", "1")
    await client.start_io(sys.executable, "-m", "keystroke.server.cli", "serve", "--model", model,
                          "--threads", str(threads))
    # A fresh cache directory per run: the response cache persists on disk, and a second run with the
    # same prompts would otherwise be answered from the first one's.
    cache_dir = tempfile.mkdtemp(prefix="keystroke-bench-accept-")
    await client.initialize_async(t.InitializeParams(capabilities=t.ClientCapabilities(), initialization_options={
        "maxTokens": MAX_TOKENS, "debounceMs": 0, "speculate": speculate, "cacheDir": cache_dir}))
    client.initialized(t.InitializedParams())
    ctx = t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic)
    text, cursor, version = head + tail, len(head), 0
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        t.TextDocumentItem(uri=URI, language_id="python", version=0, text=text)))

    async def status() -> dict:
        return await client.workspace_execute_command_async(t.ExecuteCommandParams(command="keystroke.status"))

    while (await status())["state"] == "loading":
        await asyncio.sleep(0.2)

    def edit(new_text: str) -> None:
        nonlocal text, version
        version += 1
        text = new_text
        client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=URI, version=version),
            content_changes=[t.TextDocumentContentChangeWholeDocument(text=new_text)]))

    outcomes: dict = {}

    async def ask() -> tuple[float, str, str]:
        """(ms, the suggestion after the cursor, how the server answered: served, typed_through, speculated...)."""
        nonlocal outcomes
        started = time.perf_counter()
        r = await client.text_document_inline_completion_async(t.InlineCompletionParams(
            text_document=t.TextDocumentIdentifier(uri=URI), position=position(text, cursor), context=ctx))
        ms = (time.perf_counter() - started) * 1000
        now = (await status())["server"]["outcomes"]      # not timed
        source = next((k for k, v in now.items() if v > outcomes.get(k, 0)), "?")
        outcomes = dict(now)
        items = (r.items if hasattr(r, "items") else r) or []
        if not items:
            return ms, "", source
        line_start = text.rfind("\n", 0, cursor) + 1
        return ms, items[0].insert_text[cursor - line_start:], source

    typing_ms, typing_sources, after_accept = [], [], []
    for line in lines:
        indent = len(line) - len(line.lstrip())
        typed_part = line[:indent + min(4, len(line) - indent)]      # indentation and a few characters
        shown = ""
        for k in range(1, len(typed_part) + 1):
            edit(text[:cursor] + typed_part[k - 1] + text[cursor:])
            cursor += 1
            if k % 4 == 0 or k == len(typed_part):
                ms, shown, source = await ask()
                typing_ms.append(ms)
                typing_sources.append(source)
        if not shown:
            rest = line[len(typed_part):] + "\n"
            edit(text[:cursor] + rest + text[cursor:])
            cursor += len(rest)
            continue
        await asyncio.sleep(think_ms / 1000)         # reading the ghost text
        before = (await status())["speculation"]
        edit(text[:cursor] + shown + text[cursor:])  # Tab
        cursor += len(shown)
        ms, suggestion, source = await ask()
        after = (await status())["speculation"]
        answered = after.get("answered", 0) - before.get("answered", 0)
        joined = after.get("joined", 0) - before.get("joined", 0)
        after_accept.append({"ms": ms, "from_guess": bool(answered), "joined": bool(joined), "source": source,
                             "suggested": bool(suggestion)})
        # Keep typing: the real rest of the line after what was accepted, then a line break.
        rest = line[len(typed_part):] + "\n"
        for k in range(1, len(rest) + 1):
            edit(text[:cursor] + rest[k - 1] + text[cursor:])
            cursor += 1
            if k % 4 == 0:
                ms, _, source = await ask()
                typing_ms.append(ms)
                typing_sources.append(source)
    final = await status()
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {"typing_ms": typing_ms, "typing_sources": typing_sources, "after_accept": after_accept, "status": final}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a registered name or file (default: the default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lines", type=int, default=12, help="lines of the function written back")
    ap.add_argument("--think-ms", type=float, default=300, help="how long a suggestion is shown before Tab")
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args(argv)
    if args.model is None:
        from keystroke.engine import DEFAULT_MODEL
        args.model = DEFAULT_MODEL
    print(f"model {args.model}, {args.threads} threads, max {MAX_TOKENS} tokens, {args.lines} lines of "
          f"{FILE.name} from {FUNCTION!r}, {args.think_ms:.0f} ms before each accept")
    results = {}
    for name, speculate in (("no speculation", False), ("speculation", True)):
        t0 = time.perf_counter()
        results[name] = asyncio.run(replay(args.model, args.threads, args.lines, args.think_ms, speculate))
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    base = results["no speculation"]
    base_p50 = statistics.median(r["ms"] for r in base["after_accept"]) if base["after_accept"] else None
    print("\n| config | accepts | p50 ms after accept | p95 ms after accept | answered from a finished guess | "
          "waited on a running guess | with a suggestion | typing requests | typing p50 ms | "
          "typing answered by typed-through | p50 after accept vs no speculation |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        rows = res["after_accept"]
        if not rows:
            print(f"| {name} | 0 | - | - | - | - | - | - | - | - | - |")
            continue
        ms = [r["ms"] for r in rows]
        p50 = statistics.median(ms)
        from_guess = sum(r["from_guess"] for r in rows) / len(rows)
        joined = sum(r["joined"] for r in rows) / len(rows)
        ratio = f"{p50 / base_p50:.2f}x" if base_p50 else "-"
        through = res["typing_sources"].count("typed_through") / max(1, len(res["typing_sources"]))
        suggested = sum(r["suggested"] for r in rows) / len(rows)
        print(f"| {name} | {len(rows)} | {p50:.0f} | {pct(ms, 95):.0f} | {100 * from_guess:.0f}% | {100 * joined:.0f}% | "
              f"{100 * suggested:.0f}% | {len(res['typing_ms'])} | {statistics.median(res['typing_ms']):.0f} | {100 * through:.0f}% | {ratio} |")
    spec = results["speculation"]["status"]
    s, reuse = spec["speculation"], spec["server"]["reuse"]
    print(f"\nspeculation: {s['started']} started, {s['answered']} answered, {s['joined']} joined, "
          f"{s['cancelled']} cancelled (before or while running), {s['discarded']} unused, {s['skipped']} skipped (prompt "
          f"more than the suggestion added); cost per finished guess: {json.dumps(s['cost'])}")
    hits = reuse["response_cache_hit_ratio"]
    print(f"engine response-cache hits in the speculation run: {hits} (a fresh cache directory per run)")
    print(f"cancellation bound: {s['preempted_requests']} user requests queued behind speculation waited "
          f"p50 {s['preempt_wait_p50_ms']} ms, max {s['preempt_wait_max_ms']} ms; decode ms per token (one step "
          f"without drafted tokens, less than a step with them) is {reuse['decode_ms_per_token']} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
