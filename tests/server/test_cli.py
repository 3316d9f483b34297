"""`keystroke complete` and `keystroke models`, run as a user runs them (a subprocess), on the tiny model
(conftest's `model`)."""
from __future__ import annotations

import subprocess
import sys

import pytest



def keystroke(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keystroke.server.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_complete_goes_through_the_servers_pipeline(tmp_path, model):
    source = tmp_path / "calc.py"
    source.write_text("def add(a, b):\n    return a\n\n\nprint(add(1, 2))\n")
    done = keystroke("complete", f"{source}:2:13", "--model", model, "--quant", "fp32", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert "line mode" in last and "prefill" in last and "stop:" in last   # the server's own mode choice


@pytest.mark.parametrize("target, message", [("nofile.py:1:1", "no such file"), ("x.py", "FILE:LINE:COL"),
                                             ("{src}:9:1", "line 9 is outside"), ("{src}:1:99", "column 99")])
def test_complete_explains_a_bad_target(tmp_path, model, target, message):
    source = tmp_path / "one.py"
    source.write_text("x = 1\n")
    done = keystroke("complete", target.format(src=source), "--model", model)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_models_lists_every_registered_model_and_the_default(tmp_path):
    import os
    from keystroke.engine import registry
    done = keystroke("models", env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    assert done.returncode == 0
    for spec in registry.MODELS.values():
        assert spec.name in done.stdout
    assert f"{registry.DEFAULT_MODEL} (default)" in done.stdout
    lines = {line.split("\t")[0].replace(" (default)", ""): line for line in done.stdout.splitlines() if "\t" in line}
    # an empty cache: the default says it needs no pull (its parts are installed), the 1.5B says how to pull it
    assert "assembled on first use" in lines[registry.DEFAULT_MODEL]
    assert "keystroke models pull qwen2.5-coder-1.5b" in lines["qwen2.5-coder-1.5b"]
