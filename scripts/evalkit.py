"""Shared pieces of the evaluation scripts: scores, bootstrap intervals, tables, sandboxed runs.

Nothing here knows a model; the scripts load one with `keystroke.engine.Engine`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "eval"


# --------------------------------------------------------------------------- scores

def normalize_lines(text: str) -> str:
    """`text` with trailing whitespace dropped from every line and blank lines dropped at both ends."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def edit_similarity(prediction: str, target: str) -> float:
    """difflib's ratio: 2 * matched characters / total characters, 1.0 for two empty strings."""
    if not prediction and not target:
        return 1.0
    return difflib.SequenceMatcher(None, prediction, target, autojunk=False).ratio()


def first_code_line(text: str) -> str:
    """The first non-blank line of `text`, stripped."""
    return next((line.strip() for line in text.split("\n") if line.strip()), "")


# --------------------------------------------------------------------------- statistics

def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    if not values:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def paired_diff_ci(a: Sequence[float], b: Sequence[float], **kw) -> tuple[float, float, float]:
    """Mean of a - b over paired tasks, with its bootstrap interval (resampling tasks, not runs)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    lo, hi = bootstrap_ci(diffs, **kw)
    return mean(diffs), lo, hi


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- running generated code

def _limit_child() -> None:  # runs in the child before exec: no core files, bounded memory
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    os.setsid()


def run_program(source: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Run `source` with a fresh Python in a throwaway folder; (exit status 0, why not)."""
    with tempfile.TemporaryDirectory(prefix="keystroke-eval-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(source, encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout_s, preexec_fn=_limit_child, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, "timeout"
        if proc.returncode == 0:
            return True, ""
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return False, tail[:200]


# --------------------------------------------------------------------------- results on disk

def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-write leaves a torn last line
            pass
    return out


def append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def code_version() -> str:
    """The last commit that touched engine/ or server/, plus a hash of their uncommitted edits if any.

    Results are kept per code version: a run never resumes from completions another engine made.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout

    try:
        head = git("log", "-1", "--format=%h", "--", "engine", "server").strip()
        edits = git("diff", "HEAD", "--", "engine", "server") + git("ls-files", "--others", "--exclude-standard",
                                                                   "--", "engine", "server")
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return (head or "nogit") + (f"+{hashlib.sha1(edits.encode()).hexdigest()[:8]}" if edits else "")


ENGINES = ("keystroke", "llamacpp-infill")


def load_engine(model: str, quant: str = "auto", threads: int | None = None, engine: str = "keystroke"):
    """A backend for `model` (a registered name, .gguf file or Hugging Face folder), no disk cache.

    "keystroke" is the local engine. "llamacpp-infill" is the reference: today's
    llama.cpp server (the prebuilt xllamacpp wheel) on the same GGUF, asked
    through its own `/infill` (llama.cpp lays out the FIM prompt) by keystroke's
    remote backend, so stops and post-processing are the same as keystroke's.
    """
    from keystroke.engine import Engine, EngineSettings, make_backend, registry
    if engine == "keystroke":
        return Engine.load(model, quant=quant, threads=threads, persist=False)
    if engine != "llamacpp-infill":
        raise SystemExit(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import llamacpp_server
    import torch
    server, url = llamacpp_server.start(str(registry.resolve(model)), threads=threads or torch.get_num_threads(),
                                        ctx=8192)
    backend = make_backend(EngineSettings(model=model, engine={"backend": "remote", "url": url, "fim": "infill"}))
    backend.llamacpp_server = server      # keeps the server alive as long as the backend
    return backend


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
