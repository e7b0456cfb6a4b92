"""The exactly-once batch protocol of both stages, apart from Faust, Kafka and Redis.

Each stage keeps its state in memory and makes a batch durable in this order (docs/design.md,
"Exactly once"):

1. **handle** the batch in memory; each stage skips offsets its state already reflects;
2. **make the effect durable**: the ingest stage sends its feature records and rejects, flushes
   the producer, then checkpoints device states + offsets + counters in one Redis transaction;
   the learn stage publishes a signed snapshot of each changed model, which carries its offsets;
3. only then **acknowledge** the batch's messages, so the committed offset never runs ahead of
   a checkpoint.

A crash between any two steps replays messages from the committed offset on restart: the
restored state skips what it already holds (by source offset), and records re-emitted downstream
are dropped by the learner (by source position). :class:`IngestBatch` and :class:`LearnBatch` are
those steps; the I/O they need comes in as small protocols, which the Faust agents implement with
the broker and Redis (:mod:`driftline.streams.agents`) and unit tests implement in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftline.core import records
from driftline.core.meta import SnapshotMeta
from driftline.core.records import FeatureRecord, Record
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.streams.cleaning import Rejection
from driftline.streams.features import DeviceState
from driftline.streams.ingest import IngestStage, NeedDevices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """One consumed message: what the stages need of it, whatever client read it."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    #: The broker's timestamp (ms); ``None`` when unknown.
    timestamp_ms: int | None = None
    #: The client's own handle for acknowledging it (a Faust message).
    handle: Any = None


# --- ingest ----------------------------------------------------------------------------------


class IngestEffects(Protocol):
    """What the ingest stage does to the world, in the order :class:`IngestBatch` calls it."""

    async def send_features(self, model: str, value: bytes) -> None: ...

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None: ...

    async def flush(self) -> None: ...

    async def checkpoint(
        self,
        offsets: Mapping[int, int],
        devices: Mapping[str, DeviceState],
        stats: Mapping[int, Counter[str]],
    ) -> None: ...

    async def load_devices(self, device_ids: Sequence[str]) -> Mapping[str, DeviceState]:
        """The stored states of those of ``device_ids`` that have one (for a store-backed stage)."""
        ...


@dataclass
class IngestBatch:
    """Steps 1 and 2 of the protocol for the ingest stage; the caller acknowledges after :meth:`run`.

    Examples
    --------
    >>> import asyncio
    >>> class Memory:
    ...     sent, checkpoints = [], []
    ...     async def send_features(self, model, value): self.sent.append(model)
    ...     async def dead_letter(self, message, rejection): pass
    ...     async def flush(self): pass
    ...     async def checkpoint(self, offsets, devices, stats): self.checkpoints.append(dict(offsets))
    >>> effects = Memory()
    >>> batch = IngestBatch(IngestStage(models=("m",), target="y", max_message_bytes=10_000), effects)
    >>> raw = b'{"event_id": "a", "device_id": "d", "ts": 0, "readings": {"x": 1}}'
    >>> asyncio.run(batch.run([Incoming("sensor-events", 0, 7, raw, timestamp_ms=0)]))
    >>> effects.sent, effects.checkpoints
    (['m'], [{0: 7}])
    """

    stage: IngestStage
    effects: IngestEffects

    async def run(self, messages: Sequence[Incoming]) -> None:
        # Few features messages per model and source partition for the whole batch: per-message
        # costs (send, fetch, dispatch) are paid once per piece (up to 1,000 records), not per
        # event. Each piece is sent as soon as it is full: the batch's records are never all in
        # memory at once (500 messages of 50 events: 25,000 records, the worker's high-water mark).
        out: dict[tuple[str, int], records.Chunker] = {}
        stage = self.stage
        if stage.store_backed:
            # Driftline's producers key a message by its device: fetch the states of the batch's
            # devices not in memory at once (a message that names others asks for them below).
            hinted = {m.key.decode(errors="replace") for m in messages if m.key}
            await self._fetch(hinted.difference(stage.devices))
        for message in messages:
            outcomes = stage.handle(message.value, message.partition, message.offset, message.timestamp_ms)
            if outcomes and isinstance(outcomes[0], NeedDevices):
                await self._fetch(outcomes[0].device_ids)
                outcomes = stage.handle(
                    message.value, message.partition, message.offset, message.timestamp_ms
                )
            for outcome in outcomes:
                if isinstance(outcome, FeatureRecord):
                    chunker = out.get((outcome.model, outcome.source_partition))
                    if chunker is None:
                        chunker = out[outcome.model, outcome.source_partition] = records.Chunker()
                    full = chunker.add(outcome)
                    if full:
                        await self.effects.send_features(outcome.model, records.encode(outcome.model, full))
                elif isinstance(outcome, Rejection):
                    await self.effects.dead_letter(message, outcome)
        for (model, _), chunker in out.items():
            piece = chunker.rest()
            if piece:
                await self.effects.send_features(model, records.encode(model, piece))
        # Output first, then the checkpoint: a crash in between re-emits (the learner drops
        # the repeats by position), never loses.
        await self.effects.flush()
        dirty = stage.dirty_states()
        await self.effects.checkpoint(stage.offsets, dirty, stage.stats)
        # Only now clean (a failed checkpoint keeps them dirty for the next), and evictable.
        stage.checkpointed(dirty)
        stage.evict()

    async def _fetch(self, device_ids: Iterable[str]) -> None:
        wanted = list(device_ids)
        if wanted:
            self.stage.adopt(wanted, await self.effects.load_devices(wanted))

    def restore(
        self,
        offsets: Mapping[int, int],
        stats: Mapping[int, Counter[str]],
        devices: Mapping[str, DeviceState],
    ) -> None:
        """Take the checkpoint of newly assigned partitions: the stage resumes exactly there."""
        self.stage.offsets = dict(offsets)
        self.stage.stats = dict(stats)
        self.stage.devices = dict(devices)
        self.stage.dirty = set()


