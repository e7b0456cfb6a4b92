"""POST /events: validated before Kafka, protected by an API key, never a 500."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from driftline.api.main import create_app
from driftline.core.errors import ServiceUnavailable
from driftline.kafka import SensorProducer, ensure_topics

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "test-key-1"}


def event(i: int, **changes: Any) -> dict[str, Any]:
    return {
        "event_id": f"api-{i}",
        "device_id": "dev-api",
        "ts": "2026-01-01T00:00:00Z",
        "readings": {"temperature": 20.0 + i},
        **changes,
    }


def consume(settings: Any, expected: int) -> list[Any]:
    consumer = KafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + 15
    while len(records) < expected and time.monotonic() < deadline:
        records.extend(consumer)
    records.extend(consumer)
    consumer.close()
    return records


def test_a_batch_is_validated_and_only_valid_events_reach_kafka(make_settings: Any) -> None:
    settings = make_settings(api_keys="test-key-1,test-key-2")
    ensure_topics(settings)
    batch = [event(1), event(2, readings={"temperature": "hot"}), event(3), {"nonsense": True}]
    with TestClient(create_app(settings)) as client:
        response = client.post("/events", json=batch, headers=KEY)
        single = client.post("/events", json=event(4), headers={"X-API-Key": "test-key-2"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert body["errors"][0]["errors"][0]["loc"] == ["readings", "temperature"]
    assert single.status_code == 202 and single.json()["accepted"] == 1
    records = consume(settings, 3)
    assert sorted(json.loads(r.value)["event_id"] for r in records) == ["api-1", "api-3", "api-4"]
    assert {r.key for r in records} == {b"dev-api"}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, [event(1)], 401),
        ({"X-API-Key": "wrong"}, [event(1)], 401),
        (KEY, [{"device_id": "x"}], 422),
        (KEY, [], 422),
        (KEY, [event(i) for i in range(6)], 413),
    ],
)
def test_bad_requests_get_4xx_with_a_message(
    make_settings: Any, headers: dict[str, str], body: Any, status: int
) -> None:
    settings = make_settings(api_keys="test-key-1", max_batch_events=5)
    with TestClient(create_app(settings)) as client:
        response = client.post("/events", json=body, headers=headers)
    assert response.status_code == status
    assert response.json()


def test_not_json_is_a_422(make_settings: Any) -> None:
    with TestClient(create_app(make_settings(api_keys="test-key-1"))) as client:
        response = client.post(
            "/events", content=b"{not json", headers={**KEY, "content-type": "application/json"}
        )
    assert response.status_code == 422


def test_unreachable_broker_is_a_503_for_the_api_and_a_clear_error_for_the_producer(
    make_settings: Any,
) -> None:
    settings = make_settings(api_keys="test-key-1", kafka_url="kafka://127.0.0.1:1", kafka_connect_timeout=1)
    with TestClient(create_app(settings)) as client:
        response = client.post("/events", json=[event(1)], headers=KEY)
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="Kafka at 127.0.0.1:1 is unreachable"):
        SensorProducer(settings)
    assert time.monotonic() - started < 10
