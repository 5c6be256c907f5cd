"""An event-loop lag probe for tests: is anything blocking the loop?

A task sleeps ``interval`` seconds again and again and records how late it
wakes up (``samples``, wall clock). On a free loop the overshoot is well under
a millisecond; a blocking call (parsing 50 MB of XML, hashing a mezzanine, a
synchronous socket) holds every other task, the probe included, for its whole
duration, and shows up as one large sample.

On a shared, loaded machine the wall overshoot also counts time the process
waited for a core. So each sample also records the event-loop thread's CPU
time over the same span (``busy``: the overshoot, capped at that CPU time):
code running on the loop burns it, waiting for the scheduler does not. A test
bounds ``busy`` tightly and the wall overshoot loosely (a blocking call that
does not burn CPU, a synchronous sleep or socket read, still shows there).
"""

from __future__ import annotations

import asyncio
import gc
import time
from types import TracebackType
from typing import Self


class LagProbe:
    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        #: Wall-clock overshoot of each sleep.
        self.samples: list[float] = []
        #: The part of it the loop thread spent running (CPU time), per sample.
        self.busy: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def max_lag(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def max_busy(self) -> float:
        return max(self.busy, default=0.0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(self.interval)
            late = max(0.0, loop.time() - started - self.interval)
            self.samples.append(late)
            self.busy.append(min(late, time.thread_time() - cpu))

    async def __aenter__(self) -> Self:
        # A full collection of what a thousand earlier tests left in the process
        # costs a quarter of a second of the loop's CPU (seen in a whole-suite run):
        # collect and freeze it first, so the probe measures the case, not the
        # garbage collector walking other tests' objects.
        gc.collect()
        gc.freeze()
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._task is not None
        # A few more cycles before stopping: a sleep overdue because of a blocking
        # call just before the exit is recorded, not cancelled unseen.
        await asyncio.sleep(self.interval * 3)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        gc.unfreeze()

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"{len(ordered)} samples, max {self.max_lag * 1000:.1f} ms "
                f"(busy {self.max_busy * 1000:.1f} ms), p99 {p99 * 1000:.1f} ms")
