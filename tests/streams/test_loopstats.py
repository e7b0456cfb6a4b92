"""The event loop's time split: idle in select against running, measured on a real loop."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import pytest

from driftline.streams.agents import build_worker
from driftline.streams.loopstats import LoopStats, describe, report_forever

from .test_agents import config

linux_only = pytest.mark.skipif(
    not Path("/proc/self/task").exists() or sys.platform != "linux", reason="schedstat is Linux's"
)


def test_a_loop_that_sleeps_is_idle_and_one_that_computes_is_not() -> None:
    async def measure() -> tuple[float, float]:
        stats = LoopStats()
        assert stats.install(asyncio.get_running_loop())
        before = stats.sample()
        await asyncio.sleep(0.3)  # nothing to run: blocked in select
        slept = stats.sample()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # busy, never in select
            pass
        busy = stats.sample()
        return slept.idle - before.idle, busy.idle - slept.idle

    idle_while_sleeping, idle_while_busy = asyncio.run(measure())
    assert 0.25 <= idle_while_sleeping <= 0.5
    assert idle_while_busy < 0.01


@linux_only
def test_the_main_threads_cpu_and_run_queue_wait_come_from_the_kernel() -> None:
    async def measure() -> str:
        stats = LoopStats()
        stats.install(asyncio.get_running_loop())
        before = stats.sample()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            pass
        after = stats.sample()
        assert before.on_cpu is not None and after.on_cpu is not None
        assert before.run_queue is not None and after.run_queue is not None
        # Running or waiting for a core: together about the wall clock of a busy loop.
        assert (after.on_cpu - before.on_cpu) + (after.run_queue - before.run_queue) >= 0.2
        return describe(before, after)

    line = asyncio.run(measure())
    assert line.startswith("event loop over 0.3 s: running ") and "waiting for a core" in line


def test_the_report_says_a_line_per_interval() -> None:
    said: list[str] = []

    async def run() -> None:
        task = asyncio.ensure_future(report_forever(0.05, said.append))
        await asyncio.sleep(0.18)
        task.cancel()

    asyncio.run(run())
    assert 2 <= len(said) <= 4 and all(line.startswith("event loop over ") for line in said)


@pytest.mark.parametrize(("seconds", "tasks"), [(0.0, 0), (10.0, 1)])
def test_the_worker_reports_its_loop_only_when_asked(tmp_path: Path, seconds: float, tasks: int) -> None:
    plain = build_worker(config(tmp_path, ("ingest", "learn")))
    asked = build_worker(
        dataclasses.replace(config(tmp_path, ("ingest", "learn")), loop_stats_seconds=seconds)
    )
    started = {task.__name__ for task in asked.app._app_tasks} - {t.__name__ for t in plain.app._app_tasks}
    assert started == ({"report_loop_stats"} if tasks else set())
