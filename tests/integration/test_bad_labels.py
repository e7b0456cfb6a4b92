"""A label of the wrong type, through the real broker, Redis and worker: the event's own text
target for a regression model is refused at ingest (DLQ ``label_type``), a record that still
makes River fail is dead-lettered by the learn stage (``learn_failed``), and the worker goes on
learning everything else."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from redis.asyncio import Redis

from driftline.core import records
from driftline.core.records import FeatureRecord
from driftline.kafka import SensorProducer, ensure_topics
from driftline.models.learner import OnlineLearner
from driftline.settings import Settings

pytestmark = pytest.mark.integration

START = 1_780_000_000.0  # in the past: no event is "from the future"


def event(i: int, target: Any) -> dict[str, Any]:
    return {
        "event_id": f"bad-labels-{i:04d}",
        "device_id": "bl-1",
        "ts": START + i,
        "readings": {"temperature": 20.0 + (i % 7) * 0.5, "voltage": 230.0 - (i % 5)},
        "target": target,
    }


def learner(settings: Settings) -> OnlineLearner | None:
    async def read() -> OnlineLearner | None:
        redis = Redis.from_url(settings.redis_url)
        try:
            registry = settings.registry(redis)
            if "default" not in await registry.model_names():
                return None
            loaded, _ = await registry.load("default")
            return loaded
        finally:
            await redis.aclose()

    return asyncio.run(read())


def learned(settings: Settings, wait_for: Any, seen: int) -> OnlineLearner:
    found = wait_for(
        lambda: (got := learner(settings)) is not None and got.events_seen >= seen and got,
        timeout=60,
        what=f"a snapshot of 'default' with {seen} events seen",
    )
    assert isinstance(found, OnlineLearner)
    return found


def test_a_label_of_the_wrong_type_is_dead_lettered_and_the_worker_learns_on(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    worker = start_worker(settings)
    with SensorProducer(settings) as producer:
        for i in range(101):
            producer.send(event(i, "high" if i == 50 else 1.0 + 0.1 * (i % 10)))
        producer.flush()
    # A record the ingest check would have refused, as an older or foreign writer might send it:
    # the learn stage must fail on it alone, between two good records of the same message.
    bad = [
        FeatureRecord("default", "bl-x", f"direct-{i}", START + 200 + i, {"temperature": 20.0}, t, 99, i)
        for i, t in enumerate([1.5, "high", 2.5])
    ]
    direct = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    direct.send(settings.features_topic, key=b"default", value=records.encode("default", bad)).get(30)
    direct.close()

    model = learned(settings, wait_for, seen=101 + 3)
    assert model.events_learned == 100 + 2, "every good event learned, the refused one unlabelled"
    assert model.records_failed == 1

    consumer = KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    dead: list[Any] = []
    wait_for(lambda: dead.extend(consumer) or len(dead) >= 2, timeout=30, what="2 dead letters")
    consumer.close()
    headers = sorted((dict(r.headers) for r in dead), key=lambda h: h["dl-reason"])
    assert [h["dl-reason"] for h in headers] == [b"label_type", b"learn_failed"]
    refused, failed = headers
    assert b"learns a finite number, got text 'high'" in refused["dl-message"]
    assert refused["dl-source"].startswith(settings.events_topic.encode())
    assert b"event 'direct-1' (events/99:1:0): TypeError" in failed["dl-message"]
    assert failed["dl-source"].startswith(settings.features_topic.encode()) and failed["dl-item"] == b"1"

    # Alive and learning: one more event is learned.
    assert worker.process.poll() is None
    with SensorProducer(settings) as producer:
        producer.send(event(101, 2.0))
        producer.flush()
    assert learned(settings, wait_for, seen=101 + 3 + 1).events_learned == 100 + 2 + 1
