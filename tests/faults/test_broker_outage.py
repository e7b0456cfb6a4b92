"""Fault scenario 3: the broker unreachable for a while, behind a proxy the test cuts.

Producers buffer what they are given during the outage and deliver it after (or fail loudly,
never silently); nothing is lost or learned twice; the worker resumes on its own, without a
restart, and ends where the in-process run ends.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from driftline.core.errors import ServiceUnavailable
from driftline.kafka import SensorProducer, ensure_topics
from driftline.simulator import SensorSimulator
from tests.faults.conftest import (
    QUICK_GROUP,
    START,
    ProxiedBroker,
    assert_same_learning,
    batched,
    ingest_counters,
    newest_metas,
    reference_run,
    wait_until_seen,
)

pytestmark = pytest.mark.integration

DEVICE = "sensor-001"


@pytest.mark.parametrize(
    ("outage", "hold"),
    [
        pytest.param(5.0, False, id="refused-5s"),
        pytest.param(20.0, False, id="refused-20s", marks=[pytest.mark.chaos, pytest.mark.timeout(600)]),
        pytest.param(20.0, True, id="black-hole-20s", marks=[pytest.mark.chaos, pytest.mark.timeout(600)]),
    ],
)
def test_broker_outage_loses_nothing_and_the_worker_resumes_on_its_own(
    outage: float,
    hold: bool,
    proxied_broker: ProxiedBroker,
    make_settings: Any,
    start_worker: Any,
    wait_for: Any,
) -> None:
    settings = make_settings(kafka_url=proxied_broker.url, **QUICK_GROUP)
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=4, start=datetime.fromtimestamp(START, UTC)).events(3000))
    messages = batched(events, 10)
    before, during, after = messages[:100], messages[100:200], messages[200:]
    worker = start_worker(settings)
    producer = SensorProducer(settings)
    for message in before:
        producer.send_raw(DEVICE.encode(), message)
    producer.flush()
    wait_for(
        lambda: newest_metas(settings).get("default", {}).get("events_seen", 0) >= 1000,
        timeout=60,
        what="the events sent before the outage to be learned",
    )

    proxy = proxied_broker.proxy
    proxy.cut(hold=hold)
    assert proxy.dropped >= 2, "the worker's and the producer's connections are cut"
    cut_at = time.monotonic()
    slowest_send = 0.0
    for message in during:  # spread over the outage: a device keeps measuring
        started = time.monotonic()
        producer.send_raw(DEVICE.encode(), message)
        slowest_send = max(slowest_send, time.monotonic() - started)
        time.sleep(outage / len(during) / 2)
    time.sleep(max(0.0, outage - (time.monotonic() - cut_at)))
    forwarded = proxy.forwarded
    proxy.restore()
    for message in after:
        producer.send_raw(DEVICE.encode(), message)
    producer.flush(timeout=90)  # raises if anything could not be delivered in time
    producer.close()
    # a send buffers: it never blocks a device for the outage's length
    assert slowest_send < settings.kafka_connect_timeout, slowest_send

    found = wait_until_seen(settings, len(events), timeout=120)
    assert worker.process is not None and worker.process.poll() is None, "the worker died in the outage"
    assert proxy.forwarded > forwarded, "clients came back through the proxy"
    assert_same_learning(found, reference_run(settings, messages))
    counters = ingest_counters(settings)["totals"]
    assert (counters["received"], counters["accepted"]) == (len(events), len(events)), counters


def test_a_producer_that_cannot_deliver_within_its_timeout_fails_loudly(
    proxied_broker: ProxiedBroker, make_settings: Any
) -> None:
    """Past the delivery timeout a buffered event is given up: the caller must hear of it."""
    settings = make_settings(kafka_url=proxied_broker.url)
    ensure_topics(settings)
    producer = SensorProducer(settings, delivery_timeout_ms=3000, request_timeout_ms=1000, linger_ms=0)
    producer.send_raw(DEVICE.encode(), b'{"first": "delivered"}')
    producer.flush()
    proxied_broker.proxy.cut()
    producer.send_raw(DEVICE.encode(), b'{"second": "never delivered"}')
    try:
        with pytest.raises(ServiceUnavailable, match=r"1 message\(s\) not delivered"):
            producer.flush(timeout=20)
    finally:
        proxied_broker.proxy.restore()
        producer.close(timeout=1)
