"""The agents: ``clean_and_featurize`` (keyed by device), ``relay_labels`` and ``learn`` (keyed by
model), registered on an app by :func:`build_worker`.

They only move messages: the exactly-once batch protocol (handle → make durable → acknowledge,
restore on assignment) is :mod:`driftline.streams.batches`; here it meets Faust, the broker and
Redis. See docs/design.md, "Exactly once".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import httpx
from faust.types import EventT
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from driftline.core import records
from driftline.core.fence import Fence, claim
from driftline.core.keys import Keys
from driftline.core.meta import SnapshotMeta
from driftline.core.records import LabelRecord
from driftline.models.learner import OnlineLearner
from driftline.models.registry import ModelRegistry
from driftline.models.sealing import Sealer
from driftline.streams.app import StreamTopics, build_app
from driftline.streams.batches import Incoming, IngestBatch, LearnBatch
from driftline.streams.checkpoint import (
    load_device_states,
    load_offsets,
    load_stats,
    save_checkpoint,
)
from driftline.streams.cleaning import Rejection, dead_letter_record
from driftline.streams.config import WorkerConfig
from driftline.streams.features import DeviceState
from driftline.streams.ingest import label_refusal
from driftline.streams.loopstats import report_forever
from driftline.streams.relay import AlertRelay, Channel, KafkaChannel, webhook_channels
from driftline.streams.schema import LABEL_TYPE, LabelEvent

log = logging.getLogger(__name__)


def incoming(event: EventT[bytes], wall_clock: float | None = None) -> Incoming:
    """What the stages need of a Faust event (its message is kept to acknowledge it).

    ``wall_clock``: the time the batch was taken (read once per batch, not once per message).
    """
    message = event.message
    return Incoming(
        message.topic,
        message.partition,
        message.offset,
        message.value,
        message.key,
        trusted_timestamp_ms(message.timestamp, time.time() if wall_clock is None else wall_clock),
        message,
    )


def trusted_timestamp_ms(record_timestamp: float | None, wall_clock: float) -> int | None:
    """The record's timestamp as the stages' "now" (so a replay decides as the first run did),
    but never later than the clock: a producer sets it, and one stamped in the future must not
    let future events in, nor push its device's watermark past every honest event.

    >>> trusted_timestamp_ms(1_700_000_000.5, 1_800_000_000.0), trusted_timestamp_ms(2e9, 1.8e9)
    (1700000000500, 1800000000000)
    """
    if not record_timestamp:
        return None
    return int(min(record_timestamp, wall_clock) * 1000)


def dead_letter(message: Incoming, rejection: Rejection, max_bytes: int) -> dict[str, Any]:
    """The DLQ copy of a refused message: its bytes as they came, and why, and from where."""
    source = f"{message.topic}:{message.partition}:{message.offset}"
    value, headers = dead_letter_record(message.value, rejection, source, max_bytes)
    return {"value": value, "headers": headers}


@dataclass
class SampledLog:
    """Which repeated messages to say: the first of each kind, then at most one per ``every``
    seconds, with how many went unsaid. A flood of rejects must not flood the log (nor cost the
    stream its throughput); the DLQ and the counters keep every one.

    >>> sampled = SampledLog(every=10)
    >>> [sampled.say("late", now) for now in (0, 1, 2, 11, 12)]
    [0, None, None, 2, None]
    """

    every: float = 10.0
    said_at: dict[str, float] = field(default_factory=dict)
    unsaid: Counter[str] = field(default_factory=Counter)

    def say(self, kind: str, now: float) -> int | None:
        """``None``: not now (counted); else how many of ``kind`` went unsaid before this one."""
        last = self.said_at.get(kind)
        if last is not None and now - last < self.every:
            self.unsaid[kind] += 1
            return None
        self.said_at[kind] = now
        return self.unsaid.pop(kind, 0)


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
    #: This worker's claims on the events and features partitions it owns (driftline.core.fence).
    fence: Fence | None = None
    learn_fence: Fence | None = None
    rejections_said: SampledLog = field(default_factory=SampledLog)
    _sealer: Sealer | None = None
    #: When the events partitions were last assigned (monotonic), until the first batch after it
    #: is checkpointed: that batch is logged with how long it took (a restart's last step).
    ingest_assigned_at: float | None = None

    def __post_init__(self) -> None:
        config = self.config
        self.keys = Keys(config.namespace)
        self.ingest = IngestBatch(config.ingest_stage(store_backed=True), self)
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
            # Timeouts: a stalled Redis must fail a call (then retried, see redis_retry) rather
            # than hang the stage forever.
            self._redis = Redis.from_url(
                self.config.redis_url,
                socket_timeout=self.config.redis_timeout,
                socket_connect_timeout=self.config.redis_timeout,
                health_check_interval=30,
            )
        return self._redis

    def redis_retry(self, what: str) -> AsyncRetrying:
        """Bounded retries of an idempotent Redis step through a blip or a restart; past the
        bound the error propagates and the worker stops (see :func:`stop_worker`)."""

        def say(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s failed (%s); retry %d", what, exc, state.attempt_number)

        return AsyncRetrying(
            retry=retry_if_exception_type((RedisConnectionError, RedisTimeoutError, OSError)),
            stop=stop_after_delay(self.config.redis_retry_seconds),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            before_sleep=say,
            reraise=True,
        )

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(
            self.redis, self.config.namespace, self.config.secrets, self.config.keep_versions
        )

    @property
    def sealer(self) -> Sealer:
        """Publishes the learn stage's snapshots, sealing large ones in a forked child."""
        if self._sealer is None:  # its registry uses the Redis client, opened on the worker's loop
            self._sealer = Sealer(self.registry, self.config.seal_fork_min_bytes, self.redis_retry)
        return self._sealer

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
        unsaid = self.rejections_said.say(rejection.reason, time.monotonic())
        if unsaid is not None:
            log.info(
                "rejected %s:%s:%s (%s): %s%s",
                message.topic,
                message.partition,
                message.offset,
                rejection.reason,
                rejection.message,
                f" ({unsaid} more {rejection.reason} since the last said)" if unsaid else "",
            )

    async def flush(self) -> None:
        await self.app.producer.flush()

    async def checkpoint(
        self,
        offsets: Mapping[int, int],
        devices: Mapping[str, DeviceState],
        stats: Mapping[int, Counter[str]],
    ) -> None:
        # The same transaction again is harmless (it writes values, not increments).
        async for attempt in self.redis_retry("checkpoint"):
            with attempt:
                await save_checkpoint(
                    self.redis,
                    self.keys,
                    self.config.topics.events,
                    self.events_topic_id,
                    offsets,
                    devices,
                    stats,
                    device_ttl_seconds=self.config.device_ttl_seconds,
                    fence=self.fence,
                )

    async def load_devices(self, device_ids: Sequence[str]) -> Mapping[str, DeviceState]:
        async for attempt in self.redis_retry("loading device states"):
            with attempt:
                return await load_device_states(self.redis, self.keys, device_ids)
        raise AssertionError("unreachable: the retry either returns or raises")

    # --- LearnEffects (and dead_letter, flush above) ------------------------------------------
    async def seal(self, learners: Sequence[OnlineLearner]) -> asyncio.Future[list[SnapshotMeta]]:
        # Each Redis step retried through a blip: at worst an unanswered attempt that did commit
        # records the same snapshot twice under one version.
        return await self.sealer.start(learners, self.learn_fence)

    def ack(self, message: Incoming) -> None:
        message.handle.ack(self.app.consumer)

    # --- restoring on assignment -------------------------------------------------------------
    async def restore(self, assigned: Any) -> None:
        """Load each stage's checkpoint for the partitions this worker now owns.

        Faust then resumes each partition at its committed offset, which is never past the
        checkpoint (step 3 of the protocol); the stages skip whatever the checkpoint reflects.
        """
        async with self.ingest_lock, self.learn_lock:
            try:
                # A snapshot still sealing was taken under the old assignment: published (or
                # refused by the fence) before anything is restored over it.
                await self.learn.settle()
            except Exception as exc:
                stop_worker("learn", exc)
            # Tell readers (the API's /stats) which topic incarnation the checkpoints refer to.
            if self.topic_ids:
                topic_ids: dict[Any, str] = dict(self.topic_ids)  # redis-py's key type is a wide union
                await self.redis.hset(self.keys.topics(), mapping=topic_ids)
            events = sorted(tp.partition for tp in assigned if tp.topic == self.config.topics.events)
            await self.restore_ingest(events)
            features = [tp for tp in assigned if tp.topic == self.config.topics.features]
            if features:
                features_topic = self.config.topics.features
                self.learn_fence = await claim(
                    self.redis,
                    self.keys.fence(features_topic, self.topic_ids.get(features_topic, "")),
                    [tp.partition for tp in features],
                )
                rewinds = await self.restore_learners([tp.partition for tp in features])
                await self.rewind(features, rewinds)

    async def restore_ingest(self, partitions: list[int]) -> None:
        """Claim the partitions (fencing out their earlier owner), then read their checkpoint.

        Device states are not read here: each is fetched when its device's next event comes,
        so a restore costs the same with ten devices or a million.
        """
        started = time.monotonic()
        topic, topic_id = self.config.topics.events, self.events_topic_id
        self.fence = await claim(self.redis, self.keys.fence(topic, topic_id), partitions)
        offsets = await load_offsets(self.redis, self.keys, topic, topic_id, partitions)
        stats = await load_stats(self.redis, self.keys, topic, topic_id, partitions)
        self.ingest.restore(offsets, stats, {})
        self.ingest_assigned_at = started if partitions else None
        log.info(
            "ingest restored: partitions %s at offsets %s in %.3f s",
            partitions,
            offsets,
            time.monotonic() - started,
        )

    async def restore_learners(self, partitions: list[int] | None = None) -> dict[int, int]:
        """Resume each model from its newest version that verifies; returns the features
        partitions to read again, and from which offset (see :func:`rewind_offsets`).

        A refused version (altered, signed with a key not configured, unreadable) is walked past
        to the one before, and each one refused raises a ``snapshot`` alert. Only when no stored
        version verifies does a model start over, loudly.
        """
        loaded, behind = [], set()
        registry = self.registry
        for name, spec in self.learn.specs.items():
            learner, meta, refused = await registry.load_newest_verifiable(name)
            if learner is not None and meta is not None:
                outcome = f"resumed from version {meta['version']}"
                if "model_bytes" in meta:  # where its next snapshot is sealed (inline or forked)
                    self.sealer.sizes[name] = meta["model_bytes"]
                log.info(
                    "learner %s restored from version %s (%d events)",
                    name,
                    meta["version"],
                    learner.events_learned,
                )
                if refused:
                    behind.add(name)
                if learner.spec != spec:
                    # The operator changed the spec: a new model, in the same version line.
                    log.warning(
                        "learner %s: spec changed since version %s; starting a new model",
                        name,
                        meta["version"],
                    )
                    learner = OnlineLearner.create(spec)
            else:
                learner = OnlineLearner.create(spec)
                outcome = "no stored version verifies: started a new model"
                if refused:
                    behind.add(name)
            for refusal in refused:
                # Never build on a snapshot we cannot verify; and never quietly.
                log.error(
                    "learner %s: version %s refused (%s); %s", name, refusal.version, refusal.reason, outcome
                )
                await registry.record_refusal(name, refusal, outcome, by=self.config.group_id)
            loaded.append(learner)
        self.learn.restore(loaded)
        return rewind_offsets(self.learn.learners.values(), behind, partitions or [])

    async def rewind(self, assigned: list[Any], rewinds: Mapping[int, int]) -> None:
        """Read features partitions again from the offsets given: commit them, so that Faust's
        own seeks to the committed offset (during recovery) land there too, and seek."""
        wanted = {tp: rewinds[tp.partition] for tp in assigned if tp.partition in rewinds}
        if not wanted:
            return
        log.warning("features read again from %s, to relearn what refused versions held", wanted)
        # Faust has no public call to commit chosen offsets; this one also keeps its bookkeeping
        # (the committed offset acks are compared with) in step.
        await self.app.consumer._commit_offsets(wanted)  # type: ignore[attr-defined]  # see above
        for tp, offset in wanted.items():
            await self.app.consumer.seek(tp, offset)

    # --- the agents ----------------------------------------------------------------------------
    async def clean_and_featurize(self, stream: Any) -> None:
        """Validate, dedupe and featurize readings; feature records out, rejects to the DLQ."""
        async for batch in stream.take_events(self.config.batch_size, within=self.config.batch_within):
            async with self.ingest_lock:
                now = time.time()
                await self.ingest.run([incoming(event, now) for event in batch])
                if self.ingest_assigned_at is not None:
                    log.info(
                        "ingest: first batch since the assignment checkpointed %.2f s after it (%d messages)",
                        time.monotonic() - self.ingest_assigned_at,
                        len(batch),
                    )
                    self.ingest_assigned_at = None
            # take_events acknowledges the batch when this body ends: after the checkpoint.

    async def relay_labels(self, stream: Any) -> None:
        """Validate labels and pass each to the models that learn from it, in their input order.

        Stateless: after a crash a label may be relayed again, and the learner drops it by its
        (labels partition, offset). Acked once flushed, so a label is never lost.
        """
        async for batch in stream.take_events(self.config.batch_size, within=self.config.batch_within):
            now = time.time()
            for event in batch:
                await self._relay_label(incoming(event, now))
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
                now = time.time()
                messages = [incoming(event, now) for event in batch]
                for message in messages:
                    # Hold the ack (take_events acks at the end of the batch) until a snapshot has it.
                    message.handle.incref()
                self.learn.handle(messages)
                # Acks what a sealed snapshot holds, starts the next one if due; never waits for a
                # seal (a large model seals in a forked child while this loop goes on learning).
                await self.learn.step()

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
        """Publish on time, and acknowledge what a sealed snapshot holds, even when the stream is
        quiet."""
        if self.learn.step_wanted():
            async with self.learn_lock:
                await self.learn.step()


