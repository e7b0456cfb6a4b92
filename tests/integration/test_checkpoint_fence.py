"""The ingest checkpoint against the real Redis: a worker that lost its partitions (a "zombie"
that stalled through a rebalance) can no longer write their state or move their offsets back."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from driftline.core.errors import Fenced
from driftline.core.fence import claim
from driftline.core.keys import Keys
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.checkpoint import load_device_states, load_offsets, save_checkpoint
from driftline.streams.features import DeviceState

from ..conftest import SettingsFactory

pytestmark = pytest.mark.integration

TOPIC, TOPIC_ID = "sensor-events", "t1"


async def zombie_and_owner(settings: Settings) -> tuple[dict[int, int], str, str]:
    redis = Redis.from_url(settings.redis_url)
    keys = Keys(settings.namespace)
    try:
        zombie = await claim(redis, keys.fence(TOPIC, TOPIC_ID), [0, 1])
        await save_checkpoint(
            redis, keys, TOPIC, TOPIC_ID, {0: 10, 1: 5}, {"d": DeviceState(events=1)}, fence=zombie
        )
        # A rebalance: the owner-to-be claims partition 1 and checkpoints further.
        owner = await claim(redis, keys.fence(TOPIC, TOPIC_ID), [1])
        await save_checkpoint(
            redis, keys, TOPIC, TOPIC_ID, {1: 50}, {"d": DeviceState(events=9)}, fence=owner
        )
        with pytest.raises(
            Fenced,
            match=r"partitions \[1\] were claimed by another worker .*: checkpoint of sensor-events refused",
        ):
            # The zombie wakes up with an older view: refused whole, device state included.
            await save_checkpoint(
                redis, keys, TOPIC, TOPIC_ID, {0: 11, 1: 7}, {"d": DeviceState(events=2)}, fence=zombie
            )
        offsets = await load_offsets(redis, keys, TOPIC, TOPIC_ID, [0, 1])
        device = json.loads(await redis.get(keys.device("d")) or b"{}")
        fence = await redis.hgetall(keys.fence(TOPIC, TOPIC_ID))
        return offsets, str(device["events"]), json.dumps({k.decode(): int(v) for k, v in fence.items()})
    finally:
        await redis.aclose()


def test_a_worker_that_lost_its_partitions_cannot_write_their_checkpoint(
    make_settings: SettingsFactory,
) -> None:
    offsets, device_events, fence = asyncio.run(zombie_and_owner(make_settings()))
    assert offsets == {0: 10, 1: 50}, "offsets never go backwards"
    assert device_events == "9", "the owner's device state stands"
    assert json.loads(fence) == {"0": 1, "1": 2}


async def zombie_snapshot(settings: Settings) -> tuple[int, int]:
    redis = Redis.from_url(settings.redis_url)
    registry = settings.registry(redis)
    key = Keys(settings.namespace).fence("sensor-features", "f1")
    try:
        zombie = await claim(redis, key, [0])
        learner = OnlineLearner.create(ModelSpec(name="m"))
        await registry.publish(learner, zombie)
        owner = await claim(redis, key, [0])
        newer = await registry.publish(learner, owner)
        with pytest.raises(Fenced, match=r"partitions \[0\] were claimed .*: snapshot of m refused"):
            await registry.publish(learner, zombie)
        return newer["version"], int(await registry.alias_version("m") or 0)
    finally:
        await redis.aclose()


def test_a_worker_that_lost_its_partitions_cannot_publish_a_snapshot(make_settings: SettingsFactory) -> None:
    newer, latest = asyncio.run(zombie_snapshot(make_settings()))
    assert latest == newer, "latest stays the owner's snapshot"


async def unreadable_state(settings: Settings) -> dict[str, DeviceState]:
    redis = Redis.from_url(settings.redis_url)
    keys = Keys(settings.namespace)
    try:
        await save_checkpoint(redis, keys, TOPIC, TOPIC_ID, {}, {"good": DeviceState(events=4)})
        await redis.set(keys.device("bad"), b"{not json")
        await redis.set(keys.device("odd"), b'{"windows": {"t": 3}}')
        return await load_device_states(redis, keys, ["good", "bad", "odd", "absent"])
    finally:
        await redis.aclose()


def test_a_device_state_that_cannot_be_read_starts_that_device_afresh(make_settings: SettingsFactory) -> None:
    # one bad key must not stop the worker (it would restart into the same key, for ever)
    states = asyncio.run(unreadable_state(make_settings()))
    assert list(states) == ["good"] and states["good"].events == 4
