"""The Faust app and its topics, configured from :mod:`driftline.settings`.

Topics are created by ``driftline`` itself (``ensure_topics``) with the partition counts from
settings, never by Faust or by the broker's auto-create, so ``topic_allow_declare`` is off.
Faust tables are not used: stage state lives in Redis with its offsets (see DESIGN.md).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_kafka

from driftline.settings import get_settings

settings = get_settings()


class _PromptFetchThread(faust_kafka.AIOKafkaConsumerThread):
    """Faust asks aiokafka to let the broker hold a fetch for up to 1.5 s when nothing is new.

    On the embedded broker we saw the learn agent stall for up to that long behind its own
    ingest agent's output, the fetch held although records had arrived. A short wait costs an
    idle worker a few more fetch requests per second, and removes the stalls.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms  # read in start()
        return consumer


class _PromptFetchConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _PromptFetchThread(self, loop=self.loop, beacon=self.beacon)


# Every Kafka transport this process creates fetches promptly.
faust_kafka.Transport.Consumer = _PromptFetchConsumer


#: One consumer group per stage set: a worker that runs only the learn stage joining or leaving
#: never makes the ingest workers rebalance, and the other way round.
STAGES = tuple(sorted(set(settings.worker_stages.split(","))))
GROUP_ID = settings.worker_id if len(STAGES) == 2 else f"{settings.worker_id}-{STAGES[0]}"

app = faust.App(
    GROUP_ID,
    broker=settings.faust_broker if settings.kafka_url else "kafka://127.0.0.1:9092",
    store="memory://",
    # Faust keeps a few local files (its "datadir", by default in the current directory): under
    # driftline's one data directory, never in a checkout.
    datadir=str((settings.data_dir / "worker").resolve()),
    autodiscover=False,
    topic_allow_declare=False,
    # Faust's leader-election topic is only needed by tables and would be auto-created.
    topic_disable_leader=True,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    # The embedded broker's first group join waits on these timeouts (DESIGN.md): keep them short.
    broker_session_timeout=settings.broker_session_timeout,
    broker_rebalance_timeout=settings.broker_rebalance_timeout,
    broker_heartbeat_interval=settings.broker_heartbeat_interval,
    # A batch of features is at most one small JSON message per event per model.
    stream_buffer_maxsize=max(4096, 2 * settings.batch_size),
    # A too-large event still goes to the DLQ whole (up to dlq_max_bytes), so the producer and
    # consumer must carry more than the events topic's own limit.
    producer_max_request_size=settings.dlq_max_bytes + 64 * 1024,
    consumer_max_fetch_size=max(4 * 1024 * 1024, settings.dlq_max_bytes + 64 * 1024),
)

events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
features_topic = app.topic(settings.features_topic, key_type=bytes, value_type=bytes,
                           key_serializer="raw", value_serializer="raw")
dlq_topic = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
labels_topic = app.topic(settings.labels_topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")

