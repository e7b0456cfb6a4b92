"""The snapshot follower stops on shutdown even when the Redis client swallows a cancellation.

redis-py can turn a cancellation that lands mid-read into ``ConnectionError``; a follower that
waits out connection errors would then run on and hold the event loop's shutdown forever. This
pub/sub double misbehaves exactly that way; the registry it stands in for is tested against a
real Redis in the integration tests.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from driftline.api.model_store import ModelStore


class SwallowingPubSub:
    async def subscribe(self, channel: str) -> None:
        pass

    async def get_message(self, ignore_subscribe_messages: bool, timeout: float) -> Any:
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None
        return None

    async def aclose(self) -> None:
        pass


class Registry:
    channel = "snapshots"

    def __init__(self) -> None:
        self.redis = self
        self.subscriptions = 0

    def pubsub(self) -> SwallowingPubSub:
        self.subscriptions += 1
        return SwallowingPubSub()

    async def model_names(self) -> list[str]:
        return []


def test_follower_stops_when_told_even_if_a_cancellation_is_swallowed() -> None:
    async def scenario() -> tuple[float, int]:
        registry = Registry()
        store = ModelStore(registry)  # type: ignore[arg-type]
        stop = asyncio.Event()
        follower = asyncio.create_task(store.follow(stop, poll_seconds=0.2))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        stop.set()
        follower.cancel()  # swallowed by the pub/sub double
        done, _ = await asyncio.wait({follower}, timeout=5)
        assert done, "the follower kept running after stop"
        return time.monotonic() - started, registry.subscriptions

    elapsed, subscriptions = asyncio.run(scenario())
    assert elapsed < 1.0
    assert subscriptions == 1  # it did not go round again to resubscribe
