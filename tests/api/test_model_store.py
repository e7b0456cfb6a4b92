"""The model store: its snapshot follower stops on shutdown even when the Redis client swallows a
cancellation, and snapshots load off the event loop.

redis-py can turn a cancellation that lands mid-read into ``ConnectionError``; a follower that
waits out connection errors would then run on and hold the event loop's shutdown forever. This
pub/sub double misbehaves exactly that way; the registry it stands in for is tested against a
real Redis in the integration tests.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from types import SimpleNamespace
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from driftline.api.model_store import LoaderThread, ModelStore, ServedModel, collection_paused


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


class SlowRegistry:
    """A registry whose load blocks its thread for a while, as verifying and unpickling a large
    snapshot does; it records the thread that loaded."""

    channel = "snapshots"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.loaded_on: list[int] = []
        self.collecting: list[bool] = []

    async def alias_version(self, name: str, alias: str = "latest") -> int:
        return 1

    async def load(self, name: str, version: int) -> tuple[Any, dict[str, Any]]:
        self.loaded_on.append(threading.get_ident())
        self.collecting.append(gc.isenabled())
        time.sleep(self.seconds)  # blocking, on purpose: what CPU-bound work does to a loop
        return SimpleNamespace(events_learned=0), {"model": name, "version": version}


def test_the_loader_thread_verifies_and_unpickles_off_the_event_loop() -> None:
    registry = SlowRegistry(seconds=0.6)
    # Redis is never reached: the registry double stands in for it (a client opens lazily).
    loader = LoaderThread(lambda redis: registry, "redis://127.0.0.1:1/0")  # type: ignore[arg-type,return-value]
    store = ModelStore(registry, loader=loader)  # type: ignore[arg-type]

    async def scenario() -> tuple[bool, float]:
        longest_gap, last = 0.0, time.monotonic()
        refresh = asyncio.create_task(store.refresh("m"))
        while not refresh.done():  # the loop's other work: how long does it wait between turns?
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now
        return await refresh, longest_gap

    swapped, longest_gap = asyncio.run(scenario())

    assert swapped and store.get("m").version == 1
    assert registry.loaded_on and registry.loaded_on[0] != threading.get_ident()
    assert registry.collecting == [False] and gc.isenabled()  # paused for the load only
    assert longest_gap < 0.3, f"the event loop stalled {longest_gap:.2f}s while a snapshot loaded"


def test_overlapping_loads_resume_the_collector_when_the_last_ends_and_only_if_it_ran() -> None:
    with collection_paused():
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()  # an application that runs without it keeps it off
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


class SwappingRegistry:
    """Answers ``latest`` (version 9) only after the follower swapped the champion meanwhile,
    as a Redis round trip lets it."""

    def __init__(self, store: ModelStore, swap_in: ServedModel) -> None:
        self.store, self.swap_in = store, swap_in

    async def alias_version(self, name: str, alias: str) -> int:
        await asyncio.sleep(0)
        self.store.served[name] = self.swap_in
        return 9

    async def version_meta(self, name: str, version: int) -> dict[str, Any]:
        return {"version": version}


def test_a_request_gets_one_snapshot_per_way_of_asking_though_the_champion_swaps_meanwhile() -> None:
    def served(version: int) -> ServedModel:
        return ServedModel(learner=SimpleNamespace(), meta={"version": version})  # type: ignore[arg-type, typeddict-item]

    async def load(name: str, version: int) -> Any:
        return SimpleNamespace(), {"version": version}

    async def batch(ways: list[dict[str, Any]]) -> list[int]:
        store = ModelStore(registry=None, loader=load)  # type: ignore[arg-type]
        store.registry = SwappingRegistry(store, served(2))  # type: ignore[assignment]
        store.served["m"] = served(1)
        snapshots = store.one_snapshot_each()
        return [(await snapshots.pick("m", **way)).version for way in ways]

    # champion, latest (the swap to v2 happens while it is read), champion again
    assert asyncio.run(batch([{}, {"alias": "latest"}, {"alias": "champion"}, {}])) == [1, 9, 1, 1]
