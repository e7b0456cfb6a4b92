"""POST /events: validated before Kafka, protected by an API key, never a 500."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from driftline.api.main import create_app
from driftline.core.errors import ServiceUnavailable
from driftline.embedded import EmbeddedBroker
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
    assert "unreachable" in response.json()["error"]["message"]
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="Kafka at 127.0.0.1:1 is unreachable"):
        SensorProducer(settings)
    assert time.monotonic() - started < 10


def raw_request(url: str, head: bytes, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Send ``head`` (and ``body``, but no more) on a raw connection; what the server answers
    within ``wait`` seconds, though the request may not be complete."""
    host, port = url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(head + body)
        with contextlib.suppress(TimeoutError):
            while not _complete(answer) and (data := connection.recv(65536)):
                answer += data
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return length is not None and len(body) >= int(length.group(1))


def test_as_deployed_the_key_comes_first_and_a_large_body_is_refused_unread(
    make_settings: Any, start_api: Any
) -> None:
    settings = make_settings(api_keys="test-key-1", events_max_bytes=64 * 1024)
    ensure_topics(settings)
    api = start_api(settings)
    head = "POST /events HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n{}\r\n"

    non_ascii = [
        httpx.post(f"{api.url}/events", json=[event(1)], headers={"X-API-Key": key}, timeout=10)
        for key in ("clé".encode(), "clé".encode("latin-1"), b"test-key-1\xff")
    ]
    # 100 MB announced, none sent: the answers come without waiting for them
    anonymous = raw_request(api.url, head.format("Content-Length: 100000000\r\n").encode())
    declared = raw_request(
        api.url, head.format("X-API-Key: test-key-1\r\nContent-Length: 100000000\r\n").encode()
    )
    # chunked, no length: refused once 64 KiB have come, though the body never ends
    chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"
    streamed = raw_request(
        api.url, head.format("X-API-Key: test-key-1\r\nTransfer-Encoding: chunked\r\n").encode(), chunk * 3
    )
    accepted = httpx.post(f"{api.url}/events", json=[event(1), event(2)], headers=KEY, timeout=20)

    assert [r.status_code for r in non_ascii] == [401, 401, 401]
    assert anonymous.startswith(b"HTTP/1.1 401"), anonymous
    assert declared.startswith(b"HTTP/1.1 413"), declared
    assert b"DRIFTLINE_EVENTS_MAX_BYTES" in declared
    assert streamed.startswith(b"HTTP/1.1 413"), streamed
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 2
    # acknowledged by the broker before the 202: on the topic already
    assert sorted(json.loads(r.value)["event_id"] for r in consume(settings, 2)) == ["api-1", "api-2"]


def test_with_the_broker_gone_events_are_503_within_the_ack_timeout_not_202(
    make_settings: Any, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(log_dir=tmp_path).start()
    try:
        settings = make_settings(
            api_keys="test-key-1", kafka_url=broker.url, events_ack_timeout=2, kafka_connect_timeout=2
        )
        ensure_topics(settings)
        with TestClient(create_app(settings)) as client:
            first = client.post("/events", json=[event(1)], headers=KEY)
            assert broker.process is not None
            broker.process.kill()  # gone at once, as a crashed broker is
            broker.process.wait()
            started = time.monotonic()
            gone = client.post("/events", json=[event(2)], headers=KEY)
            took = time.monotonic() - started
            predict = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 1.0}})
    finally:
        broker.stop()
    assert first.status_code == 202
    assert gone.status_code == 503, gone.text
    assert gone.json()["error"]["message"] == "Kafka is unreachable; retry shortly"
    assert broker.address not in gone.text
    assert took < 2 + 2 + 2  # the ack timeout, plus the producer's wait for metadata, plus slack
    assert (
        predict.status_code == 503 and "no snapshot yet" in predict.json()["error"]["message"]
    )  # reads still answer
