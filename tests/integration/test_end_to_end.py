"""The whole loop through the real broker and the real Redis: events in, a verified model out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from redis.asyncio import Redis

from driftline.api.main import create_app
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator

pytestmark = pytest.mark.integration

INVALID = [
    b"this is not JSON",
    b'{"device_id": "sensor-001", "readings": {}}',  # no event_id, no ts
    b'{"event_id": "x1", "device_id": "sensor-001", "ts": "2026-01-01T00:00:00Z", '
    b'"readings": {"temperature": "NaN"}}',
    b'{"event_id": "x2", "device_id": "sensor-001", "ts": "2026-01-01T00:00:00", "readings": {}}',
]


def latest_meta(settings: Settings) -> dict[str, Any] | None:
    async def read() -> dict[str, Any] | None:
        redis = Redis.from_url(settings.redis_url)
        try:
            registry = settings.registry(redis)
            versions = await registry.versions(settings.model_name)
            return versions[-1] if versions else None
        finally:
            await redis.aclose()

    return asyncio.run(read())


def read_dlq(settings: Settings, expected: int, timeout: float = 20.0) -> list[Any]:
    consumer = KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer)
        # a little longer: more than expected would be a bug too
        records.extend(consumer)
    finally:
        consumer.close()
    return records


def test_simulated_events_are_learned_exactly_once_and_served(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    worker = start_worker(settings)
    k = 600
    events = list(SensorSimulator(devices=4, seed=11).events(k))
    with SensorProducer(settings) as producer:
        for i, event in enumerate(events):
            producer.send(event)
            if i % 150 == 0:
                producer.send_raw(b"sensor-001", INVALID[i // 150])

    meta = wait_for(
        lambda: (m := latest_meta(settings)) and m["events_learned"] >= k and m,
        timeout=90,
        what=f"a snapshot with {k} events learned",
    )
    time.sleep(2 * settings.snapshot_every_seconds)  # any extra learning would show by now
    meta = latest_meta(settings)
    assert meta is not None
    assert meta["events_learned"] == k, worker.log_tail()
    assert meta["version"] >= 1

    dead = read_dlq(settings, expected=len(INVALID))
    assert sorted(r.value for r in dead) == sorted(INVALID)
    reasons = {r.value: dict(r.headers)["dl-reason"].decode() for r in dead}
    assert reasons[INVALID[0]] == "not_json"
    assert {reasons[v] for v in INVALID[1:]} == {"invalid"}
    for record in dead:
        headers = dict(record.headers)
        assert headers["dl-message"], "every rejection says why"
        assert headers["dl-source"].decode().startswith(f"{settings.events_topic}:")

    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/predict",
            json={
                "device_id": "sensor-001",
                "readings": {"temperature": 22.0, "humidity": 45.0, "vibration": 0.4, "voltage": 231.0},
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] >= 1
        assert body["model"] == settings.model_name
        assert isinstance(body["prediction"], float)
        # the device's own history is in the features: its rolling mean is not just this reading
        assert body["features"]["temperature_mean_10"] != pytest.approx(22.0)


def test_worker_resumes_after_sigkill_without_losing_or_double_counting(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    events = list(SensorSimulator(devices=3, seed=5).events(900))
    worker = start_worker(settings)
    with SensorProducer(settings) as producer:
        for event in events[:450]:
            producer.send(event)
    wait_for(
        lambda: (m := latest_meta(settings)) and m["events_learned"] > 0,
        timeout=90,
        what="the first snapshot",
    )
    worker.kill()
    with SensorProducer(settings) as producer:
        for event in events[450:]:
            producer.send(event)
        # a retrying device: the same events again must not be learned twice
        for event in events[440:460]:
            producer.send(event)
    start_worker(settings)
    wait_for(
        lambda: (m := latest_meta(settings)) and m["events_learned"] >= 900,
        timeout=120,
        what="900 events learned after the restart",
    )
    time.sleep(2 * settings.snapshot_every_seconds)
    meta = latest_meta(settings)
    assert meta is not None and meta["events_learned"] == 900