# --- learn -----------------------------------------------------------------------------------


#: Reason code (DLQ header ``dl-reason``) of a record the model failed on in the learn stage.
LEARN_FAILED = "learn_failed"


def failed_record(
    message: Incoming, number: int, record: Record, exc: Exception
) -> tuple[Incoming, Rejection]:
    """The DLQ copy of a record a model failed on: the record as JSON, where it was, and why.

    The copy's ``dl-source`` is the features message and ``dl-item`` the record's index in it;
    the message names the event and its source position.

    >>> from driftline.core.records import LabelRecord
    >>> copy, why = failed_record(Incoming("sensor-features", 1, 9, b""), 0,
    ...                           LabelRecord("m", "e1", "high", 0, 4), TypeError("bad operand"))
    >>> why.reason, why.message
    ('learn_failed', "model 'm', event 'e1' (labels/0:4:0): TypeError: bad operand")
    >>> json.loads(copy.value)["label"]
    'high'
    """
    item: dict[str, Any] = {
        "model": record.model,
        "event_id": record.event_id,
        "source": f"{record.source}/{record.source_partition}",
        "offset": record.source_offset,
        "index": record.source_index,
    }
    if isinstance(record, FeatureRecord):
        item |= {"device_id": record.device_id, "ts": record.ts, "target": record.target}
        item |= {"features": record.features}
    else:
        item["label"] = record.label
    where = f"{item['source']}:{record.source_offset}:{record.source_index}"
    rejection = Rejection(
        LEARN_FAILED,
        f"model {record.model!r}, event {record.event_id!r} ({where}): {type(exc).__name__}: {exc}",
        number,
    )
    value = json.dumps(item, default=str).encode()
    copy = Incoming(
        message.topic, message.partition, message.offset, value, message.key, message.timestamp_ms
    )
    return copy, rejection


class LearnEffects(Protocol):
    """What the learn stage does to the world, in the order :class:`LearnBatch` calls it."""

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None: ...

    async def flush(self) -> None: ...

    async def seal(self, learners: Sequence[OnlineLearner]) -> asyncio.Future[list[SnapshotMeta]]:
        """Capture ``learners`` as they are now and start publishing them (driftline.models.sealing):
        the future gives their listings once all are published, or raises, having given back to
        the learners what it took of them (alerts, model events), if any is not."""
        ...

    def ack(self, message: Incoming) -> None: ...


@dataclass
class InFlight:
    """A snapshot being sealed and published while the stage goes on learning."""

    sealing: asyncio.Future[list[SnapshotMeta]]
    #: The held messages its captured state contains: the first ``held`` of ``unacked``.
    held: int
    events: int
    names: list[str]
    promoted: bool
    started: float = field(default_factory=time.monotonic)
    #: When the sealing finished (published or failed), not when a step noticed it.
    finished: float | None = None

    def __post_init__(self) -> None:
        self.sealing.add_done_callback(lambda _: setattr(self, "finished", time.monotonic()))


