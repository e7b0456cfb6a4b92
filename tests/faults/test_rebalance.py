"""Fault scenario 2: a second worker joins and leaves (and the first leaves too) while events
flow: the partitions move between them, and the totals and the model's metrics end where one
worker, and the in-process run, end.
"""

from __future__ import annotations

import itertools
import random
import re
import signal
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from driftline.kafka import ensure_topics
from driftline.simulator import SensorSimulator
from tests.faults.conftest import (
    QUICK_GROUP,
    START,
    Trickle,
    assert_same_learning,
    batched,
    ingest_counters,
    newest_metas,
    on_registry,
    reference_run,
    wait_until_seen,
)

pytestmark = pytest.mark.integration


def assignments(worker: Any) -> int:
    """How many partition assignments the worker has taken so far (it logs each restore)."""
    return (
        worker.log_path.read_text(errors="replace").count("ingest restored")
        if worker.log_path.exists()
        else 0
    )


@pytest.mark.parametrize(
    ("n", "cycles", "per_second"),
    [
        pytest.param(2000, 1, 10, id="join-and-hand-over-2k-events"),
        pytest.param(
            40_000,
            8,
            20,
            id="join-leave-8-times-40k-events",
            marks=[pytest.mark.chaos, pytest.mark.timeout(1800)],
        ),
    ],
)
def test_workers_joining_and_leaving_learn_what_one_worker_learns(
    n: int, cycles: int, per_second: float, make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    settings = make_settings(snapshot_every_events=200, snapshot_every_seconds=0.5, **QUICK_GROUP)
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=33, start=datetime.fromtimestamp(START, UTC)).events(n))
    messages = batched(events, 10)
    trickle = Trickle(settings, messages, per_second)
    trickle.start()
    rng = random.Random()
    staying = start_worker(settings)
    stopping: list[float] = []
    for cycle in range(cycles):
        before = newest_metas(settings).get("default", {}).get("events_seen", 0)
        wait_for(
            lambda b=before: newest_metas(settings).get("default", {}).get("events_seen", 0) > b,
            timeout=60,
            what="the group to learn",
        )
        joining = start_worker(settings)
        wait_for(lambda j=joining: assignments(j) > 0, timeout=60, what="the new worker to be assigned")
        time.sleep(rng.uniform(0.5, 2.5))  # learning side by side
        leaving = staying if cycle % 2 == 0 else joining  # the older one leaves, or the newcomer
        started = time.monotonic()
        leaving.stop()  # SIGTERM: it hands in its work and leaves the group
        assert leaving.process.returncode != -signal.SIGKILL, "a worker told to stop had to be killed"
        stopping.append(time.monotonic() - started)
        staying = staying if leaving is joining else joining
    assert max(stopping) < 10, f"a worker told to stop takes long to leave: {stopping} s"
    assert trickle.sent < len(messages), "the stream must still flow after the last move"
    trickle.join(timeout=len(messages) / per_second + 60)
    assert trickle.error is None and trickle.sent == len(messages), trickle.error

    found = wait_until_seen(settings, n, timeout=120)
    assert found["default"]["events_seen"] == found["default"]["events_learned"] == n, staying.log_tail()
    assert_same_learning(found, reference_run(settings, messages))
    counters = ingest_counters(settings)["totals"]
    assert (counters["received"], counters["accepted"], counters["deduplicated"]) == (n, n, 0), counters


def test_a_worker_told_to_stop_publishes_what_it_holds_and_leaves_promptly(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    """SIGTERM while the learn stage holds messages a snapshot does not yet contain: the worker
    publishes them and exits, instead of waiting (Faust waits for them to be acknowledged) until
    it is killed, and leaving its group only by timing out."""
    settings = make_settings(snapshot_every_events=1_000_000, snapshot_every_seconds=4.0, **QUICK_GROUP)
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=2, start=datetime.fromtimestamp(START, UTC)).events(400))
    worker = start_worker(settings)
    Trickle(settings, batched(events[:200], 10), 1000).run()
    first = wait_for(
        lambda: newest_metas(settings).get("default", {}).get("events_seen", 0) >= 200,
        timeout=60,
        what="the first snapshot",
    )
    assert first
    Trickle(settings, batched(events[200:], 10), 1000).run()
    time.sleep(1.0)  # learned, and held: the next snapshot is seconds away
    started = time.monotonic()
    worker.stop()
    assert worker.process is not None and worker.process.returncode != -signal.SIGKILL, worker.log_tail()
    assert time.monotonic() - started < 10
    assert newest_metas(settings)["default"]["events_seen"] == len(events)


def newest_snapshot_by(worker: Any) -> int:
    """The newest model version this worker says it published (0: none)."""
    text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
    return max((int(v) for v in re.findall(r"snapshot default v(\d+)", text)), default=0)


def published(settings: Any) -> list[dict[str, Any]]:
    """Every version of the model in the registry, oldest first."""

    async def read(registry: Any) -> list[dict[str, Any]]:
        return list(await registry.versions("default"))

    versions: list[dict[str, Any]] = on_registry(settings, read)
    return versions


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_a_paused_worker_that_lost_its_partitions_does_not_change_what_is_learned(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    """The learning worker freezes (SIGSTOP: a long GC pause, a stalled VM) past its session
    timeout: the group gives its partitions to the other worker. When it wakes (SIGCONT) it
    still holds a learner and messages: whatever it does then must not change the outcome, nor
    publish a model older than the newest (a restore would build on it and lose events)."""
    n = 3000
    settings = make_settings(
        snapshot_every_events=200, snapshot_every_seconds=0.5, keep_versions=10_000, **QUICK_GROUP
    )
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=44, start=datetime.fromtimestamp(START, UTC)).events(n))
    messages = batched(events, 10)
    trickle = Trickle(settings, messages, 10)
    trickle.start()
    first = start_worker(settings)
    wait_for(lambda: newest_snapshot_by(first) > 0, timeout=60, what="the first worker to learn")
    second = start_worker(settings)
    wait_for(lambda: assignments(second) > 0, timeout=60, what="the second worker to be assigned")
    time.sleep(2.0)
    learner = max((first, second), key=newest_snapshot_by)
    learner.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(QUICK_GROUP["broker_session_timeout"] + 4)  # the group moves on without it
    finally:
        learner.process.send_signal(signal.SIGCONT)
    assert trickle.sent < len(messages), "the stream must still flow after the pause"
    trickle.join(timeout=len(messages) / 10 + 60)

    found = wait_until_seen(settings, n, timeout=120, settle=3.0)
    assert found["default"]["events_seen"] == found["default"]["events_learned"] == n
    assert_same_learning(found, reference_run(settings, messages))
    history = [(v["version"], v["events_seen"]) for v in published(settings)]
    went_back = [(a, b) for a, b in itertools.pairwise(history) if b[1] < a[1]]
    assert not went_back, f"versions (version, events seen) older than their predecessor: {went_back}"
