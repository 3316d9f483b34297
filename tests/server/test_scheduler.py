"""Scheduler: one worker, newest request per key wins, cancellation reaches is_cancelled."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import pytest_asyncio

from keystroke.server.scheduler import Scheduler

pytestmark = pytest.mark.asyncio


class Decoder:
    """A decode loop like the engine's: one 'token' per step, checking is_cancelled before each."""

    def __init__(self, steps: int = 1000, step_s: float = 0.005) -> None:
        self.steps, self.step_s = steps, step_s
        self.tokens_after_cancel: list[int] = []
        self.threads: set[str] = set()
        self.started = threading.Event()
        self.finished: list[str] = []

    def work(self, name: str):
        def make(ticket):
            def run():
                self.threads.add(threading.current_thread().name)
                self.started.set()
                done = 0
                cancelled_at = None
                for _ in range(self.steps):
                    if ticket.is_cancelled():
                        cancelled_at = done
                        break
                    time.sleep(self.step_s)
                    done += 1
                if cancelled_at is not None:
                    # how many tokens ran after cancel() was called
                    self.tokens_after_cancel.append(done)
                self.finished.append(name)
                return name, done
            return run
        return make


@pytest_asyncio.fixture
async def scheduler():
    s = Scheduler()
    yield s
    s.close()


async def test_newest_request_supersedes_running_one(scheduler):
    dec = Decoder(steps=2000, step_s=0.002)
    first = asyncio.ensure_future(scheduler.run(("a", "inline"), dec.work("first")))
    await asyncio.get_running_loop().run_in_executor(None, dec.started.wait, 5)
    t0 = time.perf_counter()
    second = asyncio.ensure_future(scheduler.run(("a", "inline"), Decoder(steps=3).work("second")))
    out1 = await first
    assert out1.status == "superseded"
    assert time.perf_counter() - t0 < 0.5          # answered at once, not after 2000 steps
    out2 = await second
    assert out2.status == "done" and out2.value[0] == "second"
    # the superseded decode stopped (it did not run its 2000 steps)
    for _ in range(100):
        if "first" in dec.finished:
            break
        await asyncio.sleep(0.01)
    assert dec.finished == ["first"] and dec.tokens_after_cancel and dec.tokens_after_cancel[0] < 2000


async def test_other_keys_do_not_supersede(scheduler):
    a = asyncio.ensure_future(scheduler.run(("a", "inline"), Decoder(steps=5).work("a")))
    b = asyncio.ensure_future(scheduler.run(("b", "inline"), Decoder(steps=5).work("b")))
    ra, rb = await asyncio.gather(a, b)
    assert (ra.status, rb.status) == ("done", "done")


async def test_superseded_while_queued_never_runs(scheduler):
    busy = Decoder(steps=50, step_s=0.005)
    blocker = asyncio.ensure_future(scheduler.run(("other", "x"), busy.work("blocker")))
    await asyncio.get_running_loop().run_in_executor(None, busy.started.wait, 5)
    queued = Decoder(steps=5)
    old = asyncio.ensure_future(scheduler.run(("a", "x"), queued.work("old")))
    await asyncio.sleep(0.01)
    new = asyncio.ensure_future(scheduler.run(("a", "x"), queued.work("new")))
    assert (await old).status == "superseded"
    assert (await new).status == "done"
    await blocker
    assert queued.finished == ["new"]


