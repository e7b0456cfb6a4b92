"""The MQTT bridge against a real MQTT broker and the real Kafka broker."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer

from driftline.embedded import EmbeddedMqtt, port_open
from driftline.kafka import ensure_topics
from driftline.mqtt_bridge import run_bridge
from driftline.streams.schema import SensorEvent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MQTT broker at DRIFTLINE_TEST_MQTT_URL (default 127.0.0.1:1883) if it answers, else amqtt."""
    url = os.environ.get("DRIFTLINE_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
    parsed = urlparse(url)
    if port_open(parsed.hostname or "127.0.0.1", parsed.port or 1883):
        yield url
        return
    broker = EmbeddedMqtt(log_dir=Path(tmp_path_factory.mktemp("mqtt"))).start()
    try:
        yield broker.url
    finally:
        broker.stop()


def test_bridge_forwards_every_mqtt_message_and_fills_what_devices_leave_out(
    make_settings: Any, mqtt_url: str, wait_for: Any
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    run = uuid.uuid4().hex[:8]
    device = f"mq-{run}"
    stop, ready = threading.Event(), threading.Event()
    results: list[Any] = []
    bridge = threading.Thread(
        target=lambda: results.append(
            run_bridge(settings, mqtt_url, topics=(f"sensors/{device}/#",), stop=stop, ready=ready)
        )
    )
    bridge.start()
    try:
        assert ready.wait(20), "the bridge subscribed"
        full = {
            "event_id": f"{device}-1",
            "device_id": device,
            "ts": "2026-01-01T00:00:00Z",
            "readings": {"temperature": 20.5},
            "target": 1.5,
        }
        sent = [
            (f"sensors/{device}", json.dumps(full).encode()),
            (f"sensors/{device}", b'{"temperature": 21.0, "humidity": null}'),
            (f"sensors/{device}/vibration", b"0.42"),
            (f"sensors/{device}", b"\x00 definitely not json"),
        ]
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        host, port = urlparse(mqtt_url).hostname or "127.0.0.1", urlparse(mqtt_url).port or 1883
        publisher.connect(host, port)
        publisher.loop_start()
        for topic, payload in sent:
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()

        consumer = KafkaConsumer(
            settings.events_topic,
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=1000,
        )
        records: list[Any] = []
        wait_for(lambda: records.extend(consumer) or len(records) >= 4, timeout=30, what="4 events in Kafka")
        records.extend(consumer)
        consumer.close()
    finally:
        stop.set()
        bridge.join(15)
    assert not bridge.is_alive(), "the bridge stops when asked"
    assert results and results[0].forwarded == 4
    assert len(records) == 4
    assert {r.key for r in records} == {device.encode()}
    values = [r.value for r in sorted(records, key=lambda r: r.offset)]  # one device: one partition
    assert json.loads(values[0]) == full
    readings_only = SensorEvent.model_validate_json(values[1])
    assert readings_only.device_id == device and readings_only.readings == {
        "temperature": 21.0,
        "humidity": None,
    }
    bare = SensorEvent.model_validate_json(values[2])
    assert bare.readings == {"vibration": 0.42}
    assert values[3] == b"\x00 definitely not json", "unreadable payloads are forwarded unchanged"
