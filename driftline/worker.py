"""``driftline worker``: the Faust worker running the stream agents.

The entry point reads the settings once and hands the stream code plain values
(:class:`~driftline.streams.config.WorkerConfig`); nothing under ``streams/`` or ``models/``
reads settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis

from driftline.core.errors import ServiceUnavailable
from driftline.core.malloc import fix_malloc_thresholds
from driftline.core.process import process_age_seconds
from driftline.kafka import ensure_topics
from driftline.settings import Settings
from driftline.state import check_eviction_policy
from driftline.streams.cleaning import TimePolicy
from driftline.streams.config import Topics, WorkerConfig

log = logging.getLogger("driftline.worker")


def worker_config(settings: Settings) -> WorkerConfig:
    """What the stream worker needs of ``settings``, as plain values."""
    stages = tuple(sorted(set(settings.worker_stages.split(","))))
    return WorkerConfig(
        broker=settings.faust_broker if settings.kafka_url else "kafka://127.0.0.1:9092",
        redis_url=settings.redis_url,
        namespace=settings.namespace,
        secrets=settings.secret_keys(),
        # One consumer group per stage set: a worker that runs only the learn stage joining or
        # leaving never makes the ingest workers rebalance, and the other way round.
        group_id=settings.worker_id if len(stages) == 2 else f"{settings.worker_id}-{stages[0]}",
        stages=stages,
        topics=Topics(
            alerts=settings.alerts_topic,
            model_events=settings.model_events_topic,
            events=settings.events_topic,
            features=settings.features_topic,
            dlq=settings.dlq_topic,
            labels=settings.labels_topic,
        ),
        specs=settings.model_specs(),
        target=settings.target,
        features=settings.features,
        catalog=settings.catalog(),
        time_policy=TimePolicy(
            settings.allowed_lateness_seconds,
            settings.max_future_seconds,
            earliest=settings.earliest_event_time.timestamp(),
            max_past=settings.max_past_seconds or None,
        ),
        max_message_bytes=settings.max_message_bytes,
        max_batch_events=settings.max_batch_events,
        dlq_max_bytes=settings.dlq_max_bytes,
        device_ttl_seconds=settings.device_ttl_seconds,
        max_devices_in_memory=settings.max_devices_in_memory,
        max_sensors_per_device=settings.max_sensors_per_device,
        strict_catalog=settings.strict_catalog,
        redis_timeout=settings.redis_timeout,
        redis_retry_seconds=settings.redis_retry_seconds,
        batch_size=settings.batch_size,
        batch_within=settings.batch_within,
        snapshot_every_events=settings.snapshot_every_events,
        snapshot_every_seconds=settings.snapshot_every_seconds,
        keep_versions=settings.keep_versions,
        seal_fork_min_bytes=settings.seal_fork_min_bytes,
        broker_session_timeout=settings.broker_session_timeout,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        consumer_fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        loop_stats_seconds=settings.loop_stats_seconds,
        data_dir=settings.data_dir,
        alert_webhooks=settings.webhook_urls(),
        alert_webhook_timeout=settings.alert_webhook_timeout,
    )


def announce_models(settings: Settings, client: redis.Redis) -> None:
    """Record the models this worker learns, before its first snapshot exists."""
    specs = {spec.name: json.dumps(spec.summary()) for spec in settings.model_specs()}
    # ``driftline models`` reads it to tell "configured, no snapshot yet" from "no such model".
    client.hset(settings.keys.configured_models(), mapping=specs)  # type: ignore[arg-type]


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Say what the worker will do, create the topics if needed, then run the agents until
    SIGINT/SIGTERM.

    Each step of the start is logged with its time (the recovery after a crash is this start:
    docs/design.md, §7): the process up, topics and Redis checked, the stream code loaded; then
    Faust's own lines, the group join (aiokafka's), and the worker's first batch after it.
    """
    if settings.tracemalloc_seconds:
        # First, so that every allocation of the stream machinery is traced with its frames.
        from driftline.memtrace import AllocationTracer

        AllocationTracer(settings.tracemalloc_seconds).start()
    if fix_malloc_thresholds(settings.malloc_threshold_bytes):
        log.info(
            "malloc: blocks of %d bytes and more are given back when freed", settings.malloc_threshold_bytes
        )
    age = process_age_seconds()
    log.info(
        "worker starting: process up %s",
        f"{age:.2f} s ago (interpreter, imports, settings)" if age is not None else "(age unknown)",
    )
    for line in settings.describe():
        log.info("%s", line)
    started = time.monotonic()
    # Faust makes its own folder in it, but not the parents.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    topic_ids = ensure_topics(settings)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        announce_models(settings, client)
        risk = check_eviction_policy(client)
        if risk:
            log.warning("%s", risk)
    except (redis.RedisError, OSError) as exc:
        raise ServiceUnavailable("Redis", settings.redis_url, str(exc)) from exc
    finally:
        client.close()
    log.info("topics and Redis checked in %.2f s: topic ids %s", time.monotonic() - started, topic_ids)
    started = time.monotonic()
    import faust  # the Faust machinery only in the process that runs it

    from driftline.streams.agents import build_worker

    class _PromptlyClosingWorker(faust.Worker):
        """Faust's worker (mode's), closing its event loop without mode's last second.

        Once every service has stopped and every future is gathered, mode runs a sentinel task
        that sleeps a whole second before it closes the loop, so every stop (SIGTERM, Ctrl-C, a
        supervisor's restart) took a second longer than its work. A few loop turns (50 ms) still
        run the callbacks the closing transports scheduled.
        """

        async def _sentinel_task(self) -> None:
            await asyncio.sleep(0.05)

    worker = build_worker(worker_config(settings), topic_ids)
    log.info("stream code loaded and agents built in %.2f s", time.monotonic() - started)
    _PromptlyClosingWorker(worker.app, loglevel=loglevel, quiet=True).execute_from_commandline()
