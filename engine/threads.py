"""How torch's threads wait, and how many a request gets on a machine others also use.

Measured on the 2-core VM, Qwen2.5-Coder 0.5B int8 through `Engine.complete`
(tok/s, decode / 512-token prefill, three fresh processes each):

| OpenMP wait                      | quiet machine | one core kept busy by another process |
|----------------------------------|---------------|---------------------------------------|
| passive (sleep at once), 2 threads | 14 / 190    | 15 / 155                              |
| bounded spin, 2 threads          | 21 / 270      | 7 / 90                                |
| bounded spin, 1 thread           | 16 / 160      | 12 / 130 (no thread waits on another) |

A decode step runs about two hundred small parallel regions; waking a
sleeping thread for each costs about 0.4 ms here (a virtual machine's
wake-ups are slow), so passive waiting gives away a third of decode. Spinning
threads, though, collapse when another process holds a core: each waits out
its spin for a partner that is not running. So the threads spin a bounded
time (libgomp's GOMP_SPINCOUNT, about 5 ms, then sleep: about 7 ms of CPU
after each request, where an unbounded spin holds a core while the server
idles), and a request uses one thread fewer for each core that other
processes kept busy since the last request.
"""
from __future__ import annotations

import os
import time

SPIN_COUNT = "300000"   # libgomp's own default when no policy is named; explicit, since we rely on it


def configure_openmp() -> None:
    """Bounded spinning, unless the user chose a policy. Effective only before torch is first imported."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def spinning() -> bool:
    """Whether torch's threads spin while waiting (so a busy machine calls for fewer of them)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE"


def _cpu_sample() -> tuple[float, float, float, int] | None:
    """(wall s, all CPUs' busy s, this process's CPU s, CPUs) from /proc; None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    fields = [int(v) for v in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait are time the CPUs were not ours to take
    busy = sum(fields[:8]) - fields[3] - fields[4]
    cpus = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return time.monotonic(), busy / tick, (int(own[11]) + int(own[12])) / tick, max(cpus, 1)


class ThreadBudget:
    """Threads for the next model run: `most`, less the cores other processes kept busy since the last pick.

    The window is the time since the previous pick (at least `min_window_s`, so
    that back-to-back requests keep the last choice rather than judge 10 ms of
    clock ticks). Without /proc, or with passive waiting, it is always `most`.
    """

    def __init__(self, most: int, min_window_s: float = 0.25):
        self.most = max(1, most)
        self.min_window_s = min_window_s
        self.adaptive = self.most > 1 and spinning()
        self._last = _cpu_sample() if self.adaptive else None
        self.current = self.most
        self.others_busy = 0.0   # cores other processes used in the last window (for the status)

    def pick(self) -> int:
        if not self.adaptive or self._last is None:
            return self.most
        now = _cpu_sample()
        if now is None:
            return self.most
        wall = now[0] - self._last[0]
        if wall < self.min_window_s:
            return self.current
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        self.others_busy = round(others, 2)
        free = now[3] - others
        self.current = max(1, min(self.most, int(free + 0.5)))
        return self.current
