"""Drift alerts through the real broker, worker and Redis: the same alerts as in-process, each
recorded once, also when the worker is killed between a detection and its snapshot."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from redis.asyncio import Redis
from river.datasets import synth

from driftline.api.main import create_app
from driftline.core.records import FeatureRecord
from driftline.kafka import SensorProducer
from driftline.models.learner import OnlineLearner
from driftline.settings import Settings

from .conftest import Receiver, WorkerProcess, settings_env

pytestmark = pytest.mark.integration

# Retraining off: these tests follow an alert from detection to its resolution by a stable signal
# (tests/integration/test_retraining.py has the alert a promotion resolves).
SEA = {
    "name": "sea",
    "task": "classification",
    "estimator": "logistic_regression",
    "retrain": {"policy": "never"},
}
BEFORE, AFTER = 3000, 2000


def sea_events() -> list[dict[str, Any]]:
    """SEA concept 0, then concept 3: one device, times one second apart ending now."""
    rows = itertools.chain(
        itertools.islice(synth.SEA(variant=0, seed=7), BEFORE),
        itertools.islice(synth.SEA(variant=3, seed=8), AFTER),
    )
    start = datetime.now(UTC) - timedelta(seconds=BEFORE + AFTER)
    return [
        {
            "event_id": f"sea-{i}",
            "device_id": "sea-1",
            "ts": (start + timedelta(seconds=i)).isoformat(),
            "readings": {f"x{k}": float(v) for k, v in x.items()},
            "target": bool(y),
        }
        for i, (x, y) in enumerate(rows)
    ]


def in_process(settings: Settings, events: list[dict[str, Any]], partition: int) -> list[tuple[str, str]]:
    spec = settings.model_specs()[0]
    learner = OnlineLearner.create(spec)
    for offset, event in enumerate(events):
        record = FeatureRecord(
            spec.name,
            event["device_id"],
            event["event_id"],
            0.0,
            event["readings"],
            event["target"],
            partition,
            offset,
        )
        learner.learn(record, 0, offset)
    return [(alert.id, alert.status) for alert in learner.drift.outbox]


def recorded(settings: Settings) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        client = Redis.from_url(settings.redis_url)
        try:
            return await settings.registry(client).alerts(count=1000)
        finally:
            await client.aclose()

    return asyncio.run(read())


def stream_ids(settings: Settings) -> list[str]:
    client = redis.Redis.from_url(settings.redis_url)
    return [fields[b"id"].decode() for _, fields in client.xrange(settings.keys.alerts())]


def seen(settings: Settings, model: str = "sea") -> int:
    client = redis.Redis.from_url(settings.redis_url)
    version = client.hget(settings.keys.model(model, "aliases"), "latest")
    if version is None:
        return 0
    return int(json.loads(client.hget(settings.keys.model(model, "meta"), version))["events_seen"])


def publish(settings: Settings, events: list[dict[str, Any]]) -> None:
    with SensorProducer(settings) as producer:
        for event in events:
            producer.send(event)


def test_the_pipeline_raises_the_alerts_the_model_raises_in_process(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    wait_for: Callable[..., object],
) -> None:
    settings = make_settings(models=[SEA], features="raw", sensor_catalog="none")
    start_worker(settings)
    events = sea_events()
    publish(settings, events)
    wait_for(lambda: seen(settings) == len(events), 120, "every event to be learned")
    alerts = recorded(settings)
    partition = int(alerts[0]["source"].split("/")[1]) if alerts else 0
    # the same alerts, in the same order, raised and resolved at the same positions
    assert stream_entries(settings) == in_process(settings, events, partition)
    error = [a for a in alerts if a["signal"] == "error"]
    assert len(error) == 1 and BEFORE <= error[0]["offset"] <= BEFORE + 300, error
    assert error[0]["version"] >= 1 and error[0]["status"] == "resolved"
    assert error[0]["resolved_position"] == error[0]["position"] + 1000
    assert stream_entries(settings).count((error[0]["id"], "firing")) == 1
    # what operators read: the API and the CLI
    with TestClient(create_app(settings)) as client:
        assert [a["id"] for a in client.get("/alerts", params={"model": "sea"}).json()] == [
            a["id"] for a in alerts
        ]
        assert client.get("/alerts", params={"signal": "error"}).json() == error
        assert client.get(f"/alerts/{error[0]['id']}").json() == error[0]
        assert client.get("/alerts/nope").status_code == 404
        assert client.get("/alerts", params={"severity": "bad"}).status_code == 422
    listing = subprocess.run(
        [sys.executable, "-m", "driftline", "alerts", "list"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and error[0]["id"] in listing.stdout, listing.stderr


def test_a_worker_killed_between_a_detection_and_its_snapshot_records_and_delivers_the_alert_once(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    wait_for: Callable[..., object],
) -> None:
    # Snapshots only when told to: the detection is in memory only when the worker dies.
    receiver = Receiver()
    late = make_settings(
        models=[SEA],
        features="raw",
        sensor_catalog="none",
        snapshot_every_events=1_000_000,
        snapshot_every_seconds=3600,
        alert_webhooks=receiver.url,
    )
    worker = start_worker(late)
    events = sea_events()
    publish(late, events)
    wait_for(lambda: "drift alert sea:error" in worker.log_tail(2000), 120, "the detection")
    assert stream_entries(late) == []  # not recorded yet: no snapshot since
    worker.kill()
    time.sleep(late.broker_session_timeout + 1)  # the dead member leaves the group
    start_worker(late.model_copy(update={"snapshot_every_events": 100, "snapshot_every_seconds": 1.0}))
    wait_for(lambda: seen(late) == len(events), 180, "every event to be learned after the restart")
    entries = stream_entries(late)
    firing = [alert_id for alert_id, status in entries if status == "firing"]
    assert len(firing) == 1 and firing[0].startswith("sea:error:"), entries
    assert len(entries) == len(set(entries)), entries  # each (id, status) once: firing, resolved
    # delivered once to the topic and to the webhook (after the dead worker's relay lease ran out)
    wait_for(lambda: receiver.received() == entries, 60, "the webhook to get each entry once")
    wait_for(lambda: topic_entries(late) == entries, 30, "the drift-alerts topic to hold each entry once")
    receiver.server.shutdown()


def stream_entries(settings: Settings) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(settings.redis_url)
    alerts = [json.loads(fields[b"alert"]) for _, fields in client.xrange(settings.keys.alerts())]
    return [(a["id"], a["status"]) for a in alerts]


def topic_entries(settings: Settings) -> list[tuple[str, str]]:
    consumer = KafkaConsumer(
        settings.alerts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    try:
        alerts = [json.loads(message.value) for message in consumer]
    finally:
        consumer.close()
    return [(a["id"], a["status"]) for a in alerts]


def test_a_regression_drift_through_the_pipeline_is_the_one_seen_in_process(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    wait_for: Callable[..., object],
) -> None:
    # Friedman's global abrupt drift at 5,000 and back at 8,000; the default (robust linear) model.
    settings = make_settings(models=[{"name": "fr"}], features="raw", sensor_catalog="none")
    start_worker(settings)
    start = datetime.now(UTC) - timedelta(seconds=9500)
    stream = itertools.islice(synth.FriedmanDrift(drift_type="gra", position=(5000, 8000), seed=1), 9500)
    events = [
        {
            "event_id": f"fr-{i}",
            "device_id": "fr-1",
            "ts": (start + timedelta(seconds=i)).isoformat(),
            "readings": {f"x{k}": float(v) for k, v in x.items()},
            "target": float(y),
        }
        for i, (x, y) in enumerate(stream)
    ]
    publish(settings, events)
    wait_for(lambda: seen(settings, "fr") == len(events), 120, "every event to be learned")
    entries = stream_entries(settings)
    partition = int(recorded(settings)[0]["source"].split("/")[1]) if entries else 0
    assert entries == in_process(settings, events, partition)
    offsets = sorted(int(i.split(":")[-2]) for i, status in entries if status == "firing" and ":error:" in i)
    assert len(offsets) == 2 and 5000 <= offsets[0] <= 5300 and 8000 <= offsets[1] <= 8300, entries
    # paged, newest first, and filtered by event time
    with TestClient(create_app(settings)) as client:
        first = client.get("/alerts", params={"model": "fr", "signal": "error", "limit": 1})
        second = client.get(
            "/alerts",
            params={"model": "fr", "signal": "error", "limit": 1, "before": first.headers["X-Next-Page"]},
        )
        assert [first.json()[0]["offset"], second.json()[0]["offset"]] == offsets[::-1]
        assert "X-Next-Page" not in client.get("/alerts", params={"model": "fr", "signal": "error"}).headers
        later = first.json()[0]["event_time"]
        assert [
            a["offset"] for a in client.get("/alerts", params={"since": later, "signal": "error"}).json()
        ] == [offsets[1]]
        assert [a["offset"] for a in client.get("/alerts", params={"until": later - 1}).json()] == [
            offsets[0]
        ]