#: The exit status of a worker that stopped because a stage failed.
EXIT_STAGE_FAILED = 70


def stops_on_failure(name: str, body: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """``body`` (an agent or timer), stopping the worker when it fails (:func:`stop_worker`)."""

    @functools.wraps(body)
    async def run(*args: Any) -> None:
        try:
            await body(*args)
        except Exception as exc:
            stop_worker(name, exc)

    return run


def stop_worker(stage: str, exc: BaseException) -> None:
    """A stage failed past its retries (Redis gone for good, a checkpoint fenced out by a newer
    owner, a bug): stop the process, non-zero, so its supervisor starts it again.

    Faust would restart the agent in the same process, with its batch unacknowledged and its
    in-memory state ahead of the checkpoint: commits would stall behind it, and a fenced worker
    would go on emitting. A fresh process resumes exactly from the last checkpoint instead
    (the same path as a crash, which the exactly-once protocol is built for).
    """
    log.critical(
        "stage %s failed: %s: %s; the worker stops (exit %d) to restart from its last checkpoint",
        stage,
        type(exc).__name__,
        exc,
        EXIT_STAGE_FAILED,
    )
    logging.shutdown()
    os._exit(EXIT_STAGE_FAILED)


def rewind_offsets(
    learners: Iterable[OnlineLearner], behind: Collection[str], partitions: Iterable[int]
) -> dict[int, int]:
    """Where to read each features partition again from, when some models resumed behind their
    ``latest`` version (its snapshot refused): the committed offset is past what those models
    hold, and they must relearn the difference, or they would silently miss it.

    A model resumed from an older version reads again from just after its own input offsets; a
    model started over because nothing verified reads its partitions from the start (0: the
    earliest the broker still has). Every other model on those partitions skips what it already
    holds by input offset, so the lowest offset wins. Nothing is behind: nothing to rewind.

    >>> from driftline.models.specs import ModelSpec
    >>> a, b = OnlineLearner.create(ModelSpec(name="a")), OnlineLearner.create(ModelSpec(name="b"))
    >>> a.input_offsets, b.input_offsets = {0: 41}, {0: 99, 1: 7}
    >>> rewind_offsets([a, b], {"a"}, [0, 1]), rewind_offsets([a, b], set(), [0, 1])
    ({0: 42}, {})
    >>> rewind_offsets([OnlineLearner.create(ModelSpec(name="c"))], {"c"}, [0, 1])
    {0: 0, 1: 0}
    """
    wanted: dict[int, int] = {}
    for learner in learners:
        if learner.name not in behind:
            continue
        starts = (
            {p: offset + 1 for p, offset in learner.input_offsets.items()}
            if learner.input_offsets
            else dict.fromkeys(partitions, 0)
        )
        for partition, start in starts.items():
            wanted[partition] = min(start, wanted.get(partition, start))
    return wanted


def snapshot_check_seconds(snapshot_every_seconds: float) -> float:
    """How often a quiet stream checks whether a snapshot is due: a tenth of the cadence (between
    50 ms and 0.5 s). A snapshot falls due between two checks, so it comes up to one check late:
    with a 1 s cadence, a check every 0.5 s made snapshots 1 to 1.5 s apart, and that half second
    was a quarter of the freshness budget (bench/freshness.py). A check is a comparison of two
    numbers.

    >>> snapshot_check_seconds(1.0), snapshot_check_seconds(5.0), snapshot_check_seconds(0.1)
    (0.1, 0.5, 0.05)
    """
    return min(0.5, max(0.05, snapshot_every_seconds / 10))


def build_worker(config: WorkerConfig, topic_ids: Mapping[str, str] | None = None) -> Worker:
    """An app with the agents of ``config.stages`` registered, ready for ``faust.Worker``."""
    app, topics = build_app(config)
    worker = Worker(config, app, topics, dict(topic_ids or {}))
    worker.learn.topic_ids = worker.topic_ids

    async def restore_state(sender: Any, assigned: Any, **kwargs: Any) -> None:
        await worker.restore(assigned)

    if config.loop_stats_seconds > 0:

        async def report_loop_stats() -> None:
            # Idle (waiting on the broker or Redis) or starved of a core: see loopstats. (No
            # parameters: Faust hands a task that takes one the app.)
            await report_forever(config.loop_stats_seconds)

        app.task(report_loop_stats)
    app.on_partitions_assigned.connect(restore_state)  # type: ignore[arg-type]  # faust's stub wants signal=
    if "ingest" in config.stages:
        app.agent(topics.events, name="clean_and_featurize")(
            stops_on_failure("clean_and_featurize", worker.clean_and_featurize)
        )
        app.agent(topics.labels, name="relay_labels")(stops_on_failure("relay_labels", worker.relay_labels))
    if "learn" in config.stages:
        app.agent(topics.features, name="learn")(stops_on_failure("learn", worker.learn_features))
        app.timer(interval=snapshot_check_seconds(config.snapshot_every_seconds))(
            stops_on_failure("snapshots", worker.publish_due_snapshots)
        )
        app.driftline_release_held = worker.release_held  # type: ignore[attr-defined]  # see app.py
        app.task(worker.relay_alerts)
    return worker


__all__ = [
    "EXIT_STAGE_FAILED",
    "Worker",
    "build_worker",
    "dead_letter",
    "incoming",
    "rewind_offsets",
    "snapshot_check_seconds",
    "stop_worker",
]
