"""Sealing in a forked child against the real Redis: the snapshot is the learner as captured (not
as it is when the child is done), recorded with what was captured; a child that fails records
nothing and gives the learner back what was taken; a zombie's child seal is fenced out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from driftline.core.alerts import Alert
from driftline.core.errors import Fenced, SnapshotError
from driftline.core.fence import claim
from driftline.core.keys import Keys
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.sealing import Sealer
from driftline.models.specs import ModelSpec
from driftline.settings import Settings

from ..conftest import SettingsFactory

pytestmark = pytest.mark.integration


def learn(learner: OnlineLearner, start: int, stop: int) -> None:
    for i in range(start, stop):
        x = {"temperature": 15.0 + i % 10}
        record = FeatureRecord(learner.name, "dev-1", f"e{i}", float(i), x, 0.5 * x["temperature"], 0, i)
        learner.learn(record, 0, i)


def an_alert(model: str, offset: int) -> Alert:
    return Alert.create(model, "error", "adwin", {}, "drift", "events/0", offset, 0, 1.7e9, 900)


async def forked_seal(settings: Settings) -> dict[str, Any]:
    redis = Redis.from_url(settings.redis_url)
    registry = settings.registry(redis)
    try:
        sealer = Sealer(registry, fork_min_bytes=0)  # always in a child
        learner = OnlineLearner.create(ModelSpec(name="m"))
        learn(learner, 0, 200)
        learner.drift.outbox.append(an_alert("m", 150))
        captured_at = learner.events_learned
        sealing = await sealer.start([learner])
        learn(learner, 200, 300)  # the parent learns on while the child seals
        learner.drift.outbox.append(an_alert("m", 250))
        [listing] = await sealing
        loaded, meta = await registry.load("m")
        return {
            "forked": sealer.forked,
            "captured_at": captured_at,
            "listing": listing,
            "loaded_events": loaded.events_learned,
            "meta_version": meta["version"],
            "alerts_recorded": sorted(
                a.decode() for a in await redis.hkeys(Keys(settings.namespace).alert_records())
            ),
            "outbox_left": [a.id for a in learner.drift.outbox],
            "now_learned": learner.events_learned,
            "sizes": dict(sealer.sizes),
        }
    finally:
        await redis.aclose()


def test_a_child_seals_the_learner_as_captured_and_the_parent_learns_on(
    make_settings: SettingsFactory,
) -> None:
    found = asyncio.run(forked_seal(make_settings()))
    assert found["forked"] == 1
    assert found["loaded_events"] == found["captured_at"] == 200, "the snapshot is the learner at capture"
    assert found["now_learned"] == 300
    assert found["listing"]["events_learned"] == 200 and found["meta_version"] == found["listing"]["version"]
    assert found["alerts_recorded"] == ["m:error:events/0:150:0"], "the alert raised before the capture"
    assert found["outbox_left"] == ["m:error:events/0:250:0"], "the later one waits for the next snapshot"
    assert found["sizes"]["m"] == found["listing"]["model_bytes"] > 0


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object cannot be pickled")


async def failing_child(settings: Settings) -> dict[str, Any]:
    redis = Redis.from_url(settings.redis_url)
    registry = settings.registry(redis)
    try:
        learner = OnlineLearner.create(ModelSpec(name="m"))
        learn(learner, 0, 50)
        await registry.publish(learner)  # version 1
        learn(learner, 50, 100)
        learner.drift.outbox.append(an_alert("m", 75))
        mark = dict(learner.published)
        learner.origin["poison"] = Unpicklable()  # the child's pickle fails
        sealing = await Sealer(registry, fork_min_bytes=0).start([learner])
        with pytest.raises(SnapshotError, match="in a child process failed: TypeError: this object cannot"):
            await sealing
        return {
            "latest": await registry.alias_version("m"),
            "outbox": [a.id for a in learner.drift.outbox],
            "mark_restored": learner.published == mark,
        }
    finally:
        await redis.aclose()


def test_a_child_that_fails_records_nothing_and_gives_back_what_was_captured(
    make_settings: SettingsFactory,
) -> None:
    found = asyncio.run(failing_child(make_settings()))
    assert found["latest"] == 1, "nothing recorded: latest is still the last good version"
    assert found["outbox"] == ["m:error:events/0:75:0"], "the alert goes with the next snapshot"
    assert found["mark_restored"], "the next snapshot's lineage starts at version 1 again"


async def zombie_child_seal(settings: Settings) -> tuple[int, int]:
    redis = Redis.from_url(settings.redis_url)
    registry = settings.registry(redis)
    key = Keys(settings.namespace).fence("sensor-features", "f1")
    try:
        zombie = await claim(redis, key, [0])
        learner = OnlineLearner.create(ModelSpec(name="m"))
        learn(learner, 0, 50)
        sealing = await Sealer(registry, fork_min_bytes=0).start([learner], zombie)
        owner = await claim(redis, key, [0])  # a rebalance while the child seals
        newer = await registry.publish(learner, owner)
        with pytest.raises(Fenced, match=r"partitions \[0\] were claimed .*: snapshot of m refused"):
            await sealing
        return newer["version"], int(await registry.alias_version("m") or 0)
    finally:
        await redis.aclose()


def test_a_zombie_cannot_record_what_its_child_sealed(make_settings: SettingsFactory) -> None:
    newer, latest = asyncio.run(zombie_child_seal(make_settings()))
    assert latest == newer, "latest stays the owner's snapshot"
