"""Kafka plumbing on kafka-python: topic creation, topic ids and the sensor-event producer."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from driftline.core.errors import ServiceUnavailable
from driftline.settings import Settings

log = logging.getLogger(__name__)


def topic_plan(settings: Settings) -> dict[str, int]:
    """The topics driftline uses and their partition counts."""
    return {
        settings.events_topic: settings.events_partitions,
        settings.features_topic: settings.features_partitions,
        settings.dlq_topic: settings.events_partitions,
        settings.labels_topic: settings.labels_partitions,
        settings.alerts_topic: 1,
        settings.model_events_topic: 1,
    }


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic settings driftline asks for when it creates a topic: the dead-letter topic keeps its
    messages for ``dlq_retention_hours`` (long enough to look into, never for good)."""
    retention_ms = int(settings.dlq_retention_hours * 3600 * 1000)
    return {settings.dlq_topic: {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}}


def _admin(settings: Settings, timeout: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap,
                client_id="driftline-admin",
                request_timeout_ms=10_000,
            )
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise ServiceUnavailable("Kafka", settings.kafka_bootstrap, str(exc)) from exc
            time.sleep(0.5)


def ensure_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create missing topics explicitly (never rely on auto-create); return ``{topic: topic_id}``.

    Topic ids let stages tell a recreated topic (e.g. after the embedded broker restarted and
    lost everything) from the one their checkpointed offsets refer to.
    """
    plan = topic_plan(settings)
    admin = _admin(settings, timeout)
    try:
        existing = set(admin.list_topics())
        configs = topic_configs(settings)
        missing = [
            NewTopic(name, partitions, settings.replication_factor, topic_configs=configs.get(name, {}))
            for name, partitions in plan.items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
                log.info("created topics %s", [t.name for t in missing])
            except TopicAlreadyExistsError:
                pass  # another process created them first
        return topic_ids(admin, plan)
    finally:
        admin.close()


def topic_ids(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, str]:
    return {t["name"]: str(t.get("topic_id") or "") for t in admin.describe_topics(list(topics))}


class SensorProducer:
    """Publishes sensor events to ``sensor-events``, keyed by device so each device stays in order.

    acks=all and idempotence: a retry after a network error never writes an event twice.
    While the broker is unreachable, sends are buffered and delivered when it is back.

    Raises :class:`~driftline.core.errors.ServiceUnavailable` when the broker cannot be reached,
    and from :meth:`flush` (so on leaving a ``with`` block) when any event sent since the last
    flush was given up undelivered (the broker unreachable past the delivery timeout): a
    producer never loses an event silently.
    """

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.topic = settings.events_topic
        config: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "batch_size": 64 * 1024,
            "client_id": "driftline-producer",
            "bootstrap_timeout_ms": int(settings.kafka_connect_timeout * 1000),
            # never block a caller for long on a full buffer or missing metadata
            "max_block_ms": int(settings.kafka_connect_timeout * 1000),
            **overrides,
        }
        try:
            self._producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise ServiceUnavailable("Kafka", settings.kafka_bootstrap, str(exc)) from exc
        # Delivery fails in the producer's own thread; flush() reports it to the caller.
        self._lock = threading.Lock()
        self._undelivered = 0
        self._last_error: BaseException | None = None

    def send(self, event: dict[str, Any]) -> None:
        """Queue one event (a JSON-able dict with ``device_id``)."""
        self.send_raw(str(event["device_id"]).encode(), json.dumps(event).encode())

    def send_batch(self, events: list[dict[str, Any]]) -> None:
        """Queue several events of one device as one message (a JSON array): far fewer messages
        for the broker and the stream to handle when a gateway reports many readings at once."""
        if events:
            self.send_raw(str(events[0]["device_id"]).encode(), json.dumps(events).encode())

    def send_raw(
        self,
        key: bytes | None,
        value: bytes,
        topic: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Queue raw bytes as they are: what a device that sends bad data would do.

        Returns kafka-python's future for the record (``.succeeded()``, ``.exception`` once done).
        A record the producer gives up on is counted, and :meth:`flush` says so.
        """
        future = self._producer.send(topic or self.topic, key=key, value=value, headers=headers)
        future.add_errback(self._given_up)
        return future

    def _given_up(self, exc: BaseException) -> None:
        with self._lock:
            self._undelivered += 1
            self._last_error = exc

    def send_acknowledged(
        self, records: list[tuple[bytes | None, bytes]], timeout: float, topic: str | None = None
    ) -> None:
        """Send ``(key, value)`` records (to the events topic, or ``topic``) and return once the
        broker acknowledged every one of them (acks=all), blocking the calling thread up to about
        ``timeout`` seconds in all.

        Raises :class:`~driftline.core.errors.ServiceUnavailable` when a record is refused or not
        acknowledged in time. Records may still have been written then (the producer retries in
        the background): a client that retries may send an event twice, which the ingest stage
        drops by its ``event_id``.
        """
        deadline = time.monotonic() + timeout
        try:
            futures = [
                self._producer.send(topic or self.topic, key=key, value=value) for key, value in records
            ]
            for future in futures:
                future.get(timeout=max(deadline - time.monotonic(), 0.001))
        except KafkaError as exc:
            raise ServiceUnavailable(
                "Kafka", self.settings.kafka_bootstrap, f"records not acknowledged: {exc!r}"
            ) from exc

    def send_label(self, event_id: str, label: float | bool | str, model: str | None = None) -> None:
        """Queue the ground truth for an event sent earlier (to ``sensor-labels``)."""
        body: dict[str, Any] = {"event_id": event_id, "label": label}
        if model is not None:
            body["model"] = model
        self.send_raw(event_id.encode(), json.dumps(body).encode(), self.settings.labels_topic)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Deliver everything sent; raise if anything sent since the last flush was not."""
        self._producer.flush(timeout)
        with self._lock:
            undelivered, error = self._undelivered, self._last_error
            self._undelivered, self._last_error = 0, None
        if undelivered:
            raise ServiceUnavailable(
                "Kafka", self.settings.kafka_bootstrap, f"{undelivered} message(s) not delivered: {error}"
            )

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued and close; ``timeout``: the longest to wait (``None``: until sent)."""
        try:
            self._producer.close(timeout)
        except KafkaTimeoutError:
            # kafka-python gives up closing while records wait for a broker that is gone (and
            # tries again, noisily, when the producer is collected). They were never acknowledged
            # (whoever sent them was told so): its sender is stopped without them, as
            # kafka-python's own close does once it has flushed.
            log.warning(
                "Kafka producer closed with records unsent: no broker acknowledged them in %ss", timeout
            )
            sender = getattr(self._producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(timeout)

    def __enter__(self) -> SensorProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush()
        finally:
            self.close()
