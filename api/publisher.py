"""``POST /events`` and ``POST /labels``: validate before Kafka, publish with acks=all, answer with counts.

The producer (kafka-python) is created on first use: the API serves predictions without a broker,
and says 503 for writes while none answers. Everything that may block on the broker (creating the
producer, sending, waiting for acknowledgements) runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from driftline.kafka import SensorProducer
from driftline.settings import Settings
from driftline.streams.schema import LabelEvent, SensorEvent


class EventPublisher:
    """One shared producer for the API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: SensorProducer | None = None
        self._lock = asyncio.Lock()

    async def producer(self) -> SensorProducer:
        async with self._lock:
            if self._producer is None:
                self._producer = await run_in_threadpool(SensorProducer, self.settings)
            return self._producer

    async def publish(self, items: list[Any]) -> dict[str, Any]:
        """Validate every item; publish the valid ones; return counts and per-item errors.

        Returns only once the broker acknowledged every valid item (acks=all); raises
        :class:`~driftline.core.errors.ServiceUnavailable` if it did not within
        ``events_ack_timeout`` seconds, or when no broker answers.
        """
        return await self._publish(items, _event_record, self.settings.events_topic)

    async def publish_labels(self, items: list[Any]) -> dict[str, Any]:
        """As :meth:`publish`, for labels: each validated as the labels topic's consumer does
        (:class:`LabelEvent`), the valid ones sent to the labels topic keyed by their event id."""
        return await self._publish(items, _label_record, self.settings.labels_topic)

    async def _publish(
        self, items: list[Any], record: Callable[[Any], tuple[bytes, bytes]], topic: str
    ) -> dict[str, Any]:
        valid: list[tuple[bytes | None, bytes]] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                valid.append(record(item))
            except ValidationError as exc:
                errors.append({"index": index, "errors": exc.errors(include_url=False, include_input=False)})
        if valid:
            producer = await self.producer()
            await run_in_threadpool(
                producer.send_acknowledged, valid, self.settings.events_ack_timeout, topic
            )
        return {"accepted": len(valid), "rejected": len(errors), "errors": errors}

    async def close(self) -> None:
        if self._producer is not None:
            # Bounded: with the broker gone, unsent records must not hold the shutdown forever.
            await run_in_threadpool(self._producer.close, self.settings.events_ack_timeout)


def _event_record(item: Any) -> tuple[bytes, bytes]:
    """A sensor event as it goes to Kafka: keyed by its device, as sent (once validated)."""
    event = SensorEvent.model_validate(item)
    return event.device_id.encode(), json.dumps(item, separators=(",", ":")).encode()


def _label_record(item: Any) -> tuple[bytes, bytes]:
    """A label as it goes to Kafka: keyed by its event id, as the labels topic's consumer reads it."""
    label = LabelEvent.model_validate(item)
    body = label.model_dump(mode="json", exclude_none=True)
    return label.event_id.encode(), json.dumps(body, separators=(",", ":")).encode()
