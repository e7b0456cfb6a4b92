"""The alert relay: recorded drift alerts out to Kafka (``drift-alerts``) and to webhooks.

Alerts are recorded in Redis with the snapshot that raised them (the stream ``ns:alerts``, see
docs/design.md). The relay reads that stream and hands each entry to every channel, each at its
own pace: a channel keeps its own position (``ns:alert-delivery``), retries a failed delivery
with exponential backoff until it goes through, and only then moves on, so a receiver that was
down gets every alert, in order, once it is back. A slow or dead receiver holds up only its own
channel, never learning or the other channels. One relay runs per deployment: workers take a
short lease (``ns:alert-relay``), and whoever holds it relays.

The same relay carries the registry's model events (spawns, promotions, retirements, rollbacks:
the stream ``ns:model-events``) to the ``model-events`` topic, the same way.

Delivery is at least once: a crash between a delivery and the saved position repeats that one
alert, which receivers can tell by its id (the Alertmanager body carries it as a label).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from driftline.core.keys import Keys
from driftline.core.urls import safe_url

log = logging.getLogger(__name__)

#: How long a relay's lease lasts, and how often its holder renews it (seconds).
LEASE_SECONDS = 15
RENEW_SECONDS = 5


class Channel(Protocol):
    """Somewhere alerts go."""

    @property
    def name(self) -> str:
        """Its name: its position and counters in Redis are kept under it."""

    async def deliver(self, alert: dict[str, Any]) -> None:
        """Deliver one alert, or raise."""


@dataclass
class KafkaChannel:
    """A topic (``drift-alerts``, ``model-events``): each item's JSON, keyed by its model."""

    send: Callable[[str, bytes, bytes], Awaitable[None]]
    topic: str
    name: str = "kafka"

    async def deliver(self, alert: dict[str, Any]) -> None:
        await self.send(self.topic, alert["model"].encode(), json.dumps(alert).encode())


def alertmanager_body(alert: dict[str, Any]) -> list[dict[str, Any]]:
    """The alert as Alertmanager's ``POST /api/v2/alerts`` takes it (a list of one).

    >>> body = alertmanager_body({"id": "m:error:events/0:5:0", "model": "m", "signal": "error",
    ...     "severity": "drift", "detector": "adwin", "status": "resolved", "before": 0.1, "after": 0.4,
    ...     "event_time": 0.0, "resolved_event_time": 60.0, "version": 3})
    >>> body[0]["labels"]["alertname"], body[0]["endsAt"]
    ('DriftDetected', '1970-01-01T00:01:00+00:00')
    """
    refused = alert["signal"] == "snapshot"  # a stored version refused, not a drift
    labels = {
        "alertname": "SnapshotRefused" if refused else "DriftDetected",
        "model": alert["model"],
        "signal": alert["signal"],
        "severity": alert["severity"],
        "detector": alert["detector"],
        "alert_id": alert["id"],
    }
    entry: dict[str, Any] = {
        "labels": labels,
        "annotations": {
            "summary": f"{alert['severity']} on {alert['signal']} of model {alert['model']}",
            "description": alert.get("message")
            if refused
            else (
                f"{alert['detector']} saw the mean of {alert['signal']} go from "
                f"{alert.get('before')} to {alert.get('after')} (model version "
                f"{alert.get('version')})"
            ),
        },
        "startsAt": _iso(alert["event_time"]),
    }
    if alert.get("status") == "resolved" and alert.get("resolved_event_time") is not None:
        entry["endsAt"] = _iso(alert["resolved_event_time"])
    return [entry]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


@dataclass
class WebhookChannel:
    """An HTTP receiver: driftline's own JSON body, or Alertmanager's."""

    url: str
    client: httpx.AsyncClient
    alertmanager: bool = False

    @property
    def name(self) -> str:
        # Also the key of its delivery position: a plain URL keeps its name; one with a
        # password or a token in its query never shows them.
        return f"webhook:{safe_url(self.url)}"

    async def deliver(self, alert: dict[str, Any]) -> None:
        body = alertmanager_body(alert) if self.alertmanager else alert
        response = await self.client.post(self.url, json=body)
        response.raise_for_status()


