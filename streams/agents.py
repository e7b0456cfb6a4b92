"""The agents: ``clean_and_featurize`` (keyed by device), ``relay_labels`` and ``learn`` (keyed by
model), registered on an app by :func:`build_worker`.

They only move messages: the exactly-once batch protocol (handle → make durable → acknowledge,
restore on assignment) is :mod:`driftline.streams.batches`; here it meets Faust, the broker and
Redis. See docs/design.md, "Exactly once".
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import httpx
from faust.types import EventT
from pydantic import ValidationError
from redis.asyncio import Redis

from driftline.core import records
from driftline.core.errors import ModelNotReady, SnapshotError
from driftline.core.keys import Keys
from driftline.core.meta import SnapshotMeta
from driftline.core.records import LabelRecord
from driftline.models.learner import OnlineLearner
from driftline.models.registry import ModelRegistry
from driftline.streams.app import StreamTopics, build_app
from driftline.streams.batches import Incoming, IngestBatch, LearnBatch
from driftline.streams.checkpoint import (
    load_all_device_states,
    load_offsets,
    load_stats,
    save_checkpoint,
)
from driftline.streams.cleaning import Rejection
from driftline.streams.config import WorkerConfig
from driftline.streams.features import DeviceState
from driftline.streams.ingest import label_refusal
from driftline.streams.relay import AlertRelay, Channel, KafkaChannel, webhook_channels
from driftline.streams.schema import LABEL_TYPE, LabelEvent

log = logging.getLogger(__name__)


def incoming(event: EventT[bytes]) -> Incoming:
    """What the stages need of a Faust event (its message is kept to acknowledge it)."""
    message = event.message
    return Incoming(
        message.topic,
        message.partition,
        message.offset,
        message.value,
        message.key,
        int(message.timestamp * 1000) if message.timestamp else None,
        message,
    )


def dead_letter(message: Incoming, rejection: Rejection, max_bytes: int) -> dict[str, Any]:
    """The DLQ copy of a refused message: its bytes as they came, and why, and from where."""
    value = message.value or b""
    headers = [
        ("dl-reason", rejection.reason.encode()),
        ("dl-message", rejection.message.encode()[:4096]),
        ("dl-source", f"{message.topic}:{message.partition}:{message.offset}".encode()),
    ]
    if rejection.item is not None:
        headers.append(("dl-item", str(rejection.item).encode()))
    if len(value) > max_bytes:
        headers.append(("dl-truncated", str(len(value)).encode()))
        value = value[:max_bytes]
    return {"value": value, "headers": headers}


@dataclass
class Worker:
    """One worker process: its app, its stages' state and their effects on Kafka and Redis."""

    config: WorkerConfig
    app: faust.App
    topics: StreamTopics
    topic_ids: dict[str, str] = field(default_factory=dict)
    # One lock per stage: a stage waiting on Kafka or Redis must not hold up the other.
    ingest_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    learn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _redis: Redis | None = None

    def __post_init__(self) -> None:
        config = self.config
        self.keys = Keys(config.namespace)
        self.ingest = IngestBatch(config.ingest_stage(), self)
        self.learn = LearnBatch(
            {spec.name: spec for spec in config.specs},
            self,
            config.snapshot_every_events,
            config.snapshot_every_seconds,
            topic_ids=self.topic_ids,
        )

    @property
    def redis(self) -> Redis:
        if self._redis is None:  # opened on the worker's own loop, when first needed
            self._redis = Redis.from_url(self.config.redis_url)
        return self._redis

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.redis, self.config.namespace, self.config.secret, self.config.keep_versions)

    @property
    def events_topic_id(self) -> str:
        return self.topic_ids.get(self.config.topics.events, "")

    # --- IngestEffects -----------------------------------------------------------------------
    async def send_features(self, model: str, value: bytes) -> None:
        # The transport producer, not topic.send: Faust's channel machinery costs more per message
        # than all our cleaning; bytes in, bytes out needs none of it. Keyed by model: a model's
        # input stays in one partition, in order.
        await self.app.producer.send(self.config.topics.features, model.encode(), value, None, None, None)

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None:
        # The transport producer, as for features: a rejection must cost little more than an
        # event, or a flood of bad data slows the good (Faust's topic.send costs more per message).
        copy = dead_letter(message, rejection, self.config.dlq_max_bytes)
        await self.app.producer.send(
            self.config.topics.dlq, message.key, copy["value"], None, None, copy["headers"]
        )
        log.info("rejected %s:%s:%s: %s", message.topic, message.partition, message.offset, rejection.message)

    async def flush(self) -> None:
        await self.app.producer.flush()

    async def checkpoint(
        self,
        offsets: Mapping[int, int],
        devices: Mapping[str, DeviceState],
        stats: Mapping[int, Counter[str]],
    ) -> None:
        await save_checkpoint(
            self.redis,
            self.keys,
            self.config.topics.events,
            self.events_topic_id,
            offsets,
            devices,
            stats,
            device_ttl_seconds=self.config.device_ttl_seconds,
        )

    # --- LearnEffects (and dead_letter, flush above) ------------------------------------------
    async def publish(self, learner: OnlineLearner) -> SnapshotMeta:
        return await self.registry.publish(learner)

    def ack(self, message: Incoming) -> None:
        message.handle.ack(self.app.consumer)

    # --- restoring on assignment -------------------------------------------------------------
    async def restore(self, assigned: Any) -> None:
        """Load each stage's checkpoint for the partitions this worker now owns.

        Faust then resumes each partition at its committed offset, which is never past the
        checkpoint (step 3 of the protocol); the stages skip whatever the checkpoint reflects.
        """
        async with self.ingest_lock, self.learn_lock:
            # Tell readers (the API's /stats) which topic incarnation the checkpoints refer to.
            if self.topic_ids:
                topic_ids: dict[Any, str] = dict(self.topic_ids)  # redis-py's key type is a wide union
                await self.redis.hset(self.keys.topics(), mapping=topic_ids)
            events = sorted(tp.partition for tp in assigned if tp.topic == self.config.topics.events)
            await self.restore_ingest(events)
            if any(tp.topic == self.config.topics.features for tp in assigned):
                await self.restore_learners()

    async def restore_ingest(self, partitions: list[int]) -> None:
        topic, topic_id = self.config.topics.events, self.events_topic_id
        offsets = await load_offsets(self.redis, self.keys, topic, topic_id, partitions)
        stats = await load_stats(self.redis, self.keys, topic, topic_id, partitions)
        devices = await load_all_device_states(self.redis, self.keys)
        self.ingest.restore(offsets, stats, devices)
        log.info("ingest restored: offsets %s, %d devices", offsets, len(devices))

    async def restore_learners(self) -> None:
        loaded = []
        for name, spec in self.learn.specs.items():
            try:
                learner, meta = await self.registry.load(name)
                log.info(
                    "learner %s restored from version %s (%d events)",
                    name,
                    meta["version"],
                    learner.events_learned,
                )
                if learner.spec != spec:
                    # The operator changed the spec: a new model, in the same version line.
                    log.warning(
                        "learner %s: spec changed since version %s; starting a new model",
                        name,
                        meta["version"],
                    )
                    learner = OnlineLearner.create(spec)
            except ModelNotReady:
                learner = OnlineLearner.create(spec)
            except SnapshotError as exc:
                # Never build on a snapshot we cannot verify: start over and say so loudly.
                log.error("learner %s: latest snapshot refused (%s); starting a new model", name, exc)
                learner = OnlineLearner.create(spec)
            loaded.append(learner)
        self.learn.restore(loaded)

    # --- the agents ----------------------------------------------------------------------------
    async def clean_and_featurize(self, stream: Any) -> None:
        """Validate, dedupe and featurize readings; feature records out, rejects to the DLQ."""
        async for batch in stream.take_events(self.config.batch_size, within=self.config.batch_within):
            async with self.ingest_lock:
                await self.ingest.run([incoming(event) for event in batch])
            # take_events acknowledges the batch when this body ends: after the checkpoint.

    async def relay_labels(self, stream: Any) -> None:
        """Validate labels and pass each to the models that learn from it, in their input order.

        Stateless: after a crash a label may be relayed again, and the learner drops it by its
        (labels partition, offset). Acked once flushed, so a label is never lost.
        """
        async for batch in stream.take_events(self.config.batch_size, within=self.config.batch_within):
            for event in batch:
                await self._relay_label(incoming(event))
            await self.app.producer.flush()

    async def _relay_label(self, message: Incoming) -> None:
        try:
            label = LabelEvent.model_validate_json(message.value or b"")
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
            )
            await self.dead_letter(message, Rejection("invalid_label", reason))
            return
        specs = self.learn.specs
        if label.model and label.model not in specs:
            await self.dead_letter(
                message, Rejection("unknown_model", f"no model named {label.model!r} learns here")
            )
            return
        models = (
            [label.model]
            if label.model
            else [name for name, spec in specs.items() if spec.task != "forecast"]
        )
        for model in models:
            # Checked here, as the ingest stage checks an event's own label: a label River
            # cannot learn (text for a regression) is the sender's mistake, not the learner's.
            why = label_refusal(specs[model], label.label, self.ingest.stage.binary)
            if why is not None:
                await self.dead_letter(message, Rejection(LABEL_TYPE, f"{why}: not relayed"))
                continue
            record = LabelRecord(model, label.event_id, label.label, message.partition, message.offset)
            await self.send_features(model, records.encode(model, [record]))

    async def learn_features(self, stream: Any) -> None:
        """Predict, score and learn each feature record; publish snapshots; ack what they contain."""
        async for batch in stream.take_events(self.config.batch_size, within=self.config.batch_within):
            async with self.learn_lock:
                messages = [incoming(event) for event in batch]
                for message in messages:
                    # Hold the ack (take_events acks at the end of the batch) until a snapshot has it.
                    message.handle.incref()
                self.learn.handle(messages)
                if self.learn.snapshot_due():
                    await self.learn.publish()

    async def relay_alerts(self) -> None:
        """Deliver recorded drift alerts to the alerts topic and the webhooks, and model events to
        the model-events topic (one relay per deployment holds the lease; see
        driftline.streams.relay). Runs until the worker stops."""
        async with httpx.AsyncClient(timeout=self.config.alert_webhook_timeout) as client:
            channels: list[Channel] = [KafkaChannel(self._send_and_wait, self.config.topics.alerts)]
            channels += webhook_channels(self.config.alert_webhooks, client)
            model_events = KafkaChannel(
                self._send_and_wait, self.config.topics.model_events, "kafka:model-events"
            )
            await AlertRelay(self.redis, self.keys, channels, [model_events]).run(asyncio.Event())

    async def _send_and_wait(self, topic: str, key: bytes, value: bytes) -> None:
        delivered = await self.app.producer.send(topic, key, value, None, None, None)
        await delivered  # acknowledged by the broker before the relay moves on

    async def release_held(self) -> None:
        """Publish what the learn stage holds, so its messages are acknowledged: Faust waits for
        that before a rebalance and before a (SIGTERM) shutdown, when the timer no longer runs."""
        async with self.learn_lock:
            if self.learn.unacked:
                await self.learn.publish()

    async def publish_due_snapshots(self) -> None:
        """Publish on time even when the stream is quiet."""
        if self.learn.snapshot_due():
            async with self.learn_lock:
                if self.learn.snapshot_due():
                    await self.learn.publish()


def build_worker(config: WorkerConfig, topic_ids: Mapping[str, str] | None = None) -> Worker:
    """An app with the agents of ``config.stages`` registered, ready for ``faust.Worker``."""
    app, topics = build_app(config)
    worker = Worker(config, app, topics, dict(topic_ids or {}))
    worker.learn.topic_ids = worker.topic_ids

    async def restore_state(sender: Any, assigned: Any, **kwargs: Any) -> None:
        await worker.restore(assigned)

    app.on_partitions_assigned.connect(restore_state)  # type: ignore[arg-type]  # faust's stub wants signal=
    if "ingest" in config.stages:
        app.agent(topics.events, name="clean_and_featurize")(worker.clean_and_featurize)
        app.agent(topics.labels, name="relay_labels")(worker.relay_labels)
    if "learn" in config.stages:
        app.agent(topics.features, name="learn")(worker.learn_features)
        app.timer(interval=0.5)(worker.publish_due_snapshots)
        app.driftline_release_held = worker.release_held  # type: ignore[attr-defined]  # see app.py
        app.task(worker.relay_alerts)
    return worker


__all__ = ["Worker", "build_worker", "dead_letter", "incoming"]
