"""Type at a person's pace through `keystroke serve` and see which keystrokes get ghost text in time.

    python scripts/bench_live.py [--model NAME] [--chars 120] [--pace-ms 150] [--pause-ms 600]

The trace is bench_keystroke.py's typing trace (a standard-library function
typed back character by character), but live: a keystroke every
`--pace-ms`, and `--pause-ms` after a space or a line break (people pause
between words), each one a didChange and an Automatic inline request sent
without waiting for the one before, as editors do. The server's adaptive
debounce is on, as by default; speculation after an accept is off (nothing
is accepted here).

Two configurations, each its own `keystroke serve`, one after the other:

- reuse: `reuseInFlight` true (the default): a keystroke that types what the
  running generation is writing waits for it (server/inflight.py);
- no reuse: `reuseInFlight` false: every keystroke that needs the model
  cancels the running generation and starts over.

Reported per configuration: the share of keystrokes whose own request got
a suggestion at all (the others were superseded by the next keystroke), the
share that got it before the next keystroke (ghost text while typing), the
p50/p95 latency of those answered, and how the server answered (status
outcomes, the in-flight counts).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_keystroke import MAX_TOKENS, typing_trace  # noqa: E402

URI = "file:///bench_live.py"


def position(text: str, offset: int):
    from lsprotocol import types as t
    line = text.count("\n", 0, offset)
    col = offset - (text.rfind("\n", 0, offset) + 1)
    return t.Position(line=line, character=len(text[offset - col:offset].encode("utf-16-le")) // 2)


async def replay(model: str, threads: int, chars: int, pace_ms: float, pause_ms: float, reuse: bool) -> dict:
    from lsprotocol import types as t
    from pygls.lsp.client import LanguageClient

    trace = typing_trace(chars)
    client = LanguageClient("bench-live", "1")
    await client.start_io(sys.executable, "-m", "keystroke.server.cli", "serve", "--model", model,
                          "--threads", str(threads))
    await client.initialize_async(t.InitializeParams(capabilities=t.ClientCapabilities(), initialization_options={
        "maxTokens": MAX_TOKENS, "speculate": False, "reuseInFlight": reuse,
        "cacheDir": tempfile.mkdtemp(prefix="keystroke-bench-live-")}))
    client.initialized(t.InitializedParams())
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        t.TextDocumentItem(uri=URI, language_id="python", version=0, text=trace[0][0])))

    async def status() -> dict:
        return await client.workspace_execute_command_async(t.ExecuteCommandParams(command="keystroke.status"))

    while (await status())["state"] == "loading":
        await asyncio.sleep(0.2)
    ctx = t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Automatic)
    # One request first, so that both runs start with the file's prompt in the cache.
    await client.text_document_inline_completion_async(t.InlineCompletionParams(
        text_document=t.TextDocumentIdentifier(uri=URI), position=position(*trace[0][:2]), context=ctx))
    before = (await status())["server"]["outcomes"]

    async def ask(text: str, cursor: int, sent: float) -> tuple[float, bool]:
        r = await client.text_document_inline_completion_async(t.InlineCompletionParams(
            text_document=t.TextDocumentIdentifier(uri=URI), position=position(text, cursor), context=ctx))
        items = (r.items if hasattr(r, "items") else r) or []
        return (time.perf_counter() - sent) * 1000, bool(items)

    tasks, due, gaps = [], time.perf_counter(), []
    for version, (text, cursor, _) in enumerate(trace, start=1):
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        gap = pause_ms if text[cursor - 1] in " \n" else pace_ms
        gaps.append(gap)
        due += gap / 1000
        client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=URI, version=version),
            content_changes=[t.TextDocumentContentChangeWholeDocument(text=text)]))
        tasks.append(asyncio.ensure_future(ask(text, cursor, time.perf_counter())))
    answers = await asyncio.gather(*tasks)
    st = await status()
    outcomes = {k: v - before.get(k, 0) for k, v in st["server"]["outcomes"].items() if v - before.get(k, 0)}
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {"answers": answers, "gaps": gaps, "outcomes": outcomes, "in_flight": st.get("in_flight", {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a registered name or file (default: the default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chars", type=int, default=120)
    ap.add_argument("--pace-ms", type=float, default=150, help="time between keystrokes")
    ap.add_argument("--pause-ms", type=float, default=600, help="time after a space or a line break")
    args = ap.parse_args(argv)
    if args.model is None:
        from keystroke.engine import DEFAULT_MODEL
        args.model = DEFAULT_MODEL
    print(f"model {args.model}, {args.threads} threads, {args.chars} keystrokes, one every {args.pace_ms:.0f} ms "
          f"and {args.pause_ms:.0f} ms after a space or line break, max {MAX_TOKENS} tokens")
    rows = {}
    for name, reuse in (("no reuse", False), ("reuse", True)):
        rows[name] = asyncio.run(replay(args.model, args.threads, args.chars, args.pace_ms, args.pause_ms, reuse))
    print("\n| config | keystrokes | with a suggestion | before the next keystroke | p50 ms (answered) | "
          "p95 ms (answered) | outcomes | in flight |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res in rows.items():
        answers = res["answers"]
        ms = sorted(m for m, ok in answers if ok)
        in_time = sum(1 for (m, ok), gap in zip(answers, res["gaps"]) if ok and m <= gap)
        p50 = f"{statistics.median(ms):.0f}" if ms else "-"
        p95 = f"{ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]:.0f}" if ms else "-"
        out = ", ".join(f"{k} {v}" for k, v in sorted(res["outcomes"].items()))
        fl = res["in_flight"]
        print(f"| {name} | {len(answers)} | {100 * len(ms) / len(answers):.0f}% | {100 * in_time / len(answers):.0f}% | "
              f"{p50} | {p95} | {out} | joined {fl.get('joined', 0)}, answered {fl.get('reused', 0)}, "
              f"declined {fl.get('declined', 0)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
