#!/usr/bin/env python3
"""Completion quality on real code no one here wrote, with and without each context source.

Tasks come from this Python's standard library and from wheels fetched by
`pip download --no-deps --require-hashes` (versions and sha256 pinned below),
unpacked into a temporary folder that serves as the workspace root:

- line: the cursor at a random point of a real code line; the rest of that
  line is removed from the document and is the target;
- crossfile: the cursor right after `name(` or `name.`, where `name` is a
  class or function imported from another module of the same package; the
  defining module (and one more module of the package) are open documents,
  and the workspace root lets the server follow the import on disk too;
- body: the cursor on the first line of a function's body (after its
  docstring); the body is removed and is the target; scored by first-line
  exact match and by edit similarity of the whole body.

Each task runs through the server's own pipeline (`keystroke.server.pipeline`:
context, stop-mode choice, the engine, post-processing), with the server's
default settings but the token budget per kind, once per context configuration: `off` (no source), each source alone, and
`all`. Scores come with percentile-bootstrap 95% intervals over tasks, and
the all-minus-off difference with a paired bootstrap interval.

    python3 scripts/eval_completion.py --tasks 60            # default model, all configurations
    python3 scripts/eval_completion.py --sources off,all --kinds crossfile

Results go to artifacts/eval/ as JSON lines (one per task and
configuration; a rerun with the same model, seed and budget reuses them, so
a larger --tasks or more --sources only computes what is new) and a
summary JSON.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import io
import random
import re
import subprocess
import sys
import sysconfig
import time
import tokenize
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evalkit  # noqa: E402

# Wheels whose modules import each other, pinned by version and sha256 (pip checks the hash).
PACKAGES: dict[str, tuple[str, str]] = {
    "click": ("8.1.8", "63c132bbbed01578a06712a2d1f497bb62d9c1c0d329b7903a866228027263b2"),
    "attrs": ("25.3.0", "427318ce031701fea540783410126f03899a97ffc6f61596ad581ac2e40e3bc3"),
}
KINDS = ("line", "crossfile", "body")
CONFIGS = ("off", "imports", "signatures", "siblings", "similar", "usages", "all")
SOURCE_NAMES = ("imports", "signatures", "siblings", "similar", "usages")
MAX_TOKENS = {"line": 48, "crossfile": 48, "body": 128}
# Standard-library folders that are tests, tools or generated data rather than library code.
STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages", "ensurepip",
               "pydoc_data", "__pycache__", "encodings", "__phello__"}
MAX_FILE_BYTES = 150_000
MAX_BODY_LINES = 10
MAX_BODY_CHARS = 400


@dataclass(frozen=True)
class SourceFile:
    origin: str   # "stdlib", "click", ...
    root: Path    # the workspace root the file lives under
    path: Path


@dataclass
class Task:
    id: str
    kind: str
    origin: str
    root: Path
    path: Path
    text: str          # the document as the editor holds it (target removed)
    offset: int        # the cursor
    target: str
    others: list[Path] = field(default_factory=list)
    symbol: str = ""   # crossfile: the imported name used at the cursor


# --------------------------------------------------------------------------- corpus

def fetch_packages(names: list[str], cache: Path) -> Path:
    """Download the pinned wheels (hash-checked by pip) and unpack them; the folder they share."""
    wheels = cache / "wheels"
    site = cache / "site"
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = []
    for name in names:
        if name not in PACKAGES:
            raise SystemExit(f"unknown package {name!r}; known: {', '.join(PACKAGES)}")
        version, sha = PACKAGES[name]
        wanted.append((name, version, sha))
    missing = [w for w in wanted if not _wheel_ok(wheels, *w)]
    if missing:
        req = cache / "requirements.txt"
        req.write_text("".join(f"{n}=={v} --hash=sha256:{h}\n" for n, v, h in missing))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "-q", "-d", str(wheels), "-r", str(req)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pip download failed:\n{proc.stderr.strip()}\n(use --packages none for the "
                             "standard library alone)")
    for name, version, sha in wanted:
        wheel = _wheel_ok(wheels, name, version, sha)
        if wheel is None:
            raise SystemExit(f"{name}=={version}: no wheel with sha256 {sha} in {wheels}")
        marker = site / f".{wheel.name}.unpacked"
        if not marker.exists():
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            marker.touch()
    return site


def _wheel_ok(folder: Path, name: str, version: str, sha: str) -> Path | None:
    for wheel in folder.glob(f"{name}-{version}-*.whl"):
        if hashlib.sha256(wheel.read_bytes()).hexdigest() == sha:
            return wheel
    return None


def stdlib_files() -> list[SourceFile]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in STDLIB_SKIP or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if 1000 <= path.stat().st_size <= MAX_FILE_BYTES:
            out.append(SourceFile("stdlib", root, path))
    return out


def package_files(site: Path, name: str) -> list[SourceFile]:
    out = []
    for top in sorted(p for p in site.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        dist = next(iter(site.glob(f"{name}-*.dist-info")), None)
        if dist is None or top.name not in _top_levels(dist):
            continue
        out += [SourceFile(name, site, p) for p in sorted(top.rglob("*.py"))
                if 500 <= p.stat().st_size <= MAX_FILE_BYTES]
    return out


def _top_levels(dist: Path) -> set[str]:
    record = (dist / "RECORD").read_text() if (dist / "RECORD").exists() else ""
    return {line.split("/", 1)[0] for line in record.splitlines() if "/" in line.split(",", 1)[0]}


# --------------------------------------------------------------------------- task candidates

@dataclass
class Parsed:
    text: str
    lines: list[str]
    starts: list[int]           # str offset of each line
    tree: ast.Module
    tokens: list[tokenize.TokenInfo]
    string_lines: set[int]      # 0-based lines touched by a multi-line string


def parse_file(path: Path) -> Parsed | None:
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, ValueError, RecursionError):
        return None
    if "\t" in text or "\r" in text:
        return None
    lines = text.split("\n")
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    string_lines = set()
    for tok in tokens:
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            string_lines.update(range(tok.start[0] - 1, tok.end[0]))
    return Parsed(text, lines, starts, tree, tokens, string_lines)


def line_candidates(p: Parsed) -> list[tuple[int, int]]:
    """(line, column) cursors on code lines; the rest of the line has at least 3 visible characters."""
    out = []
    for i, line in enumerate(p.lines):
        code = line.strip()
        if i in p.string_lines or len(code) < 12 or code.startswith(("#", "@", "import ", "from ")):
            continue
        indent = len(line) - len(line.lstrip())
        end = len(line.rstrip())
        for col in range(indent + 1, end - 2):
            if len(line[col:].strip()) >= 3:
                out.append((i, col))
    return out


def _module_file(base: Path, dotted: str) -> Path | None:
    rel = Path(*dotted.split(".")) if dotted else Path()
    for cand in (base / rel.with_suffix(".py") if dotted else None, base / rel / "__init__.py"):
        if cand is not None and cand.is_file():
            return cand
    return None


def _defined_names(path: Path, memo: dict[Path, set[str]]) -> set[str]:
    if path not in memo:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            memo[path] = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                           ast.ClassDef))}
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            memo[path] = set()
    return memo[path]


def crossfile_candidates(src: SourceFile, p: Parsed, memo: dict) -> list[tuple[int, int, str, Path]]:
    """(line, column, name, defining module) right after `name(` or `name.` for names imported
    from a sibling module of the same package (a class or function defined there)."""
    if not (src.path.parent / "__init__.py").exists():
        return []
    top = src.path.relative_to(src.root).parts[0]
    bound: dict[str, tuple[Path, int]] = {}
    for node in ast.walk(p.tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = src.path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = _module_file(base, node.module or "")
        elif node.module and node.module.split(".")[0] == top:
            target = _module_file(src.root, node.module)
        else:
            continue
        if target is None or target.resolve() == src.path.resolve():
            continue
        defined = _defined_names(target, memo)
        for alias in node.names:
            if alias.name in defined:
                bound.setdefault(alias.asname or alias.name, (target, node.end_lineno or node.lineno))
    if not bound:
        return []
    out = []
    toks = [t for t in p.tokens if t.type not in (tokenize.NL, tokenize.COMMENT)]
    for before, a, b in zip([None] + toks, toks, toks[1:]):
        if a.type != tokenize.NAME or a.string not in bound or b.type != tokenize.OP or b.string not in "(.":
            continue
        if before is not None and before.string in (".", "def", "class"):
            continue  # an attribute or a definition of the same name, not a use of the imported one
        target, import_end = bound[a.string]
        line, col = b.end[0] - 1, b.end[1]
        if b.start[0] != a.start[0] or a.start[0] <= import_end or line in p.string_lines:
            continue
        if len(p.lines[line][col:].strip()) >= 3:
            out.append((line, col, a.string, target))
    return out


def body_candidates(p: Parsed) -> list[tuple[int, int]]:
    """(first body line, last body line), 0-based, of functions whose body (after the docstring) is short."""
    out = []
    for node in ast.walk(p.tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        if not body:
            continue
        first, last = body[0].lineno - 1, node.end_lineno - 1
        header_end = (node.body[0].lineno - 1) if body is node.body else node.body[0].end_lineno
        if first < header_end or first <= node.lineno - 1 or p.lines[first].strip() == "":
            continue
        if body[0].col_offset != len(p.lines[first]) - len(p.lines[first].lstrip()):
            continue  # the statement does not start its line
        text = "\n".join(p.lines[first:last + 1])
        if last - first + 1 > MAX_BODY_LINES or len(text) > MAX_BODY_CHARS:
            continue
        if evalkit.normalize_lines(text).strip() in ("pass", "..."):
            continue
        out.append((first, last))
    return out


# --------------------------------------------------------------------------- sampling

def make_task(kind: str, src: SourceFile, p: Parsed, cand: tuple, index: int) -> Task:
    rel = src.path.relative_to(src.root).as_posix()
    if kind in ("line", "crossfile"):
        line, col = cand[0], cand[1]
        start = p.starts[line]
        offset = start + col
        end = start + len(p.lines[line])
        text = p.text[:offset] + p.text[end:]
        target = p.text[offset:end].rstrip()
        task = Task(f"{kind}-{index:03d}:{src.origin}/{rel}:{line + 1}:{col + 1}", kind, src.origin, src.root,
                    src.path, text, offset, target)
        if kind == "crossfile":
            task.symbol, task.others = cand[2], [cand[3]]
        return task
    first, last = cand
    indent = p.lines[first][: len(p.lines[first]) - len(p.lines[first].lstrip())]
    lines = p.lines[:first] + [indent] + p.lines[last + 1:]
    text = "\n".join(lines)
    offset = p.starts[first] + len(indent)
    target = "\n".join(p.lines[first:last + 1])[len(indent):]
    return Task(f"body-{index:03d}:{src.origin}/{rel}:{first + 1}", kind, src.origin, src.root, src.path, text,
                offset, target)


def sample_tasks(files: list[SourceFile], kinds: tuple[str, ...], per_kind: int, seed: int) -> list[Task]:
    """`per_kind` tasks of each kind, spread over origins in turn and over files (one candidate per visit).

    Deterministic for a given seed and corpus, and stable as `per_kind` grows (the first n tasks of a
    kind are the same for any larger n, whatever other kinds are asked for), so runs of different sizes
    share results. Tasks of all kinds are interleaved so that a partial run still covers every kind.
    """
    by_origin: dict[str, list[SourceFile]] = {}
    for f in files:
        by_origin.setdefault(f.origin, []).append(f)
    parsed: dict[Path, Parsed | None] = {}
    memo: dict[Path, set[str]] = {}
    per_kind_tasks: dict[str, list[Task]] = {}
    for kind in kinds:
        rng = random.Random(f"{seed}/{kind}")
        orders = {o: rng.sample(fs, len(fs)) for o, fs in sorted(by_origin.items())}
        used: set[tuple] = set()
        tasks: list[Task] = []
        cursors = {o: 0 for o in orders}
        exhausted: set[str] = set()
        while len(tasks) < per_kind and len(exhausted) < len(orders):
            for origin, order in orders.items():
                if len(tasks) >= per_kind or origin in exhausted:
                    continue
                for _ in range(len(order)):  # the next file of this origin with a fresh candidate
                    src = order[cursors[origin] % len(order)]
                    cursors[origin] += 1
                    if src.path not in parsed:
                        parsed[src.path] = parse_file(src.path)
                    p = parsed[src.path]
                    if p is None:
                        continue
                    if kind == "line":
                        cands = line_candidates(p)
                    elif kind == "crossfile":
                        cands = crossfile_candidates(src, p, memo)
                    else:
                        cands = body_candidates(p)
                    fresh = [c for c in cands if (src.path, c[:2]) not in used]
                    if not fresh:
                        continue
                    # Lines first, then a cursor on the line: long lines get no more tasks than short ones.
                    lines = sorted({c[0] for c in fresh})
                    line = rng.choice(lines)
                    cand = rng.choice([c for c in fresh if c[0] == line])
                    used.add((src.path, cand[:2]))
                    tasks.append(make_task(kind, src, p, cand, len(tasks)))
                    break
                else:
                    exhausted.add(origin)
        per_kind_tasks[kind] = tasks
    for kind, tasks in per_kind_tasks.items():
        for t in tasks:
            t.others = _open_documents(t, random.Random(f"{seed}/{t.id}"))
    out = []
    for i in range(max((len(t) for t in per_kind_tasks.values()), default=0)):
        out += [ts[i] for ts in per_kind_tasks.values() if i < len(ts)]
    return out


def _open_documents(task: Task, rng: random.Random) -> list[Path]:
    """The task's open documents: for crossfile the defining module, and one more module of the same folder."""
    siblings = sorted(p for p in task.path.parent.glob("*.py")
                      if p != task.path and p not in task.others and p.stat().st_size <= MAX_FILE_BYTES)
    extra = [rng.choice(siblings)] if siblings else []
    return task.others + extra


