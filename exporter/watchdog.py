"""A bound on each source's read, and on every other host read of the tick (cgroups, procfs):
a read that does not return in time costs the tick no more.

A sysfs attribute served by a hung driver, a FIFO put where `energy_uj` should be, or an NVML
call stuck in the kernel blocks its thread for as long as it likes. Each source therefore reads
in a daemon thread of its own: the tick waits for the reading at most `timeout_seconds`, then
marks the source down and goes on with the others. While that read is still blocked the source
stays down and is not asked again (its state belongs to the blocked thread). When the read
returns at last, its reading (energy since the previous one, as every source reports it) is
used at the next tick, so no joule is lost or counted twice. The threads are daemons: a read
that never returns never holds up the exit either.
"""

from __future__ import annotations

import _thread
import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

A = TypeVar("A")
T = TypeVar("T")

MIN_TIMEOUT_SECONDS = 0.5
MAX_TIMEOUT_SECONDS = 10.0


def read_timeout_for(interval_seconds: float) -> float:
    """Half the tick interval, at least 0.5 s (a loaded 2-core host can take that long to
    schedule a read) and at most 10 s: a hung source is down from the tick it hangs in, the
    tick still fits its interval at the default 5 s, and /healthz never fails for it."""
    return min(max(interval_seconds / 2.0, MIN_TIMEOUT_SECONDS), MAX_TIMEOUT_SECONDS)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one guarded call gave this tick."""

    value: T | None = None
    """The result, or None when the call is still running or raised."""
    hung: bool = False
    """The call has not returned: started this tick and timed out, or still blocked since."""
    started_hang: bool = False
    """This tick's call is the one that timed out (log it and count it once)."""
    late: bool = False
    """The result is from a call that timed out at an earlier tick and has since returned."""
    error: BaseException | None = None


class _Job(Generic[A, T]):
    """One guarded call: its argument, and its result once `done` is released. A bare lock,
    not a `concurrent.futures.Future` and `wait()`: those cost about 55 us of CPU per call
    (a waiter, a condition, an event), this about 27 us, most of it the two thread switches."""

    __slots__ = ("arg", "done", "error", "finished", "value")

    def __init__(self, arg: A) -> None:
        self.arg = arg
        self.done = _thread.allocate_lock()
        self.done.acquire()  # released by the worker when the call has returned or raised
        self.finished = False
        self.value: T | None = None
        self.error: BaseException | None = None


class Guard(Generic[A, T]):
    """Runs `call(arg)` in a daemon thread of its own, waiting at most `timeout_seconds`."""

    def __init__(self, name: str, call: Callable[[A], T], *, timeout_seconds: float) -> None:
        if not timeout_seconds > 0 or not math.isfinite(timeout_seconds):
            raise ValueError("timeout_seconds must be a positive number")
        self.name = name
        self.timeout_seconds = timeout_seconds
        self._call = call
        self._jobs: queue.SimpleQueue[_Job[A, T] | None] = queue.SimpleQueue()
        self._pending: _Job[A, T] | None = None
        self._thread: threading.Thread | None = None

    @property
    def blocked(self) -> bool:
        """A call is running that has not returned in time (and has not returned since)."""
        return self._pending is not None and not self._pending.finished

    def run(self, arg: A) -> Outcome[T]:
        """The call's result this tick; never waits longer than the timeout."""
        pending = self._pending
        if pending is not None:
            if not pending.finished:
                return Outcome(hung=True)
            self._pending = None
            return self._outcome(pending, late=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"read-{self.name}",
                                            daemon=True)
            self._thread.start()
        job: _Job[A, T] = _Job(arg)
        self._jobs.put(job)
        if not job.done.acquire(timeout=self.timeout_seconds):
            self._pending = job
            return Outcome(hung=True, started_hang=True)
        return self._outcome(job, late=False)

    @staticmethod
    def _outcome(job: _Job[A, T], *, late: bool) -> Outcome[T]:
        if job.error is not None:
            return Outcome(error=job.error, late=late)
        return Outcome(value=job.value, late=late)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.value = self._call(job.arg)
            except BaseException as exc:
                job.error = exc
            job.finished = True  # before the release: `blocked` never sees a released job
            job.done.release()

    def close(self) -> None:
        """Let the thread end once its current call (if any) returns; never waits for it."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


PROBE_TIMEOUT_SECONDS = 30.0
"""How long a source's start-up probe may take: NVML's first init on a large GPU node without
persistence mode takes seconds; a probe still blocked after this is a hung driver or a FIFO."""


def call_within(name: str, call: Callable[[], T], timeout_seconds: float) -> Outcome[T]:
    """`call()` in a daemon thread of its own, waited for at most `timeout_seconds`: its value
    or error, or `hung` (the thread is left blocked; it never holds up the exit)."""
    future: Future[T] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, name=f"probe-{name}", daemon=True).start()
    wait([future], timeout=timeout_seconds)
    if not future.done():
        return Outcome(hung=True, started_hang=True)
    error = future.exception()
    return Outcome(error=error) if error is not None else Outcome(value=future.result())
