"""Fault scenario 1: SIGKILL the worker at random moments while a stream flows.

Every event is learned exactly once, and the model ends with the metrics of the in-process run
on the same events (River's loop: one event after the other), whatever the moments were.
"""

from __future__ import annotations

import random
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
    reference_run,
    wait_until_seen,
)

pytestmark = pytest.mark.integration

DEVICE = "sensor-001"


@pytest.mark.parametrize(
    ("n", "kills", "per_second"),
    [
        pytest.param(6000, 3, 30, id="3-kills-6k-events"),
        pytest.param(
            100_000, 10, 100, id="10-kills-100k-events", marks=[pytest.mark.chaos, pytest.mark.timeout(1800)]
        ),
    ],
)
def test_sigkill_at_random_moments_learns_every_event_exactly_once_with_the_in_process_metrics(
    n: int, kills: int, per_second: float, make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    """``per_second`` messages of 10 events: the stream lasts longer than the kills take."""
    settings = make_settings(snapshot_every_events=200, snapshot_every_seconds=0.5, **QUICK_GROUP)
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=21, start=datetime.fromtimestamp(START, UTC)).events(n))
    messages = batched(events, 10)
    trickle = Trickle(settings, messages, per_second, hold_last=len(messages) // 10)
    trickle.start()
    rng = random.Random()  # a new draw each run: the moments are random, the outcome must not be
    worker = start_worker(settings)
    seen_at_kill = []
    for _ in range(kills):
        before = newest_metas(settings).get("default", {}).get("events_seen", 0)
        wait_for(
            lambda b=before: newest_metas(settings).get("default", {}).get("events_seen", 0) > b,
            timeout=60,
            what="the (restarted) worker to learn",
        )
        time.sleep(rng.uniform(0.0, 1.5))
        worker.kill()
        seen_at_kill.append(newest_metas(settings)["default"]["events_seen"])
        worker = start_worker(settings)
    assert all(0 < seen < n for seen in seen_at_kill), f"kills must land mid-stream: {seen_at_kill}"
    assert trickle.sent < len(messages), "the stream must still flow after the last kill"
    trickle.release()
    trickle.join(timeout=len(messages) / per_second + 60)
    assert trickle.error is None and trickle.sent == len(messages), trickle.error

    found = wait_until_seen(settings, n, timeout=180)
    assert found["default"]["events_seen"] == found["default"]["events_learned"] == n, worker.log_tail()
    assert_same_learning(found, reference_run(settings, messages))
    counters = ingest_counters(settings)["totals"]
    assert (counters["received"], counters["accepted"], counters["deduplicated"]) == (n, n, 0), counters


#: The threads of a worker when it forks a sealing child, and why each is safe: the child runs on
#: the main thread's copy, and needs only the GIL (reset by fork), the import lock (held by fork
#: itself) and malloc (glibc's fork handlers); these threads take none of them across the fork.
FORK_SAFE_THREADS = {
    "_MainThread",  # the event loop: it forks, between two batches
    "_PromptFetchThread",  # Faust's consumer thread (a mode WorkerThread): aiokafka on its own loop
}


def sealing_child(pid: int, timeout: float) -> int | None:
    """A child of the worker ``pid`` (a snapshot sealing, the only children a worker forks), as
    soon as one runs; ``None`` if none came within ``timeout``."""
    children = f"/proc/{pid}/task/{pid}/children"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(children) as listing:
            found = listing.read().split()
        if found:
            return int(found[0])
        time.sleep(0.0005)
    return None


def test_sigkill_while_a_child_seals_a_snapshot_learns_every_event_exactly_once(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    """Every snapshot sealed in a forked child (``seal_fork_min_bytes=0``); the worker killed the
    moment one runs: what that seal held is neither acknowledged nor lost, and nothing is learned
    twice."""
    n, kills, per_second = 3000, 2, 10  # 30 s of stream: restarts take 5-10 s on a busy machine
    settings = make_settings(
        snapshot_every_events=200, snapshot_every_seconds=0.5, seal_fork_min_bytes=0, **QUICK_GROUP
    )
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=22, start=datetime.fromtimestamp(START, UTC)).events(n))
    messages = batched(events, 10)
    trickle = Trickle(settings, messages, per_second, hold_last=len(messages) // 10)
    worker = start_worker(settings)  # first: the stream must still flow after the kills
    trickle.start()
    caught, logs = [], []
    for _ in range(kills):
        before = newest_metas(settings).get("default", {}).get("events_seen", 0)
        wait_for(
            lambda b=before: newest_metas(settings).get("default", {}).get("events_seen", 0) > b,
            timeout=60,
            what="the (restarted) worker to learn",
        )
        assert worker.process is not None
        caught.append(sealing_child(worker.process.pid, timeout=20))
        worker.kill()
        logs.append(worker.log_path)
        worker = start_worker(settings)
    assert all(caught), f"each kill must land while a child seals: {caught}"
    # The threads alive when the worker forks (it logs them at its first fork): none of them may
    # hold a lock the child needs (pickle, HMAC, os.write; see driftline.core.forked).
    said = [line for path in logs for line in path.read_text().splitlines() if "threads at the fork:" in line]
    assert said, "the worker said which threads it forks with"
    listed = [name for line in said for name in line.split("threads at the fork:")[1].split(",")]
    threads = {name.strip().rsplit("(", 1)[1].rstrip(")") for name in listed}
    assert threads <= FORK_SAFE_THREADS, threads - FORK_SAFE_THREADS
    assert trickle.sent < len(messages), "the stream must still flow after the last kill"
    trickle.release()
    trickle.join(timeout=len(messages) / per_second + 60)
    assert trickle.error is None and trickle.sent == len(messages), trickle.error

    found = wait_until_seen(settings, n, timeout=180)
    assert found["default"]["events_seen"] == found["default"]["events_learned"] == n, worker.log_tail()
    assert_same_learning(found, reference_run(settings, messages))