# --------------------------------------------------------------------------- running

def context_sources(name: str):
    """The context sources of configuration `name`: none (off), one, or all."""
    from keystroke.server.context import ContextConfig
    return ContextConfig(**{s: (name == "all" or name == s) for s in SOURCE_NAMES})


def run_task(engine, task: Task, config_name: str, budget: int) -> dict:
    """One task under one context configuration, through the server's own pipeline."""
    from keystroke.server import pipeline
    from keystroke.server.config import Config
    from keystroke.server.context import DocumentView

    doc = DocumentView(task.path.as_uri(), task.text, "python", task.path)
    others = [DocumentView(p.as_uri(), p.read_text(encoding="utf-8"), "python", p) for p in task.others]
    config = Config(context_budget=budget, max_tokens=MAX_TOKENS[task.kind])
    t0 = time.perf_counter()
    plan = pipeline.plan(doc, task.offset, others, config, count_tokens=engine.count_tokens,
                         workspace_root=task.root, sources=context_sources(config_name))
    context_ms = (time.perf_counter() - t0) * 1000
    result = engine.complete(plan.request)
    if result.error:
        raise SystemExit(f"the engine failed on {task.id}: {result.error}")
    prediction = (pipeline.finish(result, plan) or [""])[0]
    rec = {"task": task.id, "kind": task.kind, "origin": task.origin, "config": config_name, "mode": plan.mode,
           "symbol": task.symbol, "target": task.target, "raw": result.text,
           "stop_reason": result.candidates[0].stop_reason if result.candidates else "", "prediction": prediction,
           "header_tokens": plan.header_tokens,
           "provenance": [{k: e[k] for k in ("source", "tokens", "items")} for e in plan.provenance],
           "prompt_tokens": result.timings.prompt_tokens, "decode_tokens": result.timings.decode_tokens,
           "context_ms": round(context_ms, 1), "engine_ms": round(result.timings.total_ms, 1)}
    rec.update(score(task.kind, prediction, task.target))
    return rec


