"""The README's first command on a fresh install: the default model completes `is_prime`, and it works.

`keystroke complete tests/data/sample.py:5:5 --mode block` is run as a user
runs it (a subprocess, the default model found through the registry). The
code it writes is judged by running it against a sieve, never by its text.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keystroke.engine import registry

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "sample.py"


def primes_below(n: int) -> set[int]:
    sieve = [True] * n
    sieve[:2] = [False, False]
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = [False] * len(sieve[i * i::i])
    return {i for i, p in enumerate(sieve) if p}


@pytest.mark.real_model
def test_the_default_model_writes_an_is_prime_that_works(real_model):
    done = subprocess.run([sys.executable, "-m", "keystroke.server.cli", "complete", f"{SAMPLE}:5:5", "--mode", "block"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr
    *lines, stats = done.stdout.rstrip("\n").split("\n")
    assert stats.startswith(f"[{registry.DEFAULT_MODEL} ") and "block mode" in stats, stats
    completion = "\n".join(lines)
    text = SAMPLE.read_text()
    offset = sum(len(line) + 1 for line in text.split("\n")[:4]) + 4     # line 5, column 5
    source = text[:offset] + completion + text[offset:]
    namespace: dict = {}
    exec(compile(source, "sample.py", "exec"), namespace)                  # it must at least be valid Python
    is_prime = namespace["is_prime"]
    primes = primes_below(400)
    wrong = [n for n in range(-3, 400) if bool(is_prime(n)) != (n in primes)]
    assert not wrong, f"is_prime is wrong for {wrong[:10]}; the model wrote:\n{completion}"
    assert namespace["fibonacci"](6) == [0, 1, 1, 2, 3, 5]                 # the rest of the file is intact
