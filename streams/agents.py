"""The two agents: ``clean_and_featurize`` (keyed by device) and ``learn`` (keyed by model).

They only move messages and call the pure stages (:class:`~streams.ingest.IngestStage`,
:class:`~models.learner.OnlineLearner`). What makes the pipeline exact is the order of three steps:

1. handle a batch in memory (each stage skips offsets its state already reflects);
2. make the batch's effect durable: the ingest stage flushes its output to Kafka, then writes
   device states + offsets to Redis in one transaction; the learn stage publishes a signed
   snapshot, which carries its offsets;
3. only then acknowledge the messages, so Kafka's committed offset never runs ahead of a
   checkpoint. After a crash the group resumes at or before the checkpoint and the replayed
   messages are recognised by offset and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import EventT, Message
from pydantic import ValidationError
from redis.asyncio import Redis

from driftline.errors import ModelNotReady, SnapshotError
from models.learner import OnlineLearner
from models.registry import ModelRegistry
from models.specs import ModelSpec
from streams import records
from streams.app import STAGES, app, dlq_topic, events_topic, features_topic, labels_topic, settings
from streams.checkpoint import load_all_device_states, load_offsets, load_stats, save_checkpoint
from streams.cleaning import Rejection, TimePolicy
from streams.ingest import IngestStage
from streams.records import FeatureRecord, LabelRecord
from streams.schema import LabelEvent

log = logging.getLogger(__name__)


class Runtime:
    """What the agents share inside one worker process: stage state and connections."""

    def __init__(self) -> None:
        self.topic_ids: dict[str, str] = {}
        # One lock per stage: a stage waiting on Kafka or Redis must not hold up the other.
        self.ingest_lock = asyncio.Lock()
        self.learn_lock = asyncio.Lock()
        self.specs: dict[str, ModelSpec] = {spec.name: spec for spec in settings.model_specs()}
        self.ingest = IngestStage(
            models=tuple(self.specs.values()), target=settings.target,
            features=settings.features, max_message_bytes=settings.max_message_bytes,
            max_batch_events=settings.max_batch_events, catalog=settings.catalog(),
            time_policy=TimePolicy(settings.allowed_lateness_seconds, settings.max_future_seconds),
        )
        self.learners: dict[str, OnlineLearner] = {}
        self.changed: set[str] = set()  # learners with news since their last snapshot
        self.unacked: list[Message] = []  # learned, not yet in a published snapshot
        self.unpublished_events = 0  # records those messages carried
        self.last_snapshot = time.monotonic()
        self.warned: set[str] = set()  # model warnings already logged
        self._redis: Redis | None = None
        self._registry: ModelRegistry | None = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(settings.redis_url)
        return self._redis

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = ModelRegistry(
                self.redis, settings.namespace,
                settings.secret_key.get_secret_value().encode(), settings.keep_versions,
            )
        return self._registry

    def events_topic_id(self) -> str:
        return self.topic_ids.get(settings.events_topic, "")

    # --- restoring on assignment -----------------------------------------------------------
    async def restore_ingest(self, partitions: list[int]) -> None:
        stage = self.ingest
        stage.offsets = await load_offsets(
            self.redis, settings.namespace, settings.events_topic, self.events_topic_id(), partitions
        )
        stage.stats = await load_stats(
            self.redis, settings.namespace, settings.events_topic, self.events_topic_id(), partitions
        )
        stage.devices = await load_all_device_states(self.redis, settings.namespace)
        stage.dirty = set()
        log.info("ingest restored: offsets %s, %d devices", stage.offsets, len(stage.devices))

    async def restore_learners(self) -> None:
        self.unacked.clear()
        self.unpublished_events = 0
        self.changed.clear()
        for name, spec in self.specs.items():
            try:
                learner, meta = await self.registry.load(name)
                log.info("learner %s restored from version %s (%d events)",
                         name, meta["version"], learner.events_learned)
                if learner.spec != spec:
                    # The operator changed the spec: a new model, in the same version line.
                    log.warning("learner %s: spec changed since version %s; starting a new model",
                                name, meta["version"])
                    learner = OnlineLearner.create(spec)
            except ModelNotReady:
                learner = OnlineLearner.create(spec)
            except SnapshotError as exc:
                # Never build on a snapshot we cannot verify: start over and say so loudly.
                log.error("learner %s: latest snapshot refused (%s); starting a new model", name, exc)
                learner = OnlineLearner.create(spec)
            learner.align_topics(self.topic_ids)
            self.learners[name] = learner

    def learner_for(self, name: str) -> OnlineLearner | None:
        learner = self.learners.get(name)
        if learner is None and name in self.specs:
            learner = self.learners[name] = OnlineLearner.create(self.specs[name])
            learner.align_topics(self.topic_ids)
        return learner

    # --- making progress durable -------------------------------------------------------------
    def snapshot_due(self) -> bool:
        if not self.unacked:
            return False
        return (self.unpublished_events >= settings.snapshot_every_events
                or time.monotonic() - self.last_snapshot >= settings.snapshot_every_seconds)

    async def publish_snapshots(self) -> None:
        """Publish every learner, then acknowledge the messages the snapshots now contain."""
        for name in sorted(self.changed):
            learner = self.learners[name]
            meta = await self.registry.publish(learner)
            log.info("snapshot %s v%s: %d events learned, %s=%s", learner.name, meta["version"],
                     learner.events_learned, meta["metric"]["name"],
                     "no data yet" if meta["metric"]["value"] is None else meta["metric"]["value"])
            # Said once when it starts (and again if it comes back), not at every snapshot.
            if not meta["warnings"]:
                self.warned.discard(name)
            elif name not in self.warned:
                self.warned.add(name)
                for warning in meta["warnings"]:
                    log.warning("%s", warning)
        self.changed.clear()
        for message in self.unacked:
            message.ack(app.consumer)
        self.unacked.clear()
        self.unpublished_events = 0
        self.last_snapshot = time.monotonic()


runtime = Runtime()


@app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's stub wants signal= named
async def restore_state(sender: Any, assigned: Any, **kwargs: Any) -> None:
    """Load each stage's checkpoint for the partitions this worker now owns.

    Faust then resumes each partition at its committed offset, which is never past the
    checkpoint (step 3 above); the stages skip whatever the checkpoint already reflects.
    """
    async with runtime.ingest_lock, runtime.learn_lock:
        # Tell readers (the API's /stats) which topic incarnation the checkpoints refer to.
        if runtime.topic_ids:
            topic_ids: dict[Any, str] = dict(runtime.topic_ids)  # redis-py's key type is a wide union
            await runtime.redis.hset(settings.redis_key("topics"), mapping=topic_ids)
        events = sorted(tp.partition for tp in assigned if tp.topic == settings.events_topic)
        await runtime.restore_ingest(events)
        if any(tp.topic == settings.features_topic for tp in assigned):
            await runtime.restore_learners()




async def clean_and_featurize(stream: Any) -> None:
    """Validate, dedupe and featurize readings; feature records out, rejects to the DLQ."""
    async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
        async with runtime.ingest_lock:
            # One features message per model and source partition for the whole batch.
            out: dict[tuple[str, int], list[FeatureRecord]] = {}
            for event in batch:
                for record in await _route(event):
                    out.setdefault((record.model, record.source_partition), []).append(record)
            for (model, _), feature_records in out.items():
                for piece in records.chunks(feature_records):
                    await send_features(model, records.encode(model, piece))
            # Output first, then the checkpoint: a crash in between re-emits, never loses.
            await app.producer.flush()
            await save_checkpoint(
                runtime.redis, settings.namespace, settings.events_topic, runtime.events_topic_id(),
                runtime.ingest.offsets, runtime.ingest.take_dirty(), runtime.ingest.stats,
                device_ttl_seconds=settings.device_ttl_seconds,
            )


async def _route(event: EventT[bytes]) -> list[FeatureRecord]:
    """One events message through the ingest stage: its rejects to the DLQ, its records back."""
    message = event.message
    timestamp_ms = int(message.timestamp * 1000) if message.timestamp else None
    out: list[FeatureRecord] = []
    for outcome in runtime.ingest.handle(message.value, message.partition, message.offset,
                                         timestamp_ms):
        if isinstance(outcome, FeatureRecord):
            out.append(outcome)
        elif isinstance(outcome, Rejection):
            await dlq_topic.send(key=message.key, **dead_letter(message, outcome))
            log.info("rejected %s:%s:%s: %s", message.topic, message.partition, message.offset,
                     outcome.message)
    return out


async def send_features(model: str, value: bytes) -> None:
    # The transport producer, not topic.send: Faust's channel machinery costs more per message
    # than all our cleaning; bytes in, bytes out needs none of it. Keyed by model: a model's
    # input stays in one partition, in order.
    await app.producer.send(settings.features_topic, model.encode(), value, None, None, None)


async def relay_labels(stream: Any) -> None:
    """Validate labels and pass each to the models that learn from it, in their input order.

    Stateless: after a crash a label may be relayed again, and the learner drops it by its
    (labels partition, offset). Acked once flushed, so a label is never lost.
    """
    async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
        for event in batch:
            await _relay_label(event.message)
        await app.producer.flush()


async def _relay_label(message: Message) -> None:
    try:
        label = LabelEvent.model_validate_json(message.value or b"")
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}"
                           for e in exc.errors()[:5])
        await dlq_topic.send(key=message.key, **dead_letter(message, Rejection("invalid_label", reason)))
        return
    models = [label.model] if label.model else [
        name for name, spec in runtime.specs.items() if spec.task != "forecast"]
    if label.model and label.model not in runtime.specs:
        await dlq_topic.send(key=message.key, **dead_letter(
            message, Rejection("unknown_model", f"no model named {label.model!r} learns here")))
        return
    for model in models:
        record = LabelRecord(model, label.event_id, label.label, message.partition, message.offset)
        await send_features(model, records.encode(model, [record]))


def dead_letter(message: Message, rejection: Rejection) -> dict[str, Any]:
    """The DLQ copy of a refused message: its bytes as they came, and why, and from where."""
    value = message.value or b""
    headers = [
        ("dl-reason", rejection.reason.encode()),
        ("dl-message", rejection.message.encode()[:4096]),
        ("dl-source", f"{message.topic}:{message.partition}:{message.offset}".encode()),
    ]
    if rejection.item is not None:
        headers.append(("dl-item", str(rejection.item).encode()))
    if len(value) > settings.dlq_max_bytes:
        headers.append(("dl-truncated", str(len(value)).encode()))
        value = value[: settings.dlq_max_bytes]
    return {"value": value, "headers": headers}


async def learn(stream: Any) -> None:
    """Predict, score and learn each feature record; publish snapshots; ack what they contain."""
    async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
        async with runtime.learn_lock:
            for event in batch:
                message = event.message
                try:
                    items = records.decode(message.value)
                except ValueError as exc:
                    # Only driftline writes this topic; a foreign message must not stop us.
                    log.error("unreadable features message %s:%s:%s skipped: %s",
                              message.topic, message.partition, message.offset, exc)
                    items = []
                learner = runtime.learner_for(items[0].model) if items else None
                if learner is not None:
                    learner.learn_message(message.partition, message.offset, items)
                    runtime.changed.add(learner.name)
                elif items:
                    log.warning("features for model %r, which this worker does not learn: skipped",
                                items[0].model)
                # Hold the ack (take_events acks at the end of the batch) until a snapshot has it.
                message.incref()
                runtime.unacked.append(message)
                runtime.unpublished_events += max(len(items), 1)
            if runtime.snapshot_due():
                await runtime.publish_snapshots()


async def publish_due_snapshots() -> None:
    """Publish on time even when the stream is quiet."""
    if runtime.snapshot_due():
        async with runtime.learn_lock:
            if runtime.snapshot_due():
                await runtime.publish_snapshots()


# A worker runs the stages its settings name (both by default).
if "ingest" in STAGES:
    app.agent(events_topic, name="clean_and_featurize")(clean_and_featurize)
    app.agent(labels_topic, name="relay_labels")(relay_labels)
if "learn" in STAGES:
    app.agent(features_topic, name="learn")(learn)
    app.timer(interval=0.5)(publish_due_snapshots)
