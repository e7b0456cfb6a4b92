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
import json
import logging
import time
from typing import Any

from faust.types import EventT, Message
from redis.asyncio import Redis

from driftline.errors import ModelNotReady, SnapshotError
from models.learner import OnlineLearner
from models.registry import ModelRegistry
from models.specs import DEFAULT_SPEC
from streams.app import app, dlq_topic, events_topic, features_topic, settings
from streams.checkpoint import load_all_device_states, load_offsets, load_stats, save_checkpoint
from streams.cleaning import Rejection, TimePolicy
from streams.ingest import FeatureRecord, IngestStage

log = logging.getLogger(__name__)


class Runtime:
    """What the agents share inside one worker process: stage state and connections."""

    def __init__(self) -> None:
        self.topic_ids: dict[str, str] = {}
        # One lock per stage: a stage waiting on Kafka or Redis must not hold up the other.
        self.ingest_lock = asyncio.Lock()
        self.learn_lock = asyncio.Lock()
        self.ingest = IngestStage(
            models=(settings.model_name,), target=settings.target,
            features=settings.features, max_message_bytes=settings.max_message_bytes,
            max_batch_events=settings.max_batch_events, catalog=settings.catalog(),
            time_policy=TimePolicy(settings.allowed_lateness_seconds, settings.max_future_seconds),
        )
        self.learners: dict[str, OnlineLearner] = {}
        self.unacked: list[Message] = []  # learned, not yet in a published snapshot
        self.last_snapshot = time.monotonic()
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
        for name in (settings.model_name,):
            try:
                learner, meta = await self.registry.load(name)
                log.info("learner %s restored from version %s (%d events)",
                         name, meta["version"], learner.events_learned)
            except ModelNotReady:
                learner = OnlineLearner.create(name, DEFAULT_SPEC)
            except SnapshotError as exc:
                # Never build on a snapshot we cannot verify: start over and say so loudly.
                log.error("learner %s: latest snapshot refused (%s); starting a new model", name, exc)
                learner = OnlineLearner.create(name, DEFAULT_SPEC)
            learner.align_topics(self.topic_ids)
            self.learners[name] = learner

    def learner_for(self, name: str) -> OnlineLearner:
        learner = self.learners.get(name)
        if learner is None:
            learner = self.learners[name] = OnlineLearner.create(name, DEFAULT_SPEC)
            learner.align_topics(self.topic_ids)
        return learner

    # --- making progress durable -------------------------------------------------------------
    def snapshot_due(self) -> bool:
        if not self.unacked:
            return False
        return (len(self.unacked) >= settings.snapshot_every_events
                or time.monotonic() - self.last_snapshot >= settings.snapshot_every_seconds)

    async def publish_snapshots(self) -> None:
        """Publish every learner, then acknowledge the messages the snapshots now contain."""
        for learner in self.learners.values():
            meta = await self.registry.publish(learner)
            log.info("snapshot %s v%s: %d events learned, %s=%.4f", learner.name, meta["version"],
                     learner.events_learned, meta["metric"]["name"], meta["metric"]["value"])
        for message in self.unacked:
            message.ack(app.consumer)
        self.unacked.clear()
        self.last_snapshot = time.monotonic()


runtime = Runtime()


@app.on_partitions_assigned.connect
async def restore_state(sender: Any, assigned: Any, **kwargs: Any) -> None:
    """Load each stage's checkpoint for the partitions this worker now owns.

    Faust then resumes each partition at its committed offset, which is never past the
    checkpoint (step 3 above); the stages skip whatever the checkpoint already reflects.
    """
    async with runtime.ingest_lock, runtime.learn_lock:
        # Tell readers (the API's /stats) which topic incarnation the checkpoints refer to.
        if runtime.topic_ids:
            await runtime.redis.hset(settings.redis_key("topics"), mapping=runtime.topic_ids)
        events = sorted(tp.partition for tp in assigned if tp.topic == settings.events_topic)
        await runtime.restore_ingest(events)
        if any(tp.topic == settings.features_topic for tp in assigned):
            await runtime.restore_learners()


STAGES = set(settings.worker_stages.split(","))


async def clean_and_featurize(stream: Any) -> None:
    """Validate, dedupe and featurize readings; feature records out, rejects to the DLQ."""
    async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
        async with runtime.ingest_lock:
            for event in batch:
                await _route(event)
            # Output first, then the checkpoint: a crash in between re-emits, never loses.
            await app.producer.flush()
            await save_checkpoint(
                runtime.redis, settings.namespace, settings.events_topic, runtime.events_topic_id(),
                runtime.ingest.offsets, runtime.ingest.take_dirty(), runtime.ingest.stats,
                device_ttl_seconds=settings.device_ttl_seconds,
            )


async def _route(event: EventT) -> None:
    message = event.message
    timestamp_ms = int(message.timestamp * 1000) if message.timestamp else None
    for outcome in runtime.ingest.handle(message.value, message.partition, message.offset,
                                         timestamp_ms):
        if isinstance(outcome, FeatureRecord):
            # The transport producer, not topic.send: Faust's channel machinery costs more per
            # event than all our cleaning; bytes in, bytes out needs none of it.
            await app.producer.send(
                settings.features_topic, outcome.model.encode(),
                json.dumps(outcome.to_json(), separators=(",", ":")).encode(), None, None, None,
            )
        elif isinstance(outcome, Rejection):
            await dlq_topic.send(key=message.key, **dead_letter(message, outcome))
            log.info("rejected %s:%s:%s: %s", message.topic, message.partition, message.offset,
                     outcome.message)


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
                    record = FeatureRecord.from_json(json.loads(message.value))
                except (ValueError, KeyError, TypeError) as exc:
                    # Only the ingest stage writes this topic; a foreign message must not stop us.
                    log.error("unreadable feature record %s:%s:%s skipped: %r",
                              message.topic, message.partition, message.offset, exc)
                else:
                    runtime.learner_for(record.model).learn(record, message.partition, message.offset)
                # Hold the ack (take_events acks at the end of the batch) until a snapshot has it.
                message.incref()
                runtime.unacked.append(message)
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
if "learn" in STAGES:
    app.agent(features_topic, name="learn")(learn)
    app.timer(interval=0.5)(publish_due_snapshots)
