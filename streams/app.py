"""The Faust app and its topics, configured from :mod:`driftline.settings`.

Topics are created by ``driftline`` itself (``ensure_topics``) with the partition counts from
settings, never by Faust or by the broker's auto-create, so ``topic_allow_declare`` is off.
Faust tables are not used: stage state lives in Redis with its offsets (see DESIGN.md).
"""

from __future__ import annotations

import faust

from driftline.settings import get_settings

settings = get_settings()

app = faust.App(
    settings.worker_id,
    broker=settings.faust_broker if settings.kafka_url else "kafka://127.0.0.1:9092",
    store="memory://",
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
