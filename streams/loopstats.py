"""Where a worker's event loop spends its time: running, idle, or waiting for a core.

A worker with a backlog that uses less than a core is either *idle* (its loop blocked in the
selector: waiting on the broker, Redis or a timer, with nothing else to run) or *starved* (ready
to run, but the kernel gives the core to other processes). The two call for opposite fixes, and
the process's CPU time alone cannot tell them apart, so behind ``DRIFTLINE_LOOP_STATS_SECONDS``
the worker logs, per interval, the share of the wall clock its loop spent in each
(docs/design.md, §7 "The streaming tax"):

- *idle*: time inside the loop's ``selector.select`` (measured around each call);
- *waiting for a core*: the main thread's run-queue wait, from the kernel's ``schedstat``
  (Linux; absent elsewhere);
- *running*: the main thread's CPU time, also from ``schedstat``.

The three add up to about the wall clock; the consumer thread's CPU is given apart.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSample:
    """Cumulative counters at one instant (seconds)."""

    wall: float
    #: Time the event loop spent blocked in its selector.
    idle: float
    #: The main thread's CPU time and run-queue wait; ``None`` where the kernel does not say.
    on_cpu: float | None
    run_queue: float | None
    #: The CPU time of the process's other threads (Faust's consumer thread, the producer's).
    other_threads_cpu: float | None


def describe(before: LoopSample, after: LoopSample) -> str:
    """The interval between two samples as a log line: shares of its wall clock.

    >>> describe(LoopSample(0, 0, 0, 0, 0), LoopSample(10, 0.5, 8.5, 1.0, 0.3))
    'event loop over 10.0 s: running 85%, idle in select 5%, waiting for a core 10%; other threads 0.03 core'
    >>> describe(LoopSample(0, 0, None, None, None), LoopSample(2, 1, None, None, None))
    'event loop over 2.0 s: idle in select 50% (no schedstat here: running and waiting for a core unknown)'
    """
    wall = after.wall - before.wall
    if wall <= 0:
        return "event loop: no time elapsed"
    share = "{:.0%}".format
    line = f"event loop over {wall:.1f} s: "
    idle = f"idle in select {share((after.idle - before.idle) / wall)}"
    if after.on_cpu is None or before.on_cpu is None or after.run_queue is None or before.run_queue is None:
        return line + idle + " (no schedstat here: running and waiting for a core unknown)"
    running = share((after.on_cpu - before.on_cpu) / wall)
    starved = share((after.run_queue - before.run_queue) / wall)
    line += f"running {running}, {idle}, waiting for a core {starved}"
    if after.other_threads_cpu is not None and before.other_threads_cpu is not None:
        # Summed over the threads alive at each sample: one that ended in between takes its CPU
        # time with it, so the difference is clamped (an estimate, not an account).
        others = max(0.0, after.other_threads_cpu - before.other_threads_cpu)
        line += f"; other threads {others / wall:.2f} core"
    return line


def schedstat(task: Path) -> tuple[float, float] | None:
    """A thread's CPU time and run-queue wait (seconds) from ``/proc/.../task/<tid>/schedstat``,
    or ``None`` if the kernel does not keep them."""
    try:
        on_cpu_ns, run_queue_ns, _ = (task / "schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu_ns) / 1e9, int(run_queue_ns) / 1e9


@dataclass
class LoopStats:
    """Counts the loop's time in its selector and samples the kernel's counters."""

    idle: float = 0.0
    clock: Callable[[], float] = time.monotonic
    #: The thread running the loop (its native id), set by :meth:`install`.
    main_thread_id: int = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Time each ``select`` of ``loop`` (a selector loop: asyncio's own, which Faust runs);
        ``False`` for a loop without one (uvloop), where idle time is not measured."""
        selector = getattr(loop, "_selector", None)
        if selector is None:
            return False
        select = selector.select
        clock = self.clock

        def timed_select(timeout: float | None = None) -> Any:
            started = clock()
            try:
                return select(timeout)
            finally:
                self.idle += clock() - started

        selector.select = timed_select
        self.main_thread_id = threading.get_native_id()
        return True

    def sample(self) -> LoopSample:
        tasks = Path("/proc/self/task")
        main = schedstat(tasks / str(self.main_thread_id)) if self.main_thread_id else None
        others: float | None = None
        if main is not None:
            others = 0.0
            for task in tasks.iterdir():
                if task.name != str(self.main_thread_id):
                    counters = schedstat(task)
                    others += counters[0] if counters else 0.0
        return LoopSample(
            self.clock(),
            self.idle,
            main[0] if main else None,
            main[1] if main else None,
            others,
        )


async def report_forever(every: float, say: Callable[[str], None] = log.info) -> None:
    """Log the loop's shares every ``every`` seconds, from the loop this runs on."""
    stats = LoopStats()
    stats.install(asyncio.get_running_loop())
    last = stats.sample()
    while True:
        await asyncio.sleep(every)
        now = stats.sample()
        say(describe(last, now))
        last = now


__all__ = ["LoopSample", "LoopStats", "describe", "report_forever", "schedstat"]
