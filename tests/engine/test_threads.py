"""The thread budget: fewer threads while another process keeps a core busy, all of them when it stops.

The busy process is real (a Python loop in a subprocess), and the budget reads the real /proc.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from keystroke.engine.threads import SPIN_COUNT, ThreadBudget, configure_openmp


def cpus() -> int:
    with open("/proc/stat") as f:
        return sum(1 for line in f if line.startswith("cpu") and line[3].isdigit())


def expected(budget: ThreadBudget, n: int) -> int:
    return max(1, min(budget.most, int(n - budget.others_busy + 0.5)))


def test_a_busy_core_elsewhere_takes_a_thread_and_gives_it_back_when_it_stops() -> None:
    """Judged against what else the machine was doing (CI may run something beside the tests)."""
    n = cpus()
    budget = ThreadBudget(n, min_window_s=0.2)
    assert budget.adaptive == (n > 1)
    budget.pick()
    time.sleep(0.6)
    quiet = budget.pick()
    before = budget.others_busy
    assert quiet == expected(budget, n)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        budget.pick()               # the window starts with the busy process running
        time.sleep(0.8)
        busy = budget.pick()
        during = budget.others_busy
    finally:
        hog.kill()
        hog.wait()
    assert busy == expected(budget, n) and busy < n
    time.sleep(0.3)
    budget.pick()                   # a window that still holds the end of the loop
    time.sleep(0.8)
    after = budget.pick()
    assert after == expected(budget, n)
    if before < 0.3:                # nothing else running: all threads, then one fewer, then all again
        assert during >= 0.6, during    # the loop kept about one core busy
        assert (quiet, busy, after) == (n, n - 1, n)


def test_back_to_back_requests_keep_the_last_choice() -> None:
    budget = ThreadBudget(4, min_window_s=60)
    budget.current = 3
    assert budget.pick() == 3       # a window under a minute: not judged


def test_passive_waiting_or_one_thread_is_never_adapted(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert not ThreadBudget(8).adaptive and ThreadBudget(8).pick() == 8
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert not ThreadBudget(1).adaptive and ThreadBudget(1).pick() == 1


def test_the_spin_is_bounded_unless_the_user_chose_a_policy(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    configure_openmp()
    assert os.environ["GOMP_SPINCOUNT"] == SPIN_COUNT
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_openmp()
    assert "GOMP_SPINCOUNT" not in os.environ
