"""The "accept, then keep typing" replay (scripts/bench_accept.py) through a real `keystroke serve`.

The tiny random model stands in for the default model to keep this fast:
its suggestions mean nothing, but the trace, the accepts and the server's
speculation are the real ones. The README's numbers come from the script
with the default model.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_accept  # noqa: E402


def test_the_trace_is_real_code_written_back_line_by_line() -> None:
    head, lines, tail = bench_accept.source_lines(6)
    assert len(lines) == 6 and lines[0].strip() == bench_accept.FUNCTION
    assert all(line.strip() and '"""' not in line for line in lines)
    original = bench_accept.FILE.read_text()
    assert original.startswith(head) and original.endswith(tail[1:])


def test_after_an_accept_the_speculating_server_answers_from_its_guess(tiny_llama_dir: Path) -> None:
    spec = asyncio.run(bench_accept.replay(str(tiny_llama_dir), 1, 4, 300, speculate=True))
    plain = asyncio.run(bench_accept.replay(str(tiny_llama_dir), 1, 4, 300, speculate=False))
    assert spec["after_accept"], "the tiny model suggested nothing to accept: the test would prove nothing"
    answered = sum(r["from_guess"] or r["joined"] for r in spec["after_accept"])
    assert answered >= 1, spec["after_accept"]
    assert spec["status"]["speculation"]["started"] >= len(spec["after_accept"])
    assert plain["status"]["speculation"]["started"] == 0
    assert not any(r["from_guess"] or r["joined"] for r in plain["after_accept"])
    # The accepts reached the server's acceptance counts.
    assert spec["status"]["acceptance"]["total"]["accepted"] >= 1, spec["status"]["acceptance"]["total"]
