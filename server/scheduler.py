"""Runs the engine off the event loop, newest request first.

The model is not thread-safe, so one worker thread does all engine work
(loading included). Per key (a document and a feature) only the newest
request matters: a new one supersedes the older, which then answers empty
at once, and if the worker is already decoding it, its `is_cancelled` turns
true so the decode loop stops within one token. Neovim 0.12 never cancels
its automatic requests, so this is what keeps the editor from waiting on
dead ones. A `$/cancelRequest` cancels the handler's asyncio task; the
CancelledError reaches `run`, which sets the same flag.

Speculative work (`speculate`: the suggestion after an accept, see
server/speculation.py) runs at the lowest priority: the worker takes it only
when no user request is queued, and every user request cancels it when it is
queued, so a user's request waits at most for the decode step (or the
prefill layer) the speculation is in. `preempt_waits_ms` records how long such requests waited.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, TypeVar

log = logging.getLogger("keystroke.scheduler")

T = TypeVar("T")


class Ticket:
    """One request's right to run. Cancelled when superseded or cancelled."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self._cancelled = threading.Event()
        self._async_cancelled = asyncio.Event()   # for the awaiting coroutine
        self.created = time.perf_counter()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        """Call on the event loop thread."""
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()
            self._async_cancelled.set()

    def is_cancelled(self) -> bool:
        """Safe from any thread; passed to the engine as CompletionRequest.is_cancelled."""
        return self._cancelled.is_set()


@dataclass
class Outcome:
    """What happened to one request: `value` when it ran, else why not."""

    value: Any = None
    status: str = "done"     # done | superseded | cancelled | error


USER, SPECULATIVE, STOP = 0, 1, 2     # queue priorities: lower runs first


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: "asyncio.Future[Any] | None"
    loop: "asyncio.AbstractEventLoop | None"
    ticket: Ticket | None = None
    priority: int = USER
    queued: float = field(default_factory=time.perf_counter)
    behind_speculation: bool = False    # a speculative job was running when this one was queued


