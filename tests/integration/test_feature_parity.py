"""No training/serving skew: the stream (even across a SIGKILL) and POST /predict compute exactly
the features that the featurizer computes straight through."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from redis.asyncio import Redis

from driftline.api.main import create_app
from driftline.core.records import FeatureRecord, decode
from driftline.kafka import SensorProducer, ensure_topics
from driftline.models.learner import OnlineLearner
from driftline.settings import Settings
from driftline.simulator import SensorSimulator
from driftline.streams.checkpoint import save_checkpoint
from driftline.streams.features import DeviceState
from driftline.streams.ingest import IngestStage

pytestmark = pytest.mark.integration


def events(n: int = 240) -> list[dict[str, Any]]:
    """Three devices, with missing readings (imputed) and an out-of-order event per device."""
    out = list(SensorSimulator(devices=3, seed=21, missing_rate=0.1).events(n))
    for i in range(30, n - 3, 60):  # swap neighbours of one device: out of order, within lateness
        out[i], out[i + 3] = out[i + 3], out[i]
    return out


def straight_through(
    settings: Settings, evs: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, float]], list[dict[str, DeviceState]]]:
    """(a) Features per event id from the pure stage, and every device's state before each event."""
    stage = IngestStage(
        models=(settings.model_name,),
        target=settings.target,
        max_message_bytes=settings.max_message_bytes,
        features=settings.features,
        catalog=settings.catalog(),
    )
    features: dict[str, dict[str, float]] = {}
    states_before: list[dict[str, DeviceState]] = []
    now_ms = int(time.time() * 1000)
    for offset, event in enumerate(evs):
        states_before.append(
            {d: DeviceState.from_json(json.loads(json.dumps(s.to_json()))) for d, s in stage.devices.items()}
        )
        (record,) = stage.handle(json.dumps(event).encode(), 0, offset, now_ms)
        assert isinstance(record, FeatureRecord), record
        features[event["event_id"]] = record.features
    return features, states_before


def stream_features(settings: Settings, expected: int, wait_for: Any) -> dict[str, dict[str, float]]:
    consumer = KafkaConsumer(
        settings.features_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    seen: dict[str, dict[str, float]] = {}
    replays: list[tuple[str, dict[str, float]]] = []

    def drain() -> bool:
        for message in consumer:
            for record in decode(message.value):
                assert isinstance(record, FeatureRecord)
                if record.event_id in seen:
                    replays.append((record.event_id, record.features))
                else:
                    seen[record.event_id] = record.features
        return len(seen) >= expected

    try:
        wait_for(drain, timeout=120, what=f"{expected} feature records")
    finally:
        consumer.close()
    for event_id, features in replays:  # re-emitted after the kill: must be the very same
        assert features == seen[event_id], event_id
    return seen


async def store_state(settings: Settings, device: str, state: DeviceState | None) -> None:
    """Put ``state`` where the stream keeps the device's state (none: the device is new)."""
    redis = Redis.from_url(settings.redis_url)
    try:
        if state is None:
            await redis.delete(f"{settings.namespace}:device:{device}")
        else:
            await save_checkpoint(redis, settings.keys, "t", "id", {}, {device: state})
    finally:
        await redis.aclose()


def test_stream_with_sigkill_and_serving_compute_identical_features(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    settings = make_settings(events_partitions=2, batch_size=20)
    ensure_topics(settings)
    evs = events()
    expected, states_before = straight_through(settings, evs)

    # (b) through the worker, killed with SIGKILL halfway and restarted
    worker = start_worker(settings)
    with SensorProducer(settings) as producer:
        for event in evs[:120]:
            producer.send(event)
    stream_features(settings, 40, wait_for)
    worker.kill()
    with SensorProducer(settings) as producer:
        for event in evs[120:]:
            producer.send(event)
    start_worker(settings)
    assert stream_features(settings, len(evs), wait_for) == expected

    # (c) reading by reading through POST /predict, each from the state the stream had before it
    learner = OnlineLearner.create(settings.model_specs()[0])
    learner.feature_schema = settings.features.schema_hash()

    async def publish() -> None:
        redis = Redis.from_url(settings.redis_url)
        await settings.registry(redis).publish(learner)
        await redis.aclose()

    asyncio.run(publish())
    with TestClient(create_app(settings)) as client:
        for event, before in zip(evs, states_before, strict=True):
            device = event["device_id"]
            asyncio.run(store_state(settings, device, before.get(device)))
            response = client.post(
                "/predict",
                json={
                    "device_id": device,
                    "readings": event["readings"],
                    "ts": datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).isoformat(),
                },
            )
            assert response.status_code == 200, response.text
            assert response.json()["features"] == expected[event["event_id"]], event["event_id"]
