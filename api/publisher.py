"""``POST /events``: validate before Kafka, publish with acks=all, answer with counts.

The producer (kafka-python) is created on first use: the API serves predictions without a broker,
and says 503 for writes while none answers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from driftline.kafka import SensorProducer
from driftline.settings import Settings
from driftline.streams.schema import SensorEvent


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
        """Validate every item; publish the valid ones as sent; return counts and per-item errors."""
        valid: list[tuple[str, bytes]] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                event = SensorEvent.model_validate(item)
            except ValidationError as exc:
                errors.append({"index": index, "errors": exc.errors(include_url=False, include_input=False)})
                continue
            valid.append((event.device_id, json.dumps(item, separators=(",", ":")).encode()))
        if valid:
            producer = await self.producer()
            for device_id, value in valid:
                producer.send_raw(device_id.encode(), value)
            # acks=all before we answer 202: an accepted event is on the broker.
            await run_in_threadpool(producer.flush, self.settings.kafka_connect_timeout * 3)
        return {"accepted": len(valid), "rejected": len(errors), "errors": errors}

    async def close(self) -> None:
        if self._producer is not None:
            await run_in_threadpool(self._producer.close)
