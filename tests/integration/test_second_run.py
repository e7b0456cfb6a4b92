"""A second ``make run``: a new memory-only broker, the same Redis. Its events must be learned.

The user's report: the simulator numbered its events the same way in every run, the devices'
recent-id memory survived in Redis, and a second run's events were all counted as duplicates
(``/stats``: accepted 0) while the dashboard showed the first run's model. Here each run has a
broker of its own (same topic names, new topic ids, as after a restart of the embedded broker) and
the same Redis namespace, as on a machine whose Redis keeps its data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from driftline.api.main import create_app
from driftline.embedded import EmbeddedBroker
from driftline.kafka import ensure_topics
from driftline.settings import Settings
from driftline.simulator import run_simulator
from driftline.state import describe_state

pytestmark = pytest.mark.integration

N = 300


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``python -m driftline`` read exactly ``settings``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}, **settings.as_env()}


@pytest.fixture
def new_broker(tmp_path: Path) -> Iterator[Callable[[], EmbeddedBroker]]:
    """Start a fresh embedded broker (memory only), as every ``make run`` does."""
    brokers: list[EmbeddedBroker] = []

    def start() -> EmbeddedBroker:
        broker = EmbeddedBroker(log_dir=tmp_path / f"broker-{len(brokers)}")
        broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def seen_by_the_user(settings: Settings) -> dict[str, Any]:
    """What ``/stats`` and ``/models/<default>`` answer."""
    with TestClient(create_app(settings)) as client:
        stats = client.get("/stats").json()
        model = client.get(f"/models/{settings.default_model}")
    versions = model.json().get("versions", []) if model.status_code == 200 else []
    learned = max((v.get("events_learned", 0) for v in versions), default=0)
    return {
        "totals": stats["totals"],
        "learned": learned,
        "version": max((v["version"] for v in versions), default=None),
    }


def one_run(settings: Settings, start_worker: Any, wait_for: Any, learned_before: int) -> dict[str, Any]:
    """Topics, a worker, N simulated events published live; returns what the user then sees."""
    topic_ids = ensure_topics(settings)
    worker = start_worker(settings)
    assert run_simulator(settings, count=N, rate=400, progress=False) == N
    wait_for(
        lambda: seen_by_the_user(settings)["learned"] >= learned_before + N,
        timeout=90,
        what=f"{learned_before + N} events learned",
    )
    wait_for(
        lambda: seen_by_the_user(settings)["totals"]["received"] >= N, timeout=30, what=f"{N} events counted"
    )
    time.sleep(2 * settings.snapshot_every_seconds)  # anything extra would show by now
    seen = seen_by_the_user(settings)
    worker.stop()
    return {**seen, "topic_ids": topic_ids, "log": worker.log_tail()}


def test_a_second_run_with_the_same_redis_is_learned_and_reset_starts_clean(
    make_settings: Any, start_worker: Any, wait_for: Any, new_broker: Any
) -> None:
    first_broker = new_broker()
    first = make_settings(kafka_url=first_broker.url, sim_devices=5)
    client = redis.Redis.from_url(first.redis_url)
    try:
        assert describe_state(client, first).startswith("no earlier state in "), "a new namespace"

        run1 = one_run(first, start_worker, wait_for, learned_before=0)
        assert run1["totals"]["accepted"] == N and run1["learned"] == N, run1["log"]
        first_broker.stop()

        # `make run` again: a new memory-only broker (same topic names), the same Redis namespace
        second = make_settings(kafka_url=new_broker().url, sim_devices=5)
        assert second.namespace == first.namespace and second.events_topic == first.events_topic
        said = describe_state(client, second)
        assert said.startswith(
            f"continuing the state in {second.redis_url} namespace "
            f"'{second.namespace}': model 'default' v{run1['version']} "
            f"({N} events learned), 5 devices"
        ), said
        assert said.endswith("to start clean: stop everything, then driftline reset"), said

        run2 = one_run(second, start_worker, wait_for, learned_before=N)
        assert run2["topic_ids"] != run1["topic_ids"], "the new broker's topics are new topics"
        assert run2["totals"]["received"] == N, run2["log"]
        assert run2["totals"]["accepted"] == N, f"second run deduplicated: {run2['totals']}"
        assert run2["totals"]["deduplicated"] == run2["totals"]["late"] == 0, run2["totals"]
        assert run2["learned"] == 2 * N, "the model goes on learning from the second run's events"
        assert run2["version"] > run1["version"]

        # `driftline reset`: refuses without --yes when nobody can answer, then empties the namespace
        neighbour = f"{second.namespace}-other:keep"  # shares the prefix, not the namespace
        client.set(neighbour, "1")
        env = settings_env(second)
        refused = subprocess.run(
            [sys.executable, "-m", "driftline", "reset"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "--yes" in refused.stderr, refused
        keys = list(client.scan_iter(match=f"{second.namespace}:*"))
        assert len(keys) > 10, "models, devices, offsets and counters are still there"

        reset = subprocess.run(
            [sys.executable, "-m", "driftline", "reset", "--yes"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reset.returncode == 0, reset
        assert f"removed {len(keys)} keys" in reset.stdout, reset
        assert list(client.scan_iter(match=f"{second.namespace}:*")) == []
        assert client.get(neighbour) == b"1", "another namespace's keys are left alone"
        assert describe_state(client, second).startswith("no earlier state in ")
        again = subprocess.run(
            [sys.executable, "-m", "driftline", "reset", "--yes"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0 and "nothing to remove" in again.stdout, again
    finally:
        client.delete(f"{first.namespace}-other:keep")
        client.close()