@dataclass
class LearnBatch:
    """The learn stage's protocol: learn (step 1), publish snapshots (2), then acknowledge (3).

    Messages are held, unacknowledged, until a published snapshot contains what they taught:
    :meth:`handle` learns and holds; when a snapshot is due, :meth:`step` captures every changed
    model at that batch boundary and starts publishing it, and learning goes on while it seals;
    once it is published, a later :meth:`step` acknowledges exactly the messages held at the
    capture (those learned since stay held for the next). One snapshot is in flight at a time: one
    falling due meanwhile waits for it. :meth:`publish` does all of it and waits (shutdown).
    """

    specs: dict[str, ModelSpec]
    effects: LearnEffects
    snapshot_every_events: int = 1000
    snapshot_every_seconds: float = 1.0
    topic_ids: dict[str, str] = field(default_factory=dict)
    learners: dict[str, OnlineLearner] = field(default_factory=dict)
    #: Learners with news since their last snapshot.
    changed: set[str] = field(default_factory=set)
    #: A challenger was promoted since the last snapshot (published at once, to be served).
    promoted: bool = False
    #: Learned from, not yet in a published snapshot.
    unacked: list[Incoming] = field(default_factory=list)
    unpublished_events: int = 0
    last_snapshot: float = field(default_factory=time.monotonic)
    #: Models whose warnings have been logged (said once, and again if they come back).
    warned: set[str] = field(default_factory=set)
    #: Records a model failed on, as DLQ copies: sent before the snapshot that skips them.
    failed: list[tuple[Incoming, Rejection]] = field(default_factory=list)
    #: The snapshot being sealed and published, if one is.
    in_flight: InFlight | None = None
    #: The most of the time that sealing may take: the next snapshot is not due sooner than the
    #: last one took (capture to recorded) divided by this. A seal's CPU work has to run
    #: somewhere: where no core is free, a child sealing all the time slows learning as much as
    #: a core's share, so a large model's snapshots come less often (a 2 s seal: every 10 s at
    #: most) while a small one's cadence is unchanged. A promotion and a shutdown do not wait.
    seal_share: float = 0.2
    #: How long the last snapshot took to seal and record, from its capture (seconds).
    last_seal_seconds: float = 0.0

    def restore(self, loaded: Iterable[OnlineLearner]) -> None:
        """Resume from the learners of the newest snapshots; nothing is held any more (the
        caller has let a snapshot in flight finish first: :meth:`settle`)."""
        self.in_flight = None
        self.unacked.clear()
        self.failed.clear()  # the messages come again, and fail again
        self.unpublished_events = 0
        self.promoted = False
        self.changed.clear()
        self.learners = {}
        for learner in loaded:
            learner.align_topics(self.topic_ids)
            self.learners[learner.name] = learner

    def learner_for(self, name: str) -> OnlineLearner | None:
        learner = self.learners.get(name)
        if learner is None and name in self.specs:
            learner = self.learners[name] = OnlineLearner.create(self.specs[name])
            learner.align_topics(self.topic_ids)
        return learner

    def handle(self, messages: Sequence[Incoming]) -> None:
        """Step 1: learn from each features message, holding it until a snapshot has it."""
        for message in messages:
            try:
                items = records.decode(message.value)
            except ValueError as exc:
                # Only driftline writes this topic; a foreign message must not stop us.
                log.error(
                    "unreadable features message %s:%s:%s skipped: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                items = []
            learner = self.learner_for(items[0].model) if items else None
            if learner is not None:
                raised = len(learner.drift.outbox)
                decided = len(learner.model_events)
                learner.learn_message(
                    message.partition, message.offset, items, self._on_error(message, learner)
                )
                self.changed.add(learner.name)
                for event in learner.model_events[decided:]:
                    log.warning("model %s: %s (%s): %s", event.model, event.action, event.race, event.why)
                    if event.action == "promote":
                        self.promoted = True  # serve the winner soon: publish at the next check
                for alert in learner.drift.outbox[raised:]:
                    # Recorded (Redis) with the snapshot that holds it; said here as it happens.
                    if alert.status == "resolved":
                        why = (
                            f"a challenger replaced the model ({alert.resolved_by})"
                            if alert.resolved_by
                            else f"{alert.signal} stable for a cooldown"
                        )
                        log.info("drift alert %s resolved: %s", alert.id, why)
                        continue
                    log.warning(
                        "drift alert %s: %s %s on %s (%s), mean %s -> %s",
                        alert.id,
                        alert.severity,
                        alert.detector,
                        alert.signal,
                        alert.model,
                        alert.before,
                        alert.after,
                    )
            elif items:
                log.warning(
                    "features for model %r, which this worker does not learn: skipped", items[0].model
                )
            self.unacked.append(message)
            self.unpublished_events += max(len(items), 1)

    def _on_error(
        self, message: Incoming, learner: OnlineLearner
    ) -> Callable[[int, Record, Exception], None]:
        """The per-record error policy: log, dead-letter, go on with the next record.

        The learner has counted the record and taken its position, so the snapshot skips it
        and a replay (deterministic) drops it the same way: it is never retried forever nor
        lets the rest of its message go unlearned.
        """

        def failed(number: int, record: Record, exc: Exception) -> None:
            copy, rejection = failed_record(message, number, record, exc)
            log.error(
                "learn failed at %s:%s:%s item %d (%d so far for %s): %s",
                message.topic,
                message.partition,
                message.offset,
                number,
                learner.records_failed,
                learner.name,
                rejection.message,
            )
            self.failed.append((copy, rejection))

        return failed

    def snapshot_due(self, now: float | None = None) -> bool:
        """Whether to capture a snapshot now (never while one is in flight: it waits)."""
        if not self.unacked or self.in_flight is not None:
            return False
        now = time.monotonic() if now is None else now
        if self.promoted:
            return True
        if now - self.last_snapshot < self.last_seal_seconds / self.seal_share:
            return False  # sealing's share of the time (see seal_share)
        return (
            self.unpublished_events >= self.snapshot_every_events
            or now - self.last_snapshot >= self.snapshot_every_seconds
        )

    def step_wanted(self) -> bool:
        """Whether :meth:`step` has anything to do: a snapshot published, or one due."""
        flight = self.in_flight
        return flight.sealing.done() if flight is not None else self.snapshot_due()

    async def step(self) -> None:
        """After each batch, and on a timer: acknowledge what a published snapshot holds, and
        start the next snapshot if one is due. Never waits for a seal."""
        if self.in_flight is not None and self.in_flight.sealing.done():
            await self.settle()
        if self.snapshot_due():
            await self.start()

    async def publish(self) -> None:
        """Steps 2 and 3 at once: publish every changed learner, then acknowledge every held
        message; waits for a snapshot in flight first (shutdown, the end of a run)."""
        await self.settle()
        if self.unacked:
            await self.start()
            await self.settle()

    async def start(self) -> None:
        """Step 2 begins: capture every changed learner now and start publishing them."""
        if self.failed:
            # Dead letters before the snapshots that skip their records: a crash in between
            # replays the records, which fail and are dead-lettered again (at least once).
            for copy, rejection in self.failed:
                await self.effects.dead_letter(copy, rejection)
            await self.effects.flush()
            self.failed.clear()
        names, started = sorted(self.changed), time.monotonic()
        sealing = await self.effects.seal([self.learners[name] for name in names])
        self.in_flight = InFlight(
            sealing, len(self.unacked), self.unpublished_events, names, self.promoted, started
        )
        self.changed.clear()
        self.unpublished_events = 0
        self.promoted = False
        self.last_snapshot = time.monotonic()

    async def settle(self) -> None:
        """Step 2 ends, step 3: wait for the snapshot in flight (if any), then acknowledge the
        messages held when it was captured. If it was not published, nothing is acknowledged
        and it raises: what it held counts as unpublished again."""
        flight = self.in_flight
        if flight is None:
            return
        try:
            metas = await flight.sealing
        except BaseException:
            self.in_flight = None
            self.changed.update(flight.names)
            self.unpublished_events += flight.events
            self.promoted = self.promoted or flight.promoted
            raise
        self.in_flight = None
        self.last_seal_seconds = (flight.finished or time.monotonic()) - flight.started
        for name, meta in zip(flight.names, metas, strict=True):
            value = meta["metric"]["value"]
            log.info(
                "snapshot %s v%s: %d events learned, %s=%s",
                name,
                meta["version"],
                meta["events_learned"],
                meta["metric"]["name"],
                "no data yet" if value is None else value,
            )
            self._say_warnings(name, meta["warnings"])
        for message in self.unacked[: flight.held]:
            self.effects.ack(message)
        del self.unacked[: flight.held]

    def _say_warnings(self, name: str, warnings: list[str]) -> None:
        # Said once when it starts (and again if it comes back), not at every snapshot.
        if not warnings:
            self.warned.discard(name)
        elif name not in self.warned:
            self.warned.add(name)
            for warning in warnings:
                log.warning("%s", warning)