def score(kind: str, prediction: str, target: str) -> dict:
    if kind == "body":
        pred, gold = evalkit.normalize_lines(prediction), evalkit.normalize_lines(target)
        return {"em": float(evalkit.first_code_line(pred) == evalkit.first_code_line(gold)),
                "es": evalkit.edit_similarity(pred, gold), "body_em": float(pred == gold)}
    pred, gold = prediction.rstrip(), target.rstrip()
    return {"em": float(pred == gold), "es": evalkit.edit_similarity(pred, gold)}


# --------------------------------------------------------------------------- report

def summarize(records: list[dict], kinds: tuple[str, ...], configs: tuple[str, ...], seed: int) -> dict:
    """Per kind and configuration: n, EM and ES means with intervals; all - off paired differences."""
    by: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        by.setdefault((r["kind"], r["config"]), {})[r["task"]] = r
    out: dict = {"cells": {}, "diffs": {}}
    for kind in kinds:
        # Only tasks every configuration finished are compared (a resumed or cut run may have gaps).
        common = set.intersection(*(set(by.get((kind, c), {})) for c in configs)) if configs else set()
        ids = sorted(common)
        for c in configs:
            rows = [by[(kind, c)][i] for i in ids]
            cell = {"n": len(rows)}
            for metric in ("em", "es"):
                vals = [r[metric] for r in rows]
                lo, hi = evalkit.bootstrap_ci(vals, seed=seed)
                cell[metric] = {"mean": evalkit.mean(vals), "lo": lo, "hi": hi}
            out["cells"][f"{kind}/{c}"] = cell
        if "off" in configs and "all" in configs and ids:
            for metric in ("em", "es"):
                d, lo, hi = evalkit.paired_diff_ci([by[(kind, "all")][i][metric] for i in ids],
                                                   [by[(kind, "off")][i][metric] for i in ids], seed=seed)
                out["diffs"][f"{kind}/{metric}"] = {"mean": d, "lo": lo, "hi": hi}
    return out


