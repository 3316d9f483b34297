"""What drafted tokens (engine/lookup.py) save: the same completions with drafting on and off, in one process.

    python3 scripts/bench_drafts.py [--model qwen2.5-coder-0.5b] [--spots 3] [--modes block line]

Spots are cut from standard-library files (a line of each, at a seeded
random place, the cursor after its indentation plus a few characters; up to
6,000 characters before it and 40 lines after). Each spot is completed by
`Engine.complete` (no KV-cache, no response cache) with drafting on and off,
the order alternating from spot to spot so that neither side always runs on
a warmer machine. Printed: how many texts are identical (all of them, or
drafting is broken), decode tokens, model passes and decode tok/s per side,
and the ratio.
"""
from __future__ import annotations

import argparse
import random
import sys
import sysconfig
from pathlib import Path

FILES = ("argparse.py", "textwrap.py", "json/encoder.py", "shlex.py", "fractions.py", "dataclasses.py")


def spots(files: list[Path], per_file: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(name, prefix, suffix) cut at seeded random lines of each file."""
    rng = random.Random(seed)
    out = []
    for path in files:
        lines = path.read_text().splitlines(keepends=True)
        for _ in range(per_file):
            i = rng.randrange(min(50, len(lines) // 3), max(len(lines) - 50, len(lines) // 2 + 1))
            line = lines[i]
            cut = len(line) - len(line.lstrip()) + rng.randrange(0, max(1, len(line.strip()) // 2))
            prefix = "".join(lines[:i])[-6000:] + line[:cut]
            out.append((path.name, prefix, line[cut:] + "".join(lines[i + 1:i + 40])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a registered name or a path (default: the default model)")
    ap.add_argument("--spots", type=int, default=3, help="spots per file")
    ap.add_argument("--modes", nargs="+", default=["block", "line"])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--files", nargs="+", help="files to cut spots from (default: six stdlib files)")
    args = ap.parse_args(argv)

    from keystroke.engine import CompletionRequest, Engine, StopPolicy
    engine = Engine.load(args.model, threads=args.threads, persist=False, response_cache=False)
    drafts = engine.draft_tokens
    if drafts <= 0:
        print(f"{engine.name} ({engine.quant}) does not draft: nothing to compare", file=sys.stderr)
        return 1
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [Path(f) for f in args.files] if args.files else [stdlib / f for f in FILES]
    totals = {on: {"ms": 0.0, "tokens": 0, "passes": 0} for on in (True, False)}
    same = n = 0
    for mode in args.modes:
        for j, (name, prefix, suffix) in enumerate(spots(files, args.spots)):
            texts = {}
            for on in ((True, False) if j % 2 == 0 else (False, True)):
                engine.draft_tokens = drafts if on else 0
                r = engine.complete(CompletionRequest(doc_id=name, prefix=prefix, suffix=suffix, use_cache=False,
                                                      stop=StopPolicy(mode=mode, max_tokens=args.max_tokens)))
                t = r.timings
                totals[on]["ms"] += t.decode_ms
                totals[on]["tokens"] += t.decode_tokens
                totals[on]["passes"] += t.decode_passes
                texts[on] = r.text
            n += 1
            same += texts[True] == texts[False]
            if texts[True] != texts[False]:
                print(f"DIFFERENT at {name} ({mode}): {texts[True][:60]!r} vs {texts[False][:60]!r}")
    print(f"{engine.name}, {', '.join(args.modes)} mode, {n} completions: {same} identical texts")
    print("| drafting | decode tokens | model passes | decode ms | decode tok/s |\n|---|---|---|---|---|")
    speed = {}
    for on in (True, False):
        t = totals[on]
        speed[on] = t["tokens"] / (t["ms"] / 1000) if t["ms"] else 0.0
        print(f"| {'on' if on else 'off'} | {t['tokens']} | {t['passes']} | {t['ms']:.0f} | {speed[on]:.1f} |")
    if speed[False]:
        print(f"decode with drafting / without: {speed[True] / speed[False]:.2f}x")
    return 0 if same == n else 1


if __name__ == "__main__":
    sys.exit(main())