async def test_task_cancellation_reaches_is_cancelled(scheduler):
    """What $/cancelRequest does: pygls cancels the handler's task."""
    dec = Decoder(steps=5000, step_s=0.002)
    task = asyncio.ensure_future(scheduler.run(("a", "x"), dec.work("c")))
    await asyncio.get_running_loop().run_in_executor(None, dec.started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if dec.finished:
            break
        await asyncio.sleep(0.005)
    assert dec.finished == ["c"]
    assert dec.tokens_after_cancel[0] < 5000
    # the worker is free again
    assert (await scheduler.run(("a", "x"), Decoder(steps=1).work("next"))).status == "done"


async def test_cancellation_stops_within_one_token(scheduler):
    step = 0.05
    dec = Decoder(steps=1000, step_s=step)
    task = asyncio.ensure_future(scheduler.run(("a", "x"), dec.work("c")))
    await asyncio.get_running_loop().run_in_executor(None, dec.started.wait, 5)
    await asyncio.sleep(step * 3.5)
    t0 = time.perf_counter()
    task.cancel()
    while not dec.finished:
        await asyncio.sleep(0.002)
    assert time.perf_counter() - t0 < step * 2   # at most the token in flight


async def test_debounce_superseded_request_never_reaches_worker(scheduler):
    dec = Decoder(steps=1)
    first = asyncio.ensure_future(scheduler.run(("a", "x"), dec.work("first"), debounce_ms=200))
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    second = asyncio.ensure_future(scheduler.run(("a", "x"), dec.work("second"), debounce_ms=50))
    assert (await first).status == "superseded"
    assert time.perf_counter() - t0 < 0.1
    assert (await second).status == "done"
    assert dec.finished == ["second"]


async def test_debounce_delays_the_work(scheduler):
    dec = Decoder(steps=1, step_s=0)
    t0 = time.perf_counter()
    out = await scheduler.run(("a", "x"), dec.work("d"), debounce_ms=150)
    assert out.status == "done" and time.perf_counter() - t0 >= 0.14


async def test_one_worker_thread_for_everything(scheduler):
    dec = Decoder(steps=1, step_s=0)
    await asyncio.gather(*[scheduler.run((str(i), "x"), dec.work(str(i))) for i in range(5)])
    names = {await scheduler.call(lambda: threading.current_thread().name)}
    assert len(dec.threads) == 1 and dec.threads == names
    assert threading.current_thread().name not in dec.threads


async def test_worker_errors_become_error_outcomes(scheduler, caplog):
    def make(ticket):
        def boom():
            raise RuntimeError("model exploded")
        return boom
    out = await scheduler.run(("a", "x"), make)
    assert out.status == "error" and out.value is None
    assert "model exploded" in caplog.text   # logged with its traceback, for the bug report
    with pytest.raises(ZeroDivisionError):
        await scheduler.call(lambda: 1 / 0)
    assert (await scheduler.run(("a", "x"), Decoder(steps=1).work("ok"))).status == "done"


# -- speculation: the lowest priority, preempted by any user request -------

async def test_speculation_waits_for_queued_user_requests(scheduler):
    busy = Decoder(steps=20, step_s=0.005)
    blocker = asyncio.ensure_future(scheduler.run(("a", "x"), busy.work("blocker")))
    await asyncio.get_running_loop().run_in_executor(None, busy.started.wait, 5)
    order: list[str] = []
    spec = Decoder(steps=2, step_s=0)
    _, fut = scheduler.speculate(lambda t: (lambda: order.append("speculation") or spec.work("s")(t)()))
    user = asyncio.ensure_future(scheduler.run(("b", "x"), lambda t: (lambda: order.append("user"))))
    await blocker
    await user
    # the user request queued after the speculation cancelled it: it never ran
    assert await fut is None and order == ["user"]


async def test_speculation_runs_when_idle_and_can_be_awaited(scheduler):
    _, fut = scheduler.speculate(Decoder(steps=3, step_s=0).work("s"))
    out = await scheduler.wait_for(("a", "x"), fut)
    assert out.status == "done" and out.value == ("s", 3)


async def test_user_request_waits_at_most_one_step_behind_speculation(scheduler):
    step = 0.04
    spec = Decoder(steps=1000, step_s=step)
    ticket, fut = scheduler.speculate(spec.work("s"))
    await asyncio.get_running_loop().run_in_executor(None, spec.started.wait, 5)
    await asyncio.sleep(step * 2.5)
    t0 = time.perf_counter()
    out = await scheduler.run(("a", "x"), Decoder(steps=1, step_s=0).work("user"))
    waited = time.perf_counter() - t0
    assert out.status == "done" and ticket.is_cancelled()
    assert waited < step * 1.5 + 0.02, f"waited {waited * 1000:.0f} ms behind a {step * 1000:.0f} ms step"
    assert len(scheduler.preempt_waits_ms) == 1 and scheduler.preempt_waits_ms[0] < (step * 1.5 + 0.02) * 1000
    assert (await fut) == (("s", spec.tokens_after_cancel[0]),)


async def test_a_newer_request_supersedes_one_waiting_on_speculation(scheduler):
    spec = Decoder(steps=200, step_s=0.005)
    _, fut = scheduler.speculate(spec.work("s"))
    waiting = asyncio.ensure_future(scheduler.wait_for(("a", "x"), fut))
    await asyncio.sleep(0.02)
    newer = asyncio.ensure_future(scheduler.run(("a", "x"), Decoder(steps=1).work("newer")))
    assert (await waiting).status == "superseded"
    assert (await newer).status == "done"

