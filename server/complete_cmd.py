"""`keystroke complete FILE:LINE:COL`: one completion from the command line, with timings."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from keystroke.engine.errors import KeystrokeError, PositionError


def parse_target(target: str) -> tuple[Path, int, int]:
    """Split FILE:LINE:COL (1-based); the file name itself may contain colons."""
    parts = target.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise KeystrokeError(f"cannot read {target!r} as FILE:LINE:COL", "e.g. keystroke complete app.py:12:5")
    return Path(parts[0]), int(parts[1]), int(parts[2])


def offset_of(text: str, line: int, col: int) -> int:
    """The str index of 1-based (line, col); col counts characters, and may sit just past the line's end."""
    lines = text.split("\n")
    if line < 1 or line > len(lines):
        raise PositionError(f"line {line} is outside the file (it has {len(lines)} lines)")
    if col < 1 or col > len(lines[line - 1]) + 1:
        raise PositionError(f"column {col} is outside line {line} (it has {len(lines[line - 1])} characters)")
    return sum(len(ln) + 1 for ln in lines[: line - 1]) + col - 1


def read_source(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeystrokeError(f"no such file: {path}") from None
    except OSError as e:
        raise KeystrokeError(f"cannot read {path}: {e.strerror}") from None
    if b"\0" in data:
        raise KeystrokeError(f"{path} looks binary (it has NUL bytes); keystroke completes text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KeystrokeError(f"{path} is not valid UTF-8 (byte {e.start})") from None


def run_complete(args: argparse.Namespace) -> int:
    """One request through the server's pipeline (context from the file's folder, mode, post-processing)."""
    path, line, col = parse_target(args.target)
    text = read_source(path)
    offset = offset_of(text, line, col)
    from keystroke.engine import EngineSettings, make_backend
    from keystroke.server import pipeline
    from keystroke.server.config import Config
    from keystroke.server.context import DocumentView
    from keystroke.server.context.parse import language_of

    t0 = time.perf_counter()
    engine = make_backend(EngineSettings(model=args.model, quant=args.quant, threads=args.threads, persist=False))
    load_s = time.perf_counter() - t0
    source = path.resolve()
    doc = DocumentView(source.as_uri(), text, language_of("", source) or "", source)
    config = Config(max_tokens=args.max_tokens, temperature=args.temperature)
    plan = pipeline.plan(doc, offset, [], config, n=args.n, count_tokens=engine.count_tokens,
                         workspace_root=source.parent, mode=None if args.mode == "auto" else args.mode)
    sampling = dataclasses.replace(plan.request.sampling, seed=args.seed)
    result = engine.complete(dataclasses.replace(plan.request, sampling=sampling, use_cache=False))
    suggestions = pipeline.finish(result, plan)
    for i, suggestion in enumerate(suggestions):
        if len(suggestions) > 1:
            print(f"--- candidate {i + 1}")
        print(suggestion)
    if not suggestions:
        print("(no suggestion)")
    t = result.timings
    tps = t.decode_tokens / (t.decode_ms / 1000) if t.decode_ms > 0 else 0.0
    info = engine.info()
    print(f"[{info.get('model')} {info.get('quant')}, {plan.mode} mode] load {load_s:.1f}s | prefill {t.computed_tokens} tok "
          f"{t.prefill_ms:.0f} ms | decode {t.decode_tokens} tok in {t.decode_passes} passes {t.decode_ms:.0f} ms "
          f"({tps:.1f} tok/s) | "
          f"stop: {result.candidates[0].stop_reason if result.candidates else '-'}")
    return 0