METRIC_NAMES = {"line": ("EM", "ES"), "crossfile": ("EM", "ES"), "body": ("first-line EM", "ES")}


def render(summary: dict, kinds: tuple[str, ...], configs: tuple[str, ...]) -> str:
    def cell(c: dict) -> str:
        return f"{c['mean'] * 100:.1f} [{c['lo'] * 100:.1f}, {c['hi'] * 100:.1f}]"

    header = ["context"] + [f"{k} {m} (n={summary['cells'].get(f'{k}/{configs[0]}', {}).get('n', 0)})"
                            for k in kinds for m in METRIC_NAMES[k]]
    rows = []
    for c in configs:
        row = [c]
        for k in kinds:
            got = summary["cells"].get(f"{k}/{c}")
            row += [cell(got["em"]), cell(got["es"])] if got and got["n"] else ["-", "-"]
        rows.append(row)
    text = evalkit.markdown_table(header, rows)
    if summary["diffs"]:
        diff_rows = []
        for k in kinds:
            em, es = summary["diffs"].get(f"{k}/em"), summary["diffs"].get(f"{k}/es")
            if em and es:
                em_off = summary["cells"][f"{k}/off"]["em"]
                em_all = summary["cells"][f"{k}/all"]["em"]
                beats = "yes" if em_all["lo"] > em_off["hi"] else ("paired only" if em["lo"] > 0 else "no")
                diff_rows.append([k, _signed(em), _signed(es), beats])
        text += "\n\nall - off, paired bootstrap 95% interval (points):\n\n" + evalkit.markdown_table(
            ["kind", "EM diff", "ES diff", "EM intervals apart"], diff_rows)
    return text


