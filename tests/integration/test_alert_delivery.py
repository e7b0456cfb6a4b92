"""Drift alerts delivered: to the ``drift-alerts`` topic and to webhooks on real local HTTP
receivers — one healthy, one failing its first 5 requests, one that hangs — through the real
broker, worker and Redis. That the hanging one does not slow learning is timed in
``bench/alerts.py`` (a timed test is only noise on a shared machine)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer
from river.datasets import synth

from driftline.kafka import SensorProducer
from driftline.settings import Settings

from .conftest import Receiver, WorkerProcess

pytestmark = pytest.mark.integration

SEA = {
    "name": "sea",
    "task": "classification",
    "estimator": "logistic_regression",
    "drift": {"features": None, "cooldown": 500},
}


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {
        "healthy": Receiver(),
        "failing": Receiver(fail_first=5),
        "hanging": Receiver(hang=True),
        "alertmanager": Receiver(),
    }
    yield made
    for receiver in made.values():
        receiver.server.shutdown()


def a_change() -> list[dict[str, Any]]:
    rows = itertools.chain(
        itertools.islice(synth.SEA(variant=0, seed=7), 2500),
        itertools.islice(synth.SEA(variant=3, seed=8), 2500),
    )
    start = datetime.now(UTC) - timedelta(seconds=5000)
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


def recorded(settings: Settings) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(settings.redis_url)
    return [
        (json.loads(f[b"alert"])["id"], json.loads(f[b"alert"])["status"])
        for _, f in client.xrange(settings.keys.alerts())
    ]


def topic_alerts(settings: Settings) -> list[tuple[str, str]]:
    consumer = KafkaConsumer(
        settings.alerts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    try:
        return [(json.loads(m.value)["id"], json.loads(m.value)["status"]) for m in consumer]
    finally:
        consumer.close()


def test_alerts_reach_the_topic_and_every_webhook_once_a_failing_one_after_it_recovers(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    wait_for: Callable[..., object],
    receivers: dict[str, Receiver],
) -> None:
    hooks = [
        receivers["healthy"].url,
        receivers["failing"].url,
        receivers["hanging"].url,
        "alertmanager+" + receivers["alertmanager"].url,
    ]
    settings = make_settings(
        models=[SEA],
        features="raw",
        sensor_catalog="none",
        alert_webhooks=",".join(hooks),
        alert_webhook_timeout=1.0,
    )
    start_worker(settings)
    with SensorProducer(settings) as producer:
        for event in a_change():
            producer.send(event)
    wait_for(lambda: len(recorded(settings)) >= 2, 120, "the change and its resolution recorded")
    time.sleep(3)  # the last snapshot may record one more
    alerts = recorded(settings)
    assert [status for _, status in alerts] == ["firing", "resolved"], alerts
    assert len(set(alerts)) == len(alerts)
    for name in ("healthy", "failing", "alertmanager"):
        # in order, each once; the failing receiver after its 5 failures (backoff 0.5, 1, 2, 4, 8 s)
        wait_for(lambda name=name: receivers[name].received() == alerts, 60, f"every alert at {name}")
    assert receivers["failing"].requests == 5 + len(alerts)
    wait_for(lambda: topic_alerts(settings) == alerts, 30, "every alert on the drift-alerts topic, once")
    client = redis.Redis.from_url(settings.redis_url)
    counters = {k.decode(): v.decode() for k, v in client.hgetall(settings.keys.alert_delivery()).items()}
    assert counters[f"webhook:{receivers['failing'].url}|failed"] == "5"
    assert counters[f"webhook:{receivers['healthy'].url}|delivered"] == str(len(alerts))
    assert int(counters[f"webhook:{receivers['hanging'].url}|failed"]) >= 1  # timed out, retried
    assert receivers["hanging"].received() == []
