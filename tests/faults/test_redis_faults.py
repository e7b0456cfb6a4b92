"""Fault scenario 4: Redis restarted, and Redis stalled (accepting, not answering), while the
worker checkpoints and the API serves.

The Redis is the test's own (with an append-only file, so a restart keeps what it acknowledged).
Through both, the worker rides on its timeouts and retries, and afterwards its counters and
model equal the in-process run (nothing lost, nothing twice); the API answers every prediction
with 0 x 5xx, and the version it serves never goes backwards.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftline.embedded import EmbeddedRedis
from driftline.kafka import SensorProducer, ensure_topics
from driftline.simulator import SensorSimulator
from tests.faults.conftest import (
    START,
    Trickle,
    assert_same_learning,
    batched,
    ingest_counters,
    reference_run,
    wait_until_seen,
)

pytestmark = pytest.mark.integration

READING = {"device_id": "sensor-001", "readings": {"temperature": 21.0, "humidity": 50.0}}


class DurableRedis(EmbeddedRedis):
    """redis-server with an append-only file synced on every write: a restart loses nothing."""

    def command(self) -> list[str]:
        args = super().command()
        at = args.index("--appendonly")
        return [*args[:at], "--appendonly", "yes", "--appendfsync", "always", *args[at + 2 :]]


class Prober(threading.Thread):
    """Asks the API for a prediction every 50 ms; keeps the status codes and served versions."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.statuses: list[int] = []
        self.versions: list[int] = []
        self.degraded = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        reading = READING
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                try:
                    response = client.post(f"{self.url}/predict", json=reading)
                except httpx.HTTPError:
                    self.statuses.append(-1)  # no answer at all counts as a failure too
                else:
                    self.statuses.append(response.status_code)
                    if response.status_code == 200:
                        body = response.json()
                        self.versions.append(int(body["version"]))
                        self.degraded += bool(body.get("degraded"))
                time.sleep(0.05)


@pytest.mark.parametrize(
    ("events", "stall"), [(3_000, 4.0), pytest.param(30_000, 20.0, marks=pytest.mark.chaos)]
)
def test_redis_restarted_and_stalled_loses_nothing_and_the_api_serves_throughout(
    events: int, stall: float, make_settings: Any, start_worker: Any, start_api: Any, tmp_path: Path
) -> None:
    redis_server = DurableRedis(log_dir=tmp_path / "redis").start()
    try:
        settings = make_settings(redis_url=redis_server.url, redis_timeout=1.0, redis_retry_seconds=60.0)
        ensure_topics(settings)
        sim = SensorSimulator(devices=1, seed=4, start=datetime.fromtimestamp(START, UTC))
        messages = batched(list(sim.events(events)), 10)
        half = len(messages) // 2
        with SensorProducer(settings) as producer:
            for message in messages[:half]:
                producer.send_raw(b"sensor-001", message)
        worker = start_worker(settings)
        wait_until_seen(settings, half * 10 // 2, timeout=120, settle=0)
        api = start_api(settings)
        prober = Prober(api.url)
        prober.start()

        # Redis killed (-9) and back on the same port and file, then stalled, while the stream flows
        trickle = Trickle(settings, messages[half:], per_second=(len(messages) - half) / (8.0 + stall))
        trickle.start()
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGKILL)
        redis_server.process.wait()
        time.sleep(2.0)
        redis_server = DurableRedis(port=redis_server.port, log_dir=tmp_path / "redis").start()
        time.sleep(2.0)
        # stalled: the port accepts, nothing answers
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        time.sleep(stall)
        os.kill(redis_server.process.pid, signal.SIGCONT)

        trickle.join(60 + stall)
        assert trickle.error is None, trickle.error
        found = wait_until_seen(settings, events, timeout=180)
        prober.stopping.set()
        prober.join(15)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()

        reference = reference_run(settings, messages)
        assert_same_learning(found, reference)
        counters = ingest_counters(settings)
        assert counters["balanced"], counters
        assert counters["totals"] == {k: reference.stage.totals()[k] for k in counters["totals"]}

        assert prober.statuses, "the API was asked"
        failures = [s for s in prober.statuses if s >= 500 or s < 0]
        assert not failures, f"{len(failures)} of {len(prober.statuses)} predictions failed: {set(failures)}"
        assert prober.versions == sorted(prober.versions), "the served version went backwards"
        # and, Redis back, the API follows the worker again: it serves the newest version
        newest = max(meta["version"] for meta in found.values())
        deadline = time.monotonic() + 20
        while (served := httpx.post(f"{api.url}/predict", json=READING, timeout=10).json())[
            "version"
        ] < newest:
            assert time.monotonic() < deadline, f"the API still serves v{served['version']}, newest v{newest}"
            time.sleep(0.5)
        print(
            f"{len(prober.statuses)} predictions, {prober.degraded} degraded, "
            f"versions {prober.versions[0]}..{prober.versions[-1]}, newest v{newest}"
        )
    finally:
        if redis_server.process is not None and redis_server.process.poll() is None:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        redis_server.stop()