def _signed(d: dict) -> str:
    return f"{d['mean'] * 100:+.1f} [{d['lo'] * 100:+.1f}, {d['hi'] * 100:+.1f}]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=60, help="tasks per kind (default 60)")
    ap.add_argument("--model", default=None, help="registered name, .gguf file or HF folder (default: the default model)")
    ap.add_argument("--quant", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", default=",".join(CONFIGS),
                    help=f"context configurations to run, comma-separated from {','.join(CONFIGS)}")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"task kinds, from {','.join(KINDS)}")
    ap.add_argument("--packages", default=",".join(PACKAGES),
                    help="pinned packages to add to the standard library, or 'none'")
    ap.add_argument("--budget", type=int, default=None, help="prompt token budget (default: the server's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON-lines results file (default under artifacts/eval)")
    ap.add_argument("--cache", type=Path, default=evalkit.ARTIFACTS / "corpus", help="where wheels are kept")
    ap.add_argument("--fresh", action="store_true", help="ignore earlier results in --out instead of resuming")
    args = ap.parse_args(argv)
    if args.model is None:
        from keystroke.engine import DEFAULT_MODEL
        args.model = DEFAULT_MODEL
    args.configs = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    args.kind_list = tuple(s.strip() for s in args.kinds.split(",") if s.strip())
    bad = [c for c in args.configs if c not in CONFIGS] + [k for k in args.kind_list if k not in KINDS]
    if bad or not args.configs or not args.kind_list:
        ap.error(f"unknown or empty --sources/--kinds: {', '.join(bad) or '(empty)'}")
    if args.tasks < 1:
        ap.error("--tasks must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from keystroke.server.config import Config
    budget = args.budget or Config().context_budget

    files = stdlib_files()
    packages = [p for p in args.packages.split(",") if p and p != "none"]
    if packages:
        site = fetch_packages(packages, args.cache)
        for name in packages:
            files += package_files(site, name)
    tasks = sample_tasks(files, args.kind_list, args.tasks, args.seed)
    model_tag = re.sub(r"[^\w.-]+", "_", Path(args.model).name)
    version = evalkit.code_version()  # read once: the engine that this process imports
    out = args.out or evalkit.ARTIFACTS / f"completion-{model_tag}-seed{args.seed}-b{budget}-{version}.jsonl"
    if args.fresh and out.exists():
        out.unlink()
    done = {(r["task"], r["config"]): r for r in evalkit.read_jsonl(out)}
    print(f"{len(tasks)} tasks from {len(files)} files; configurations {', '.join(args.configs)}; "
          f"results in {out} ({len(done)} already there)", file=sys.stderr)

    engine = evalkit.load_engine(args.model, args.quant, args.threads)
    records = []
    t_start = time.perf_counter()
    for i, task in enumerate(tasks, 1):
        for config_name in args.configs:
            rec = done.get((task.id, config_name))
            if rec is None:
                rec = run_task(engine, task, config_name, budget)
                evalkit.append_jsonl(out, rec)
            records.append(rec)
        engine.close_document(task.path.as_uri())
        last = {r["config"]: r["em"] for r in records[-len(args.configs):]}
        print(f"[{i}/{len(tasks)} {time.perf_counter() - t_start:.0f}s] {task.id} em={last}", file=sys.stderr)

    summary = summarize(records, args.kind_list, args.configs, args.seed)
    table = render(summary, args.kind_list, args.configs)
    info = engine.info()
    meta = {"model": args.model, "quant": info.get("quant"), "code_version": version, "seed": args.seed,
            "tasks_per_kind": args.tasks,
            "budget_tokens": budget, "configs": args.configs, "kinds": args.kind_list,
            "packages": {p: PACKAGES[p] for p in packages}, "python": sys.version.split()[0],
            "max_tokens": MAX_TOKENS, "wall_s": round(time.perf_counter() - t_start, 1)}
    evalkit.write_json(out.with_suffix(".summary.json"), {"meta": meta, "summary": summary, "table": table})
    print(f"model {args.model} ({info.get('quant')}), seed {args.seed}, prompt budget {budget} tokens; "
          f"mean [95% bootstrap interval], percent\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