def webhook_channels(urls: Sequence[str], client: httpx.AsyncClient) -> list[WebhookChannel]:
    """Channels for ``DRIFTLINE_ALERT_WEBHOOKS``: ``alertmanager+http://…`` takes Alertmanager's body.

    >>> urls = ["http://a/hook", "alertmanager+http://am:9093/api/v2/alerts"]
    >>> [c.name for c in webhook_channels(urls, None)]
    ['webhook:http://a/hook', 'webhook:http://am:9093/api/v2/alerts']
    """
    return [
        WebhookChannel(url.removeprefix("alertmanager+"), client, url.startswith("alertmanager+"))
        for url in urls
    ]


@dataclass
class AlertRelay:
    """Reads the recorded alerts and delivers them to every channel (see the module's docstring)."""

    redis: Redis
    keys: Keys
    channels: list[Channel]
    #: Where the model events go (see the module's docstring).
    model_event_channels: list[Channel] = field(default_factory=list)
    holder: str = ""
    #: Longest wait between two tries of a failing delivery (seconds).
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        self.holder = self.holder or uuid.uuid4().hex

    async def run(self, stop: asyncio.Event) -> None:
        """Relay while holding the lease, until ``stop`` is set; a Redis outage is waited out
        (the relay is a task of the worker: an error escaping it would stop the whole worker)."""
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._lead(stop)
                backoff = 0.5
            except (RedisError, OSError) as exc:
                log.warning("alert relay: Redis unavailable (%s); trying again in %.1f s", exc, backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _lead(self, stop: asyncio.Event) -> None:
        """Take the lease and relay while it holds; wait a renewal period when another has it."""
        if not await self._take_lease():
            await _wait(stop, RENEW_SECONDS)
            return
        routes = [(self.keys.alerts(), b"alert", channel) for channel in self.channels]
        routes += [(self.keys.model_events(), b"event", channel) for channel in self.model_event_channels]
        tasks = [
            asyncio.create_task(self._relay(stream, name, channel, stop), name=f"relay {channel.name}")
            for stream, name, channel in routes
        ]
        try:
            while not stop.is_set() and await self._take_lease():
                await _wait(stop, RENEW_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _take_lease(self) -> bool:
        key = self.keys.alert_relay()
        if await self.redis.set(key, self.holder, nx=True, ex=LEASE_SECONDS):
            return True
        owner = await self.redis.get(key)
        if owner is not None and (owner.decode() if isinstance(owner, bytes) else owner) == self.holder:
            await self.redis.expire(key, LEASE_SECONDS)
            return True
        return False

    async def _relay(self, stream: str, entry_field: bytes, channel: Channel, stop: asyncio.Event) -> None:
        """Deliver each entry of ``stream`` (its JSON under ``entry_field``) to ``channel``, from
        the position last recorded, again after a Redis outage."""
        while not stop.is_set():
            try:
                await self._relay_from_position(stream, entry_field, channel, stop)
            except (RedisError, OSError) as exc:
                log.warning("relay to %s: Redis unavailable (%s); trying again", channel.name, exc)
                await _wait(stop, 1.0)

    async def _relay_from_position(
        self, stream: str, entry_field: bytes, channel: Channel, stop: asyncio.Event
    ) -> None:
        position = await self.redis.hget(self.keys.alert_delivery(), channel.name)
        last = (position.decode() if isinstance(position, bytes) else position) or "0-0"
        while not stop.is_set():
            read: Any = await self.redis.xread({stream: last}, count=100, block=1000)
            for _, entries in read or []:
                for entry_id, fields in entries:
                    alert = json.loads(_field(fields, entry_field))
                    await self._deliver(channel, alert)
                    last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    async with self.redis.pipeline(transaction=True) as tx:
                        tx.hset(self.keys.alert_delivery(), channel.name, last)
                        tx.hincrby(self.keys.alert_delivery(), f"{channel.name}|delivered", 1)
                        await tx.execute()

    async def _deliver(self, channel: Channel, alert: dict[str, Any]) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.5, max=self.max_backoff),
            retry=retry_if_exception_type(Exception),
            reraise=True,
        ):
            with attempt:
                try:
                    await channel.deliver(alert)
                except Exception as exc:
                    await self.redis.hincrby(self.keys.alert_delivery(), f"{channel.name}|failed", 1)
                    log.warning(
                        "%s to %s failed (try %d): %s",
                        alert.get("id") or f"{alert.get('action')} of {alert.get('model')}",
                        channel.name,
                        attempt.retry_state.attempt_number,
                        exc,
                    )
                    raise


def _field(fields: Any, name: bytes) -> bytes:
    return bytes(dict(fields)[name])


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
