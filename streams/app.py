"""The Faust app and its topics, built by :func:`build_app` from a :class:`WorkerConfig`.

Topics are created by ``driftline`` itself (``ensure_topics``) with the partition counts from
settings, never by Faust or by the broker's auto-create, so ``topic_allow_declare`` is off.
Faust tables are not used: stage state lives in Redis with its offsets (docs/design.md).
Nothing here runs at import: a test or a benchmark builds as many apps as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import faust
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as faust_kafka
from mode.services import WaitResults

from driftline.core.process import join_wait_seconds, process_age_seconds
from driftline.streams.config import WorkerConfig

log = logging.getLogger(__name__)


class _PromptFetchThread(faust_kafka.AIOKafkaConsumerThread):
    """Faust asks aiokafka to let the broker hold a fetch for up to 1.5 s when nothing is new.

    On the embedded broker we saw the learn agent stall for up to that long behind its own
    ingest agent's output, the fetch held although records had arrived. A short wait costs an
    idle worker a few more fetch requests per second, and removes the stalls.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read in start(); the app carries its config (see build_app)
        consumer._fetch_max_wait_ms = transport.app.driftline_config.consumer_fetch_max_wait_ms
        return consumer


@types.coroutine
def _rest_of(coro: Coroutine[Any, Any, Any], awaiting: Any) -> Generator[Any, Any, Any]:
    """The rest of ``coro``, whose first step has just yielded ``awaiting`` (what it waits on),
    resumed as the task running it would have resumed it: what the task sends or throws in
    (a cancellation) goes on to ``coro``."""
    while True:
        try:
            sent = yield awaiting
        except BaseException as exc:  # cancellation included: passed on
            try:
                awaiting = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                awaiting = coro.send(sent)
            except StopIteration as done:
                return done.value


class _PromptFetchConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _PromptFetchThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust hands every consumed message to its streams through this, racing the delivery
        (``callback(message)``) against the flow being suspended by a rebalance: four tasks and an
        ``asyncio.wait`` per message, the largest single cost of a one-event-per-message worker
        (py-spy: about 15% of it; docs/design.md, §7).

        A delivery almost always completes at its first step, without waiting on anything (the
        stream's buffer has room): it has then won the race before the others started, and
        these are closed unstarted. Only a delivery that must wait (a full buffer, flow control)
        is raced as before, from where it stopped.
        """
        first = coros[0] if coros else None
        if (
            len(coros) < 2
            or not asyncio.iscoroutine(first)
            or not all(asyncio.iscoroutine(c) for c in coros[1:])
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await super().wait_first(*coros, timeout=timeout)
        try:
            awaiting = first.send(None)
        except StopIteration as done:
            for other in coros[1:]:
                other.close()
            return WaitResults([first], [done.value], False)
        except BaseException:
            for other in coros[1:]:
                other.close()
            raise
        rest = asyncio.ensure_future(_rest_of(first, awaiting))
        return await super().wait_first(rest, *coros[1:], timeout=timeout)

    async def wait_empty(self) -> None:
        """Faust waits here, before giving partitions away and before stopping, until every
        message handed to an agent is acknowledged. The learn agent holds its messages until a
        snapshot contains them, and at shutdown the timer that would publish it has already
        stopped: a SIGTERM'd worker waited for them until it was killed. So at shutdown the held
        work is published first, and again while Faust waits, as the agent may still take a
        batch from its buffer (``app.driftline_release_held``, set by the worker).

        Not before a rebalance: the timer still runs then, and a worker that wakes from a pause
        to find its partitions gone must not publish the model it held, older than the new
        owner's (tests/faults/test_rebalance.py).
        """
        release = getattr(self.app, "driftline_release_held", None)
        if release is None or not self.app.should_stop:
            await super().wait_empty()
            return

        async def keep_releasing() -> None:
            while True:
                await release()
                await asyncio.sleep(0.2)

        releasing = asyncio.ensure_future(keep_releasing())
        try:
            await super().wait_empty()
        finally:
            releasing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await releasing


class _PromptFetchTransport(faust_kafka.Transport):
    Consumer = _PromptFetchConsumer


class _JoinWhenDueTableManager(TableManager):
    """The app subscribes (asks to join its group) once this has started. Faust's own sleeps a
    second first, for tables registered late; driftline has none (state lives in Redis). This
    one waits instead until the join can no longer end before a crashed predecessor's session
    has expired (:func:`~driftline.core.process.join_wait_seconds`; docs/design.md, §7
    "Recovery is a restart"): no wait at all for a worker that took that long to start.
    """

    async def on_start(self) -> None:
        config: WorkerConfig = self.app.driftline_config  # type: ignore[attr-defined]  # see build_app
        wait = join_wait_seconds(process_age_seconds(), config.broker_session_timeout)
        if wait:
            log.info("joining the group in %.2f s: a crashed predecessor's session expires first", wait)
            await self.sleep(wait)
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


@dataclass(frozen=True)
class StreamTopics:
    """The app's topics, bytes in and bytes out."""

    events: faust.TopicT
    features: faust.TopicT
    dlq: faust.TopicT
    labels: faust.TopicT


def build_app(config: WorkerConfig) -> tuple[faust.App, StreamTopics]:
    """A Faust app for ``config`` (not started) and its four topics."""
    app = faust.App(
        config.group_id,
        broker=config.broker,
        store="memory://",
        autodiscover=False,
        topic_allow_declare=False,
        # Faust's leader-election topic is only needed by tables and would be auto-created.
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # The embedded broker's first group join waits on these timeouts (DESIGN.md): keep them short.
        broker_session_timeout=config.broker_session_timeout,
        broker_rebalance_timeout=config.broker_rebalance_timeout,
        broker_heartbeat_interval=config.broker_heartbeat_interval,
        # A batch of features is at most one small message per model per source partition.
        stream_buffer_maxsize=max(4096, 2 * config.batch_size),
        # A too-large event still goes to the DLQ whole (up to dlq_max_bytes), so the producer and
        # consumer must carry more than the events topic's own limit.
        producer_max_request_size=config.dlq_max_bytes + 64 * 1024,
        consumer_max_fetch_size=max(4 * 1024 * 1024, config.dlq_max_bytes + 64 * 1024),
        # Faust keeps a few local files (its "datadir", by default in the current directory):
        # under driftline's one data directory, never in a checkout.
        datadir=str((config.data_dir / "worker").resolve()),
        # Faust's waits a fixed second before the app subscribes; ours as long as recovery needs.
        TableManager=_JoinWhenDueTableManager,
    )
    app.driftline_config = config  # type: ignore[attr-defined]  # read by _PromptFetchThread
    # Before anything asks for it (topics do): this app's consumers fetch promptly.
    app.transport = _PromptFetchTransport(app.conf.broker_consumer, app)

    def raw(name: str) -> faust.TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    topics = StreamTopics(
        events=raw(config.topics.events),
        features=raw(config.topics.features),
        dlq=raw(config.topics.dlq),
        labels=raw(config.topics.labels),
    )
    return app, topics
