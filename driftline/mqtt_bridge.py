"""``driftline mqtt-bridge``: MQTT topics in, Kafka ``sensor-events`` out.

Devices publish to ``sensors/<device_id>`` (a JSON event, or a JSON object of readings) or to
``sensors/<device_id>/<sensor>`` (a bare number). The bridge fills in what MQTT devices tend to
leave out (device id from the topic, event id, time of arrival) and forwards anything it cannot
read **unchanged**: the stream's validation then puts it in the dead-letter topic with a reason.
The bridge itself never drops a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from driftline.settings import Settings

log = logging.getLogger(__name__)

UNKNOWN_DEVICE = b"unknown"


def mqtt_to_event(topic: str, payload: bytes, received_at: datetime) -> tuple[bytes, bytes]:
    """The Kafka (key, value) for one MQTT message.

    Examples
    --------
    >>> at = datetime(2026, 1, 1, tzinfo=UTC)
    >>> key, value = mqtt_to_event("sensors/dev-7/temperature", b"21.5", at)
    >>> key, json.loads(value)["readings"], json.loads(value)["ts"]
    (b'dev-7', {'temperature': 21.5}, '2026-01-01T00:00:00+00:00')
    >>> mqtt_to_event("sensors/dev-7", b"\\xff garbage", at)
    (b'dev-7', b'\\xff garbage')
    """
    parts = topic.split("/")
    device = parts[1] if len(parts) >= 2 and parts[0] == "sensors" and parts[1] else None
    key = device.encode() if device else UNKNOWN_DEVICE
    try:
        data = json.loads(payload)
    except ValueError:
        return key, payload
    if device is None:
        return key, payload
    if len(parts) >= 3 and isinstance(data, int | float) and not isinstance(data, bool):
        data = {"readings": {parts[2]: data}}
    if not isinstance(data, dict):
        return key, payload
    if "readings" not in data:
        numeric = {
            k: v
            for k, v in data.items()
            if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
        }
        if not numeric or len(numeric) != len(data):
            return key, payload  # not a readings object we understand: let validation say why
        data = {"readings": numeric}
    data.setdefault("device_id", device)
    data.setdefault("ts", received_at.isoformat())
    if "event_id" not in data:
        digest = hashlib.sha1(topic.encode() + b"\0" + payload, usedforsecurity=False).hexdigest()
        data["event_id"] = f"{device}-{digest[:16]}"
    return key, json.dumps(data, separators=(",", ":")).encode()


@dataclass
class BridgeStats:
    forwarded: int = 0
    connects: int = 0


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    """``mqtt://user:pass@host:port`` → (host, port, user, password).

    Examples
    --------
    >>> parse_mqtt_url("mqtt://u:p@broker:1884")
    ('broker', 1884, 'u', 'p')
    """
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883, parsed.username, parsed.password


def run_bridge(
    settings: Settings,
    mqtt_url: str | None = None,
    topics: tuple[str, ...] = ("sensors/#",),
    qos: int = 1,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> BridgeStats:
    """Forward until ``stop`` is set (or Ctrl-C); reconnects to MQTT by itself.

    ``ready`` is set once the broker has acknowledged the subscriptions.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from driftline.kafka import SensorProducer

    host, port, user, password = parse_mqtt_url(mqtt_url or settings.mqtt_url)
    stop = stop or threading.Event()
    stats = BridgeStats()
    producer = SensorProducer(settings)
    lock = threading.Lock()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect to %s:%s refused: %s", host, port, reason)
            return
        stats.connects += 1
        client.subscribe([(topic, qos) for topic in topics])
        log.info("MQTT connected to %s:%s, subscribed to %s", host, port, ", ".join(topics))

    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        if ready is not None:
            ready.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        key, value = mqtt_to_event(message.topic, bytes(message.payload), datetime.now(UTC))
        with lock:
            producer.send_raw(key, value)
            stats.forwarded += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"driftline-bridge-{port}", clean_session=True
    )
    if user:
        client.username_pw_set(user, password)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    try:
        while not stop.wait(1.0):
            producer.flush()  # at most a second between arrival and the broker's ack
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
        with lock:
            producer.flush()
            producer.close()
        log.info("bridge stopped: %d messages forwarded", stats.forwarded)
    return stats
