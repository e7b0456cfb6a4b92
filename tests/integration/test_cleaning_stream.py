"""A dirty stream through the real broker: every event accounted for, exactly, even across SIGKILL."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from driftline.api.main import create_app
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC) - timedelta(hours=2)


def event(device: str, i: int, seconds: float, **readings: float | None) -> bytes:
    values: dict[str, float | None] = {
        "temperature": 20.0 + i % 5,
        "humidity": 50.0,
        "vibration": 0.3,
        "voltage": 230.0,
    }
    values.update(readings)
    return json.dumps(
        {
            "event_id": f"{device}-{i:04d}",
            "device_id": device,
            "ts": (T0 + timedelta(seconds=seconds)).isoformat(),
            "readings": values,
            "target": 1.0 + 0.1 * (i % 5),
        }
    ).encode()


def dirty_stream() -> tuple[list[tuple[bytes, bytes]], dict[str, int], Counter[str]]:
    """(key, value) messages in order, the counters they must produce, and the DLQ reasons."""
    messages: list[tuple[bytes, bytes]] = []
    for device in ("mix-a", "mix-b"):
        key = device.encode()
        valid = [event(device, i, 10 * i) for i in range(20)]
        messages += [(key, v) for v in valid]  # 20 valid
        messages += [(key, v) for v in valid[:3]]  # 3 duplicates
        messages += [
            (key, event(device, 100 + i, 200 + 10 * i, temperature=None))  # 2 missing: imputed
            for i in range(2)
        ]
        messages.append((key, event(device, 200, 230, vibration=50.0)))  # rejected: range
        messages.append((key, event(device, 201, 240, temperature=500.0)))  # clipped, accepted
        messages.append((key, event(device, 202, 240 - 3600)))  # late
        messages.append((key, event(device, 203, 3 * 3600)))  # future
        messages.append((key, b"\x00\x01 not json"))  # not JSON
    messages.append(
        (b"mix-a", b'{"event_id": "big", "device_id": "mix-a", "pad": "' + b"x" * 2_000_000 + b'"}')
    )  # 2 MB
    expected = {
        "received": 2 * 30 + 1,
        "accepted": 2 * 23,
        "deduplicated": 2 * 3,
        "rejected": 2 * 3 + 1,
        "late": 2,
        "imputed": 2 * 2,
        "clipped": 2,
    }
    reasons = Counter({"out_of_range": 2, "future": 2, "not_json": 2, "too_large": 1, "late": 2})
    return messages, expected, reasons


def publish(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    with SensorProducer(settings, max_request_size=4 * 1024 * 1024) as producer:
        for key, value in messages:
            producer.send_raw(key, value)


def read_dlq(settings: Settings, expected: int, wait_for: Any) -> list[Any]:
    consumer = KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    records: list[Any] = []
    try:
        wait_for(
            lambda: records.extend(consumer) or len(records) >= expected,
            timeout=30,
            what=f"{expected} dead letters",
        )
        records.extend(consumer)
    finally:
        consumer.close()
    return records


def check_accounting(settings: Settings, wait_for: Any, expected: dict[str, int]) -> dict[str, Any]:
    with TestClient(create_app(settings)) as client:
        stats = wait_for(
            lambda: (s := client.get("/stats").json())["totals"]["received"] >= expected["received"] and s,
            timeout=90,
            what="every message received",
        )
        learned = wait_for(
            lambda: (
                (m := client.get("/models").json())
                and m[0]["meta"]
                and m[0]["meta"]["events_learned"] >= expected["accepted"]
                and m[0]["meta"]["events_learned"]
            ),
            timeout=60,
            what="the accepted events learned",
        )
        metrics = client.get("/metrics").text
        device = client.get("/devices/mix-a/stats").json()
        unknown = client.get("/devices/nobody/stats")
    # non-JSON and oversized messages name no device: they count in the totals only
    assert device["counts"] == {
        "accepted": 23,
        "deduplicated": 3,
        "rejected": 2,
        "late": 1,
        "imputed": 2,
        "clipped": 1,
        "rejected:out_of_range": 1,
        "rejected:future": 1,
    }
    assert unknown.status_code == 404
    assert stats["totals"] == expected
    assert stats["balanced"] is True
    assert learned == expected["accepted"], "only accepted events reach the model, each once"
    assert 'driftline_ingest_events_total{outcome="late"} 2.0' in metrics
    return stats


@pytest.mark.parametrize("kill_midway", [False, True], ids=["clean-run", "sigkill-and-restart"])
def test_every_event_is_accounted_for_exactly(
    make_settings: Any, start_worker: Any, wait_for: Any, kill_midway: bool
) -> None:
    settings = make_settings(events_partitions=2)
    ensure_topics(settings)
    messages, expected, reasons = dirty_stream()
    worker = start_worker(settings)
    if kill_midway:
        half = len(messages) // 2
        publish(settings, messages[:half])
        with TestClient(create_app(settings)) as client:
            wait_for(
                lambda: client.get("/stats").json()["totals"]["received"] > 0,
                timeout=90,
                what="the first checkpoint",
            )
        worker.kill()
        publish(settings, messages[half:])
        start_worker(settings)
    else:
        publish(settings, messages)

    stats = check_accounting(settings, wait_for, expected)
    assert stats["rejected_by_reason"] == {"future": 2, "not_json": 2, "out_of_range": 2, "too_large": 1}

    dead = read_dlq(settings, sum(reasons.values()), wait_for)
    assert Counter(dict(r.headers)["dl-reason"].decode() for r in dead) == reasons
    originals = {value for _, value in messages}
    assert all(r.value in originals for r in dead), "the DLQ holds the original bytes"
    big = [r for r in dead if dict(r.headers)["dl-reason"] == b"too_large"]
    assert len(big[0].value) > 2_000_000
    for record in dead:
        topic, partition, offset = dict(record.headers)["dl-source"].decode().rsplit(":", 2)
        assert topic == settings.events_topic and int(partition) >= 0 and int(offset) >= 0
