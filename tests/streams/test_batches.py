"""The exactly-once batch protocol, in-process: killed at every step, nothing lost, nothing twice.

Each stage runs the real batch code (:mod:`driftline.streams.batches`) against in-memory effects
that behave as the broker and Redis do where it matters: a checkpoint is all or nothing, a
committed offset moves only when a batch is acknowledged, a restarted consumer resumes after the
committed offset, and the downstream topic keeps whatever was sent (re-emissions included). A
crash is an exception at one step; the "restarted" stage is built anew from what was made
durable. The result must equal a run that never crashed.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from driftline.core import records
from driftline.core.meta import SnapshotMeta
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.simulator import SensorSimulator
from driftline.streams.batches import Incoming, IngestBatch, LearnBatch
from driftline.streams.cleaning import Rejection
from driftline.streams.features import DeviceState
from driftline.streams.ingest import IngestStage

SPECS = (ModelSpec(name="default"),)
BATCH = 40


class Crash(Exception):
    """The process dies here."""


def events_log(n: int = 400, partitions: int = 2) -> dict[int, list[bytes]]:
    """Simulated events, keyed by device into ``partitions`` as Kafka would, with a few bad ones."""
    sim = SensorSimulator(
        devices=5, seed=5, start=datetime(2026, 11, 1, tzinfo=UTC), step_seconds=0.5, run_id="batches0"
    )
    log: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for i, event in enumerate(sim.events(n)):
        raw = json.dumps(event).encode() if i % 97 else b"not json"  # rejects take the DLQ path
        log[int(event["device_id"][-1]) % partitions].append(raw)
        if i % 53 == 0:
            log[int(event["device_id"][-1]) % partitions].append(raw)  # a retrying device
    # A device heard from once: its state is written by one checkpoint or never.
    once = json.loads(log[0][110]) | {"device_id": "once-0", "event_id": "once-0-1"}
    log[0].insert(110, json.dumps(once).encode())
    return log


def broker_time(raw: bytes) -> int:
    try:
        return int(datetime.fromisoformat(json.loads(raw)["ts"].replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def new_stage(store_backed: bool = False) -> IngestStage:
    # Store-backed as the worker runs it: at most 2 of the 5 devices in memory, the rest fetched.
    return IngestStage(
        models=SPECS,
        target="power",
        max_message_bytes=100_000,
        store_backed=store_backed,
        max_devices_in_memory=2,
    )


# --- ingest ------------------------------------------------------------------------------------


@dataclass
class IngestWorld:
    """The broker and Redis as the ingest stage sees them."""

    features: list[tuple[str, bytes]] = field(default_factory=list)  # the features topic
    dlq: list[tuple[int, int]] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)  # partition -> last acked offset
    # Redis: written whole or not at all (MULTI/EXEC), kept as JSON as Redis keeps it
    offsets: dict[int, int] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    stats: dict[int, str] = field(default_factory=dict)
    crash_at: str | None = None
    #: Device states live in "Redis", fetched on demand (as the worker runs the stage).
    store_backed: bool = False
    #: The next checkpoint write fails (Redis timed out); the process goes on.
    fail_checkpoint: bool = False
    fetched: int = 0


class IngestEffects:
    def __init__(self, world: IngestWorld) -> None:
        self.world = world
        self.pending: list[tuple[str, bytes]] = []

    def _maybe_crash(self, step: str) -> None:
        if self.world.crash_at == step:
            self.world.crash_at = None  # one crash per scenario
            raise Crash(step)

    async def send_features(self, model: str, value: bytes) -> None:
        self._maybe_crash("after handle")
        self.pending.append((model, value))

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None:
        self.world.dlq.append((message.partition, message.offset))

    async def flush(self) -> None:
        self.world.features += self.pending  # flushed: on the topic for good
        self.pending = []

    async def checkpoint(
        self,
        offsets: Mapping[int, int],
        devices: Mapping[str, DeviceState],
        stats: Mapping[int, Counter[str]],
    ) -> None:
        self._maybe_crash("after flush")
        if self.world.fail_checkpoint:
            self.world.fail_checkpoint = False
            raise TimeoutError("Redis did not answer")
        self.world.offsets.update(offsets)
        self.world.devices.update({d: json.dumps(s.to_json()) for d, s in devices.items()})
        self.world.stats.update({p: json.dumps(dict(c)) for p, c in stats.items()})
        self._maybe_crash("after checkpoint")

    async def load_devices(self, device_ids: Sequence[str]) -> Mapping[str, DeviceState]:
        self.world.fetched += len(device_ids)
        return {
            d: DeviceState.from_json(json.loads(self.world.devices[d]))
            for d in device_ids
            if d in self.world.devices
        }


def restored_ingest(world: IngestWorld) -> IngestBatch:
    """A restarted worker: a new stage, restored from the checkpoint on assignment (a store-backed
    one reads no device state then: each is fetched when its device comes)."""
    batch = IngestBatch(new_stage(world.store_backed), IngestEffects(world))
    batch.restore(
        dict(world.offsets),
        {p: Counter(json.loads(s)) for p, s in world.stats.items()},
        {}
        if world.store_backed
        else {d: DeviceState.from_json(json.loads(s)) for d, s in world.devices.items()},
    )
    return batch


async def run_ingest(log: dict[int, list[bytes]], world: IngestWorld) -> None:
    """Consume every partition from its committed offset, in batches, restarting after a crash."""
    batch = restored_ingest(world)
    while True:
        pending = [
            (p, o) for p, raws in log.items() for o in range(world.committed.get(p, -1) + 1, len(raws))
        ]
        if not pending:
            return
        take = pending[:BATCH]
        messages = [Incoming("events", p, o, log[p][o], timestamp_ms=broker_time(log[p][o])) for p, o in take]
        try:
            await batch.run(messages)
        except Crash:
            batch = restored_ingest(world)  # nothing acknowledged: the batch comes again
            continue
        except TimeoutError:
            continue  # the same process goes on: the batch comes again, its state still dirty
        for p, o in take:  # acknowledged only once run() has checkpointed
            world.committed[p] = max(world.committed.get(p, -1), o)


def learned_from(features: list[tuple[str, bytes]]) -> OnlineLearner:
    """The features topic, learned in order (each message at its own offset)."""
    learner = OnlineLearner.create(SPECS[0])
    for offset, (_, value) in enumerate(features):
        learner.learn_message(0, offset, records.decode(value))
    return learner


@pytest.mark.parametrize("store_backed", [False, True], ids=["in-memory", "store-backed"])
@pytest.mark.parametrize("crash_at", ["after handle", "after flush", "after checkpoint", "checkpoint fails"])
def test_ingest_killed_at_each_step_loses_nothing_and_counts_nothing_twice(
    crash_at: str, store_backed: bool
) -> None:
    log = events_log()
    first = {p: raws[:100] for p, raws in log.items()}
    clean, crashed = IngestWorld(store_backed=store_backed), IngestWorld(store_backed=store_backed)
    # Both read the same batches (so the learner sees one order); one crashes mid-stream.
    for world in (clean, crashed):
        asyncio.run(run_ingest(first, world))
    if crash_at == "checkpoint fails":
        crashed.fail_checkpoint = True
    else:
        crashed.crash_at = crash_at
    for world in (clean, crashed):
        asyncio.run(run_ingest(log, world))
    assert crashed.crash_at is None and not crashed.fail_checkpoint, "the fault happened"
    if store_backed:  # 5 devices, 2 in memory: states were evicted and fetched again
        assert clean.fetched > 5

    totals = [sum((Counter(json.loads(s)) for s in w.stats.values()), Counter()) for w in (clean, crashed)]
    assert totals[0] == totals[1]
    assert totals[0]["received"] == sum(len(r) for r in log.values())
    assert totals[0]["deduplicated"] > 0 and totals[0]["rejected"] > 0
    assert crashed.devices == clean.devices and crashed.offsets == clean.offsets
    if crash_at == "after flush":  # its output was re-emitted; the learner must drop the repeats
        assert len(crashed.features) > len(clean.features)
    reference, recovered = learned_from(clean.features), learned_from(crashed.features)
    assert recovered.events_learned == reference.events_learned == totals[0]["accepted"]
    assert recovered.metric == reference.metric
    assert sorted(set(crashed.dlq)) == sorted(clean.dlq)


# --- learn -------------------------------------------------------------------------------------


@dataclass
class LearnWorld:
    registry: dict[str, bytes] = field(default_factory=dict)  # the newest snapshot per model
    committed: int = -1
    crash_at: str | None = None


class LearnEffects:
    """Sealing as the worker does it: the learners are captured (pickled) when :meth:`seal` is
    called, and recorded later, in a task, while the stage goes on learning."""

    def __init__(self, world: LearnWorld) -> None:
        self.world = world

    async def seal(self, learners: Sequence[OnlineLearner]) -> asyncio.Future[list[SnapshotMeta]]:
        if self.world.crash_at == "after handle":
            self.world.crash_at = None
            raise Crash("after handle")
        captured = [(learner.name, pickle.dumps(learner), learner.summary()) for learner in learners]
        return asyncio.ensure_future(self._record(captured))

    async def _record(self, captured: list[tuple[str, bytes, Any]]) -> list[SnapshotMeta]:
        await asyncio.sleep(0)  # the stage learns on meanwhile (run_learn handles the next batch)
        if self.world.crash_at == "while sealing":
            self.world.crash_at = None
            raise Crash("while sealing")
        metas: list[SnapshotMeta] = []
        for name, blob, summary in captured:
            self.world.registry[name] = blob
            meta: Any = {**summary, "version": 1, "river_version": "", "created_at": "", "model_bytes": 0}
            metas.append(meta)
        if self.world.crash_at == "after publish":
            self.world.crash_at = None
            raise Crash("after publish")
        return metas

    def ack(self, message: Incoming) -> None:
        self.world.committed = max(self.world.committed, message.offset)


def restored_learn(world: LearnWorld) -> LearnBatch:
    batch = LearnBatch(
        {s.name: s for s in SPECS}, LearnEffects(world), snapshot_every_events=60, snapshot_every_seconds=1e9
    )
    batch.restore(pickle.loads(blob) for blob in world.registry.values())
    return batch


async def run_learn(
    topic: list[tuple[str, bytes]], world: LearnWorld, until: int | None = None
) -> OnlineLearner:
    """Consume the features topic from the committed offset, restarting after a crash."""
    end = len(topic) if until is None else until
    batch, position = restored_learn(world), world.committed + 1
    while position < end or batch.unacked:
        try:
            if position < end:
                messages = [
                    Incoming("features", 0, o, topic[o][1]) for o in range(position, min(position + 7, end))
                ]
                position = messages[-1].offset + 1
                batch.handle(messages)
                await batch.step()
                await asyncio.sleep(0)  # the worker waits for its next batch: a seal moves on
            else:
                await batch.publish()  # the end: what is held goes into a snapshot
        except Crash:
            # Nothing held was acknowledged: from the committed offset again, on the last snapshot.
            batch, position = restored_learn(world), world.committed + 1
    return batch.learners[SPECS[0].name]


@pytest.mark.parametrize("crash_at", ["after handle", "while sealing", "after publish"])
def test_learn_killed_at_each_step_learns_every_event_once(crash_at: str) -> None:
    ingest = IngestWorld()
    asyncio.run(run_ingest(events_log(), ingest))
    topic = ingest.features
    reference = asyncio.run(run_learn(topic, LearnWorld()))
    world = LearnWorld()
    asyncio.run(run_learn(topic, world, until=len(topic) // 2))
    world.crash_at = crash_at
    recovered = asyncio.run(run_learn(topic, world))
    assert world.crash_at is None, "the crash happened"
    assert recovered.events_learned == reference.events_learned == learned_from(topic).events_learned
    assert recovered.metric == reference.metric
    assert recovered.input_offsets == reference.input_offsets


class HeldSeals:
    """Effects whose seals finish when the test says: what is acknowledged, and when."""

    def __init__(self) -> None:
        self.seals: list[tuple[list[str], asyncio.Future[list[SnapshotMeta]]]] = []
        self.acked: list[int] = []

    async def seal(self, learners: Sequence[OnlineLearner]) -> asyncio.Future[list[SnapshotMeta]]:
        future: asyncio.Future[list[SnapshotMeta]] = asyncio.get_running_loop().create_future()
        self.seals.append(([learner.name for learner in learners], future))
        return future

    def ack(self, message: Incoming) -> None:
        self.acked.append(message.offset)

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None:
        raise AssertionError("no record fails here")

    async def flush(self) -> None:
        pass


def test_a_snapshot_in_flight_acknowledges_what_it_captured_and_no_later_message() -> None:
    ingest = IngestWorld()
    asyncio.run(run_ingest(events_log(), ingest))
    topic = ingest.features

    async def run() -> None:
        effects = HeldSeals()
        batch = LearnBatch(
            {s.name: s for s in SPECS}, effects, snapshot_every_events=1, snapshot_every_seconds=1e9
        )
        batch.seal_share = float("inf")  # no sealing budget here (see the next test)
        batch.handle([Incoming("features", 0, o, topic[o][1]) for o in range(3)])
        await batch.step()  # due: captured at offsets 0-2, sealing
        assert len(effects.seals) == 1 and batch.in_flight is not None
        batch.handle([Incoming("features", 0, o, topic[o][1]) for o in range(3, 5)])
        await batch.step()  # due again, but one is in flight: it waits; nothing acknowledged yet
        assert len(effects.seals) == 1 and effects.acked == []
        names, sealing = effects.seals[0]
        sealing.set_result(
            [{"version": 1, "events_learned": 1, "metric": {"name": "mae", "value": None}, "warnings": []}]
        )  # type: ignore[list-item]
        await batch.step()  # published: exactly the captured messages are acknowledged
        assert effects.acked == [0, 1, 2]
        assert [m.offset for m in batch.unacked] == [3, 4]
        assert len(effects.seals) == 2, "the snapshot that waited is captured now"
        effects.seals[1][1].set_exception(RuntimeError("the sealing child was killed"))
        with pytest.raises(RuntimeError, match="killed"):
            await batch.step()
        # Not published: nothing more acknowledged, and what it held is unpublished again.
        assert effects.acked == [0, 1, 2] and [m.offset for m in batch.unacked] == [3, 4]
        assert batch.changed == set(names) and batch.unpublished_events > 0 and batch.in_flight is None

    asyncio.run(run())


def test_a_snapshot_is_not_due_sooner_than_its_seals_share_of_the_time_allows() -> None:
    ingest = IngestWorld()
    asyncio.run(run_ingest(events_log(), ingest))
    topic = ingest.features
    batch = LearnBatch(
        {s.name: s for s in SPECS}, HeldSeals(), snapshot_every_events=1, snapshot_every_seconds=1
    )
    batch.handle([Incoming("features", 0, 0, topic[0][1])])
    batch.last_snapshot, batch.last_seal_seconds = 100.0, 2.0  # the last seal took 2 s
    assert not batch.snapshot_due(now=105.0), "at most a fifth of the time sealing: not before 110"
    assert batch.snapshot_due(now=110.0)
    batch.promoted = True
    assert batch.snapshot_due(now=101.0), "a promotion is served at once"


def test_an_ingest_batch_holds_at_most_a_features_message_of_records_at_once() -> None:
    """A batch of 60 messages of 50 events (as gateways send them) is 3,000 records: each piece
    is sent once full, so the records waiting in memory never exceed one features message's worth
    (and one message's events); holding the whole batch's was the worker's memory high-water mark
    (25,000 records at the default batch of 500 such messages)."""
    per_message, messages_in_batch = 50, 60
    sim = SensorSimulator(devices=3, seed=2, start=datetime(2026, 11, 1, tzinfo=UTC), step_seconds=0.5)
    by_device: dict[str, list[dict[str, Any]]] = {}
    messages = []
    while len(messages) < messages_in_batch:
        event = sim.next_event()
        pending = by_device.setdefault(event["device_id"], [])
        pending.append(event)
        if len(pending) == per_message:
            offset = len(messages)
            messages.append(
                Incoming("events", 0, offset, json.dumps(by_device.pop(event["device_id"])).encode())
            )
    stage = new_stage()
    held: list[int] = []
    sent = 0

    class Counting(IngestEffects):
        async def send_features(self, model: str, value: bytes) -> None:
            nonlocal sent
            held.append(stage.totals()["accepted"] - sent)  # featurized, not yet sent
            sent += len(records.decode(value))
            await super().send_features(model, value)

    asyncio.run(IngestBatch(stage, Counting(IngestWorld())).run(messages))

    assert sent == stage.totals()["accepted"] >= 0.9 * per_message * messages_in_batch
    assert len(held) >= 3
    assert max(held) <= records.MAX_RECORDS_PER_MESSAGE + per_message
