"""``driftline mqtt-bridge``: MQTT topics in, Kafka ``sensor-events`` out, at least once.

Devices publish to ``sensors/<device_id>`` (a JSON event, a JSON object of readings, or a JSON
array of events) or to ``sensors/<device_id>/<sensor>`` (a bare number). The bridge fills in what
MQTT devices tend to leave out (device id from the topic, time of arrival, event id) and puts a
payload it cannot make an event of (empty, too large, not JSON — nested too deep included —, not
readings, no device) in the dead-letter topic with its reason, in the DLQ format of the stream
(:func:`~driftline.streams.cleaning.dead_letter_record`; ``dl-source`` is ``mqtt:<topic>``).

Delivery, at least once: the bridge subscribes at QoS 1 in a persistent session (a stable client
id, ``clean_session=False``) and acknowledges a message to the MQTT broker only once Kafka has
acknowledged its record, on ``sensor-events`` or on ``sensor-dlq``. Until then the broker keeps
the message and hands it again to the next connection of the same client id. A Kafka failure is
retried a few times (tenacity), then the bridge raises :class:`BridgeFailed` without
acknowledging; so it does when its MQTT network loop ends or the broker refuses its connection or
its subscriptions. ``driftline mqtt-bridge`` then exits non-zero for a supervisor to restart it:
the bridge never stays up forwarding nothing.

Event ids, when a device sends none: a hash of the topic and the completed event, event time
included (:func:`event_id_for`). A redelivered message with its own ``ts`` gets the id it had, so
the stream's dedupe drops the copy; equal readings at different times get different ids. A
reading without a ``ts`` is stamped with its arrival time, which a redelivery does not share: its
copy is a duplicate the stream cannot tell (a device that wants none sends ``ts`` or
``event_id``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlparse

from pydantic_core import from_json

from driftline.core.errors import BridgeFailed, ServiceUnavailable
from driftline.settings import Settings
from driftline.streams.cleaning import (
    EMPTY,
    INTERNAL,
    INVALID,
    NOT_JSON,
    TOO_LARGE,
    Rejection,
    dead_letter_record,
)
from driftline.streams.schema import describe

log = logging.getLogger(__name__)

UNKNOWN_DEVICE = b"unknown"

#: Keys of a flat readings object that are the event's own fields, not readings.
EVENT_FIELDS = frozenset({"event_id", "device_id", "ts", "target", "metadata", "schema_version"})

#: CONNACK reasons no retry can mend (bad protocol, client id, credentials, authorization, ban):
#: the bridge stops and says so instead of knocking forever.
PERMANENT_REFUSALS = frozenset({132, 133, 134, 135, 138, 140})

#: Room for a record's key, headers and framing above its value in a Kafka request.
RECORD_OVERHEAD = 64 * 1024


class Forward(NamedTuple):
    """An MQTT message as the Kafka record that carries it to ``sensor-events``."""

    key: bytes
    value: bytes


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def event_id_for(topic: str, event: dict[str, Any]) -> str:
    """An event id for an event that came without one: its device and a hash of the MQTT topic
    and the event itself, time included.

    The same message delivered again gets the same id (the stream drops the copy); equal readings
    at different times do not, because their ``ts`` differ.

    Examples
    --------
    >>> a = {"device_id": "d1", "ts": "2026-01-01T00:00:00Z", "readings": {"t": 1.0}}
    >>> b = {**a, "ts": "2026-01-01T00:00:10Z"}
    >>> event_id_for("sensors/d1", a) == event_id_for("sensors/d1", dict(a))
    True
    >>> event_id_for("sensors/d1", a) == event_id_for("sensors/d1", b)
    False
    >>> event_id_for("sensors/d1", a)[:3]
    'd1-'
    """
    content = json.dumps(
        {k: v for k, v in event.items() if k != "event_id"}, sort_keys=True, separators=(",", ":")
    )
    digest = hashlib.sha256(topic.encode() + b"\0" + content.encode()).hexdigest()[:20]
    return f"{str(event.get('device_id'))[:100]}-{digest}"


def mqtt_to_event(topic: str, payload: bytes, received_at: datetime, max_bytes: int) -> Forward | Rejection:
    """The Kafka record for one MQTT message, or why it cannot be one (for the DLQ). Never raises
    on any payload.

    Examples
    --------
    >>> at = datetime(2026, 1, 1, tzinfo=UTC)
    >>> key, value = mqtt_to_event("sensors/dev-7/temperature", b"21.5", at, 1000)
    >>> key, json.loads(value)["readings"], json.loads(value)["ts"]
    (b'dev-7', {'temperature': 21.5}, '2026-01-01T00:00:00+00:00')
    >>> mqtt_to_event("sensors/dev-7", b"\\xff garbage", at, 1000).reason
    'not_json'
    >>> mqtt_to_event("sensors/dev-7", b"[" * 5000, at, 10_000).message
    'not JSON: recursion limit exceeded at line 1 column 202'
    >>> mqtt_to_event("sensors/dev-7", b"1" * 2000, at, 1000).reason
    'too_large'
    """
    parts = topic.split("/")
    device = parts[1] if len(parts) >= 2 and parts[0] == "sensors" and parts[1] else None
    if not payload:
        return Rejection(EMPTY, "empty message")
    if len(payload) > max_bytes:
        return Rejection(TOO_LARGE, f"message is {len(payload)} bytes, the limit is {max_bytes}")
    try:
        # pydantic's parser, as the stream's: bounded depth (no RecursionError), no NaN.
        data = from_json(payload, allow_inf_nan=False)
    except ValueError as exc:  # not UTF-8, not JSON, nested too deep
        return Rejection(NOT_JSON, f"not JSON: {exc}")
    if isinstance(data, list):  # a batch of events: the stream validates each on its own
        return Forward(device.encode() if device else UNKNOWN_DEVICE, payload)
    if device and len(parts) >= 3 and _is_number(data):
        data = {"readings": {parts[2]: data}}
    if not isinstance(data, dict):
        return Rejection(
            INVALID,
            "expected a JSON object of readings, a number on sensors/<device>/<sensor> or a JSON "
            f"array of events, got {describe(data)}",
        )
    if "readings" not in data:
        readings = {k: v for k, v in data.items() if k not in EVENT_FIELDS}
        odd = next((k for k, v in readings.items() if v is not None and not _is_number(v)), None)
        if odd is not None:
            return Rejection(
                INVALID, f"reading {odd!r:.64}: expected a number or null, got {describe(readings[odd])}"
            )
        if not readings:
            return Rejection(INVALID, "no readings")
        data = {k: v for k, v in data.items() if k in EVENT_FIELDS} | {"readings": readings}
    data.setdefault("device_id", device)
    if data["device_id"] is None:
        return Rejection(
            INVALID, f"no device id: publish to sensors/<device_id>, or send device_id (topic {topic!r:.128})"
        )
    data.setdefault("ts", received_at.isoformat())
    if "event_id" not in data:
        data["event_id"] = event_id_for(topic, data)
    value = json.dumps(data, separators=(",", ":")).encode()
    if len(value) > max_bytes:
        return Rejection(TOO_LARGE, f"event is {len(value)} bytes, the limit is {max_bytes}")
    # Keyed by the event's own device: one worker owns a device's state.
    return Forward(str(data["device_id"]).encode(), value)


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    """``mqtt://user:pass@host:port`` → (host, port, user, password).

    Examples
    --------
    >>> parse_mqtt_url("mqtt://u:p@broker:1884")
    ('broker', 1884, 'u', 'p')
    """
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or 1883, parsed.username, parsed.password


@dataclass
class BridgeStats:
    forwarded: int = 0
    dead_lettered: int = 0
    connects: int = 0


@dataclass
class Arrival:
    """One MQTT message from its arrival to its acknowledgement, and the Kafka record it became."""

    mid: int
    qos: int
    #: Which connection brought it: a PUBACK goes only on that connection (a packet id means
    #: another message on the next one).
    connection: int
    mqtt_topic: str
    payload: bytes
    received_at: datetime
    topic: str = ""
    key: bytes = b""
    value: bytes = b""
    headers: list[tuple[str, bytes]] | None = None
    future: Any = None
    delivered: bool = False

    def dead_letter(self, dlq_topic: str, rejection: Rejection, max_bytes: int) -> None:
        self.topic = dlq_topic
        self.value, self.headers = dead_letter_record(
            self.payload, rejection, f"mqtt:{self.mqtt_topic}", max_bytes
        )
        log.info("dead-lettered MQTT message on %s: %s", self.mqtt_topic, rejection.message)


class KafkaForwarder:
    """Sends a batch of arrivals to Kafka and waits until Kafka acknowledged every one, retrying
    the rest; raises :class:`BridgeFailed` when Kafka keeps failing."""

    def __init__(self, settings: Settings, attempts: int = 3) -> None:
        from driftline.kafka import SensorProducer

        self.settings = settings
        self.attempts = attempts
        self.timeout = settings.kafka_connect_timeout
        timeout_ms = int(self.timeout * 1000)
        self.producer = SensorProducer(
            settings,
            client_id="driftline-mqtt-bridge",
            # A record too large to forward still goes whole (up to dlq_max_bytes) to the DLQ.
            max_request_size=max(settings.max_message_bytes, settings.dlq_max_bytes) + RECORD_OVERHEAD,
            # A broker gone away fails a send within about the connect timeout, not 2 minutes.
            request_timeout_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms + 100,
        )

    def deliver(self, batch: list[Arrival]) -> None:
        from kafka.errors import KafkaError
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception_type(KafkaError),
            before_sleep=lambda state: log.warning(
                "Kafka did not take %d records (attempt %d of %d): %s",
                sum(not a.delivered for a in batch),
                state.attempt_number,
                self.attempts,
                state.outcome.exception() if state.outcome else "",
            ),
            reraise=True,
        )
        try:
            retrying(self._send_undelivered, batch)
        except KafkaError as exc:
            raise BridgeFailed(
                f"Kafka at {self.settings.kafka_bootstrap} did not acknowledge "
                f"{sum(not a.delivered for a in batch)} records after {self.attempts} attempts "
                f"({exc!r}); their MQTT messages stay unacknowledged in the broker"
            ) from exc

    def _send_undelivered(self, batch: list[Arrival]) -> None:
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        pending = [a for a in batch if not a.delivered]
        for arrival in pending:
            try:
                arrival.future = self.producer.send_raw(
                    arrival.key, arrival.value, arrival.topic, arrival.headers
                )
            except MessageSizeTooLargeError as exc:
                self._too_large(arrival, exc)
                arrival.future = self.producer.send_raw(
                    arrival.key, arrival.value, arrival.topic, arrival.headers
                )
        with contextlib.suppress(ServiceUnavailable):
            # flush says that some records were given up on; which ones, each future says.
            self.producer.flush(self.timeout + 5)
        failure: KafkaError | None = None
        for arrival in pending:
            if arrival.future.succeeded():
                arrival.delivered = True
                continue
            error = arrival.future.exception
            if isinstance(error, MessageSizeTooLargeError) and arrival.topic != self.settings.dlq_topic:
                self._too_large(arrival, error)  # the broker's limit is lower than ours
            failure = failure or (error if isinstance(error, KafkaError) else KafkaError(repr(error)))
        if failure is not None:
            raise failure

    def _too_large(self, arrival: Arrival, error: Exception) -> None:
        arrival.dead_letter(
            self.settings.dlq_topic,
            Rejection(TOO_LARGE, f"Kafka refused the {len(arrival.value)}-byte record: {error}"),
            self.settings.dlq_max_bytes,
        )

    def close(self) -> None:
        # Bounded: after a failure, records Kafka never took must not hold the exit up.
        self.producer.close(timeout=self.timeout)


@dataclass
class _LoopState:
    connection: int = 0
    subscribed: bool = False
    closing: bool = False
    failure: str | None = None
    arrivals: queue.Queue[Arrival] = field(default_factory=queue.Queue)


def run_bridge(
    settings: Settings,
    mqtt_url: str | None = None,
    topics: tuple[str, ...] = ("sensors/#",),
    qos: int = 1,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    client_id: str | None = None,
    kafka_attempts: int = 3,
) -> BridgeStats:
    """Forward until ``stop`` is set (or Ctrl-C); reconnects to MQTT by itself.

    ``ready`` is set once the broker has acknowledged the subscriptions. Raises
    :class:`BridgeFailed` when the bridge can no longer forward (see the module docstring); what
    was not acknowledged then stays in the broker for the next run.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port, user, password = parse_mqtt_url(mqtt_url or settings.mqtt_url)
    stop = stop or threading.Event()
    stats = BridgeStats()
    state = _LoopState()
    forwarder = KafkaForwarder(settings, attempts=kafka_attempts)

    def fail(reason: str) -> None:
        if state.failure is None:
            state.failure = reason
        log.error("MQTT bridge failing: %s", reason)

    def guarded(callback: Callable[..., None]) -> Callable[..., None]:
        # An exception out of a callback ends paho's network thread and the bridge would forward
        # nothing while looking alive: turn it into a failure the main loop acts on.
        def run(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                log.exception("MQTT %s failed", callback.__name__)
                fail(f"MQTT {callback.__name__} raised {exc!r}")

        return run

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if reason.value in PERMANENT_REFUSALS:
                fail(f"the MQTT broker at {host}:{port} refused the connection: {reason}")
            else:
                log.warning("MQTT connect to %s:%s refused: %s; retrying", host, port, reason)
            return
        state.connection += 1
        stats.connects += 1
        # A resumed session keeps its subscriptions; subscribing again would make the broker
        # resend every retained message. Once per process, in case the topics changed.
        if state.subscribed and flags.session_present:
            log.info("MQTT reconnected to %s:%s, session resumed", host, port)
            return
        client.subscribe([(topic, qos) for topic in topics])
        log.info("MQTT connected to %s:%s, subscribing to %s", host, port, ", ".join(topics))

    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        refused = [
            f"{topic}: {reason}" for topic, reason in zip(topics, reasons, strict=False) if reason.is_failure
        ]
        if refused:
            fail(f"the MQTT broker refused the subscriptions {', '.join(refused)}")
            return
        state.subscribed = True
        if ready is not None:
            ready.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if state.closing:
            return  # not acknowledged: the broker gives it to the next run
        try:
            mqtt_topic = message.topic
        except UnicodeDecodeError:
            mqtt_topic = "<topic not UTF-8>"
        state.arrivals.put(
            Arrival(
                message.mid,
                message.qos,
                state.connection,
                mqtt_topic,
                bytes(message.payload),
                datetime.now(UTC),
            )
        )

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure and not state.closing:
            log.warning("MQTT connection to %s:%s lost (%s); reconnecting", host, port, reason)

    def on_connect_fail(client: Any, userdata: Any) -> None:
        log.warning("MQTT broker at %s:%s does not answer; retrying", host, port)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or settings.mqtt_client_id,
        # A persistent session: the broker keeps what this client has not acknowledged.
        clean_session=False,
        manual_ack=True,
    )
    if user:
        client.username_pw_set(user, password)
    client.on_connect = guarded(on_connect)
    client.on_message = guarded(on_message)
    client.on_subscribe = guarded(on_subscribe)
    client.on_disconnect = guarded(on_disconnect)
    client.on_connect_fail = guarded(on_connect_fail)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    # paho keeps its network thread to itself; we watch it, since nothing else tells when it ends.
    network_thread = client._thread

    def forward(batch: list[Arrival]) -> None:
        for arrival in batch:
            route(arrival)
        forwarder.deliver(batch)
        for arrival in batch:
            if arrival.topic == settings.dlq_topic:
                stats.dead_lettered += 1
            else:
                stats.forwarded += 1
            # Only now, Kafka having it, the broker may forget it. In arrival order (MQTT wants
            # PUBACKs in order), and only on the connection that brought it.
            if arrival.qos > 0 and arrival.connection == state.connection:
                client.ack(arrival.mid, arrival.qos)

    def route(arrival: Arrival) -> None:
        try:
            outcome = mqtt_to_event(
                arrival.mqtt_topic, arrival.payload, arrival.received_at, settings.max_message_bytes
            )
        except Exception as exc:  # a bug of ours: the message is kept, in the DLQ
            log.exception("mapping the MQTT message on %s failed", arrival.mqtt_topic)
            outcome = Rejection(INTERNAL, f"{type(exc).__name__}: {exc}")
        if isinstance(outcome, Rejection):
            arrival.dead_letter(settings.dlq_topic, outcome, settings.dlq_max_bytes)
        else:
            arrival.topic, (arrival.key, arrival.value) = settings.events_topic, outcome

    try:
        while True:
            if state.failure is not None:
                raise BridgeFailed(state.failure)
            if network_thread is None or not network_thread.is_alive():
                raise BridgeFailed("the MQTT network loop ended (see the error above)")
            stopping = stop.is_set()
            if stopping:
                state.closing = True  # what arrives from now on waits in the broker
            batch = _take(state.arrivals, 1000, wait=0.0 if stopping else 0.2)
            if batch:
                forward(batch)
            elif stopping:
                break
    except KeyboardInterrupt:
        pass
    finally:
        state.closing = True
        client.disconnect()
        client.loop_stop()
        forwarder.close()
        log.info(
            "bridge stopped: %d messages forwarded, %d dead-lettered", stats.forwarded, stats.dead_lettered
        )
    return stats


def _take(arrivals: queue.Queue[Arrival], most: int, wait: float) -> list[Arrival]:
    """Up to ``most`` arrivals: those waiting, or the first to come within ``wait`` seconds."""
    batch: list[Arrival] = []
    try:
        batch.append(arrivals.get(timeout=wait) if wait > 0 else arrivals.get_nowait())
        while len(batch) < most:
            batch.append(arrivals.get_nowait())
    except queue.Empty:
        pass
    return batch
