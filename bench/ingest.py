"""Ingest stage throughput per worker, next to the raw consumer and a bare Faust agent on the same
broker, in one run.

    python -m bench.ingest [--events 20000] [--repeats 3] [--batch 50] [--quick]

- raw consumer: aiokafka (what Faust uses) reading the same single-event messages and decoding
  their JSON: the ceiling for a Python consumer on this broker;
- bare Faust agent (``bench.faust_baseline``): what a user would write instead, an agent taking
  the same single-event messages in batches of 1,000 (``stream.take``) and only decoding them;
  issue 17's target 3 is the ingest worker's single-event rate against it (>= 0.7);
- ingest, single-event messages: a worker running only the ingest agent (validate, dedupe,
  clean, featurize, publish features, checkpoint to Redis), one event per Kafka message;
- ingest, batched messages: the same events, ``--batch`` per message (a JSON array).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import redis
from aiokafka import AIOKafkaConsumer

from bench.common import (
    Progress,
    Target,
    bench_settings,
    ingest_received,
    measure_until,
    report,
    services,
    stream_bench_args,
    worker,
)
from bench.faust_baseline import bare_faust_rate
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator


def make_events(n: int) -> list[dict]:
    return list(SensorSimulator(devices=50, seed=3, missing_rate=0.02).events(n))


def publish(settings: Settings, events: list[dict], batch: int) -> None:
    with SensorProducer(settings) as producer:
        if batch <= 1:
            for event in events:
                producer.send(event)
            return
        by_device: dict[str, list[dict]] = {}
        for event in events:
            pending = by_device.setdefault(event["device_id"], [])
            pending.append(event)
            if len(pending) == batch:
                producer.send_batch(pending)
                by_device[event["device_id"]] = []
        for pending in by_device.values():
            producer.send_batch(pending)


async def raw_consumer_rate(settings: Settings, n: int) -> float:
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for record in records:
                    json.loads(record.value)
                    seen += 1
                    if started is None:
                        started = time.perf_counter()
        assert started is not None
        return (n - 1) / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def ingest_rate(kafka_url: str, redis_url: str, events: list[dict], batch: int) -> Progress:
    # ~1000 events per stream batch either way, so both modes checkpoint as often
    settings = bench_settings(kafka_url, redis_url, worker_stages="ingest", batch_size=max(1, 1000 // batch))
    ensure_topics(settings)
    publish(settings, events, batch)  # all waiting before the worker starts: we time consumption
    client = redis.Redis.from_url(redis_url)
    with worker(settings) as process:
        return measure_until(len(events), lambda: ingest_received(client, settings), pid=process.pid)


RAW = "raw consumer (aiokafka + json)"
BARE = "bare Faust agent (take 1000, json)"
SINGLE = "ingest, 1 event/message"


def main(argv: list[str] | None = None) -> None:
    args = stream_bench_args(__doc__, argv)
    if args.quick:
        args.events, args.repeats = min(args.events, 6000), 1
    events = make_events(args.events)
    batched = f"ingest, {args.batch} events/message"
    rows: dict[str, list[float]] = {RAW: [], BARE: [], SINGLE: [], batched: []}
    cpu: dict[str, list[float]] = {BARE: [], SINGLE: [], batched: []}

    def timed(label: str, progress: Progress) -> None:
        rows[label].append(progress.rate)
        cpu[label].append(progress.cpu_us_per_event or 0.0)

    with services() as (kafka_url, redis_url):
        for repeat in range(args.repeats):
            print(f"run {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
            raw = bench_settings(kafka_url, redis_url)
            ensure_topics(raw)
            publish(raw, events, 1)
            rows[RAW].append(asyncio.run(raw_consumer_rate(raw, len(events))))
            timed(BARE, bare_faust_rate(raw.kafka_bootstrap, redis_url, raw.events_topic, len(events)))
            timed(SINGLE, ingest_rate(kafka_url, redis_url, events, 1))
            timed(batched, ingest_rate(kafka_url, redis_url, events, args.batch))
    # Side by side in each run: the machine is shared, and both rates move with its load.
    ratios = [s / b for s, b in zip(rows[SINGLE], rows[BARE], strict=True)]
    # The same by CPU time per event of each process: what each costs in work, whatever else ran.
    by_cpu = [b / s for s, b in zip(cpu[SINGLE], cpu[BARE], strict=True)]
    print(
        "\nCPU time per event (us, median): "
        + ", ".join(f"{label}: {statistics.median(values):.0f}" for label, values in cpu.items())
    )
    report(
        "ingest",
        rows,
        baseline=RAW,
        targets=[
            Target("one event per message / bare Faust agent", statistics.median(ratios), 0.7),
            Target("the same, by CPU time per event", statistics.median(by_cpu), 0.7),
        ],
        extra={
            "single_to_bare_faust_per_run": ratios,
            "cpu_us_per_event": cpu,
            "single_to_bare_faust_by_cpu_per_run": by_cpu,
        },
    )


if __name__ == "__main__":
    main()