class Scheduler:
    """One worker thread for the engine, plus per-key supersession."""

    def __init__(self, name: str = "keystroke-engine") -> None:
        self._jobs: "queue.PriorityQueue[tuple[int, int, _Job | None]]" = queue.PriorityQueue()
        self._order = itertools.count()
        self._latest: dict[Hashable, Ticket] = {}
        self._speculative: set[Ticket] = set()
        self._running: _Job | None = None
        self.preempt_waits_ms: deque[float] = deque(maxlen=512)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def _put(self, job: "_Job | None", priority: int = USER) -> None:
        if job is not None and priority == USER:
            running = self._running
            job.behind_speculation = running is not None and running.priority == SPECULATIVE
            self.preempt()
        self._jobs.put((priority, next(self._order), job))

    # -- worker side ---------------------------------------------------
    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            if job.behind_speculation:
                self.preempt_waits_ms.append((time.perf_counter() - job.queued) * 1000)
            if job.ticket is not None and job.ticket.is_cancelled():
                self._resolve(job, None, None, skipped=True)
                continue
            self._running = job
            try:
                value, exc = job.fn(), None
            except BaseException as e:  # noqa: BLE001 - reported to the awaiting side
                value, exc = None, e
            finally:
                self._running = None
            self._resolve(job, (value,), exc)  # a 1-tuple: None means skipped

    @staticmethod
    def _resolve(job: _Job, value: Any, exc: BaseException | None, skipped: bool = False) -> None:
        if job.future is None or job.loop is None:
            if exc is not None:
                log.error("background engine task failed: %s", exc, exc_info=exc)
            return

        def settle() -> None:
            if job.future.done():
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(None if skipped else value)
        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # -- event-loop side -----------------------------------------------
    def submit_background(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on the worker, fire and forget (document closed, cache cleared)."""
        if not self._closed:
            self._put(_Job(fn, None, None))

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker and await its value (errors propagate)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._put(_Job(fn, fut, loop))
        (value,) = await fut
        return value

    def speculate(self, make_work: Callable[[Ticket], Callable[[], Any]]) -> tuple[Ticket, "asyncio.Future[Any]"]:
        """Queue speculative work at the lowest priority; any user request queued later cancels it.

        The future resolves to a 1-tuple of the value, or None when the work was
        cancelled before it started; an exception when it failed."""
        loop = asyncio.get_running_loop()
        ticket = Ticket(("speculation",))
        fut: asyncio.Future[Any] = loop.create_future()
        fut.add_done_callback(lambda _: self._speculative.discard(ticket))
        if self._closed:
            ticket.cancel("closed")
            fut.set_result(None)
            return ticket, fut
        self._speculative.add(ticket)
        self._put(_Job(make_work(ticket), fut, loop, ticket, priority=SPECULATIVE), SPECULATIVE)
        return ticket, fut

    def preempt(self) -> None:
        """Cancel all speculative work (queued: skipped; running: stops within one token)."""
        for ticket in list(self._speculative):
            ticket.cancel("preempted")
        self._speculative.clear()

    async def wait_for(self, key: Hashable, fut: "asyncio.Future[Any]", *, keep: Ticket | None = None) -> Outcome:
        """Await `fut` (speculative work, or a generation in flight) as the request for `key`: a newer
        request for `key` supersedes it. The request it replaces is superseded unless its ticket is
        `keep` (the generation being waited on)."""
        ticket = Ticket(key)
        previous = self._latest.get(key)
        if previous is not None and previous is not keep:
            previous.cancel("superseded")
        self._latest[key] = ticket
        waiter = asyncio.ensure_future(ticket._async_cancelled.wait())
        try:
            await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            ticket.cancel("cancelled")
            raise
        finally:
            waiter.cancel()
            if self._latest.get(key) is ticket:
                del self._latest[key]
        if not fut.done() or ticket.is_cancelled():
            return Outcome(status=ticket.reason or "superseded")
        if fut.cancelled() or fut.exception() is not None or fut.result() is None:
            return Outcome(status="cancelled")
        (value,) = fut.result()
        return Outcome(value=value)

    async def run(
        self,
        key: Hashable,
        make_work: Callable[[Ticket], Callable[[], Any]],
        *,
        debounce_ms: float = 0.0,
    ) -> Outcome:
        """Run one superseding request for `key`.

        `make_work(ticket)` returns the function the worker calls; it should
        hand `ticket.is_cancelled` to the engine. Returns at once (status
        "superseded") when a newer request for `key` arrives, whichever
        stage this one is in.
        """
        ticket = Ticket(key)
        previous = self._latest.get(key)
        if previous is not None:
            previous.cancel("superseded")
        self._latest[key] = ticket
        try:
            if debounce_ms > 0:
                try:
                    await asyncio.wait_for(ticket._async_cancelled.wait(), debounce_ms / 1000)
                except asyncio.TimeoutError:
                    pass
            if ticket.is_cancelled():
                return Outcome(status=ticket.reason or "superseded")
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[Any] = loop.create_future()
            self._put(_Job(make_work(ticket), fut, loop, ticket))
            waiter = asyncio.ensure_future(ticket._async_cancelled.wait())
            try:
                await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not fut.done():
                # Superseded while queued or running; the worker skips it or
                # the engine sees is_cancelled. Nobody reads its result.
                fut.add_done_callback(_swallow)
                return Outcome(status=ticket.reason or "superseded")
            if fut.exception() is not None:
                e = fut.exception()
                log.error("engine request failed: %s", e, exc_info=e)
                return Outcome(status="error")
            done = fut.result()
            if done is None:
                return Outcome(status=ticket.reason or "superseded")
            (value,) = done
            if ticket.is_cancelled():
                return Outcome(value=value, status=ticket.reason or "superseded")
            return Outcome(value=value)
        except asyncio.CancelledError:
            ticket.cancel("cancelled")
            raise
        finally:
            if self._latest.get(key) is ticket:
                del self._latest[key]

    def supersede(self, key: Hashable) -> None:
        """Cancel the running or waiting request for `key`, if any: a newer answer came from elsewhere."""
        ticket = self._latest.get(key)
        if ticket is not None:
            ticket.cancel("superseded")

    def cancel_all(self) -> None:
        self.preempt()
        for ticket in list(self._latest.values()):
            ticket.cancel("cancelled")

    def close(self, wait: float = 0.0) -> bool:
        """Stop taking work; the worker ends after the jobs already queued
        (cancelled ones are skipped, a running decode stops within one token).

        With `wait`, join the worker for up to that many seconds: a process
        must not exit while the worker is inside torch (its thread pool
        aborts the interpreter at exit). Call it with a wait only once the
        event loop is done. True when the worker has stopped."""
        self.cancel_all()
        if not self._closed:
            self._closed = True
            self._jobs.put((STOP, next(self._order), None))
        if wait > 0:
            self._thread.join(wait)
        return not self._thread.is_alive()


def _swallow(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()
