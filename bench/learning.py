"""End-to-end learning throughput per worker next to River's own loop and driftline's own stages
in-process, and snapshot publish time against model size, in one run.

    python -m bench.learning [--events 12000] [--repeats 3] [--batch 50] [--snapshots]
                             [--estimator NAME] [--split] [--quick]

A full run takes about 3 minutes on the 2-core machine; ``--quick`` (6,000 events, one repeat)
about a minute; ``--split`` adds the two-process row (half a minute a repeat); ``--snapshots``
adds snapshot publish times for models up to a 32 MiB forest (5 to 6 minutes more).

Target (issue 17, target 1): the streaming tax is small: the pipeline (1 process, ``--batch``
events per message) keeps >= 0.8 of driftline's stages in-process on the same events, each
run's two rates taken side by side and the median of their ratios reported.

- ``--estimator``: time another named estimator (``hoeffding_tree_regressor``, ...) in place of
  the default model's, to see how the pipeline's fixed cost per event weighs against a costlier
  model;

- River in-process: ``predict_one``, metric update, ``learn_one`` for the default model on the
  very feature vectors the pipeline computes for these events (computed beforehand, not timed):
  what a data scientist's notebook loop does, and the ceiling for one core;
- driftline stages in-process: validate, clean, featurize, predict/score/learn with every metric,
  on the same messages encoded beforehand, no broker and no checkpoints;
- pipeline: one worker (both agents) consuming the same events from the broker as a backlog:
  validate, clean, featurize, hop through ``sensor-features``, predict/score/learn with cumulative
  and rolling metrics, checkpoint and publish signed snapshots. Timed from the ingest stage's
  checkpoint past a warm-up tenth of the events to the snapshot that has seen every event
  (``--batch`` events per message, and one per message); and the same worker split in two
  processes, one per stage (``--split``);
- snapshot publish: seal (pickle + HMAC) and the Redis MULTI, for models of growing size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from bench.common import (
    RESULTS,
    Progress,
    Target,
    bench_settings,
    cpu_seconds,
    ingest_received,
    ingest_stage,
    report,
    services,
    stream_bench_args,
    worker,
)
from bench.ingest import make_events, publish
from driftline.core.records import FeatureRecord
from driftline.kafka import ensure_topics
from driftline.models.learner import OnlineLearner
from driftline.models.registry import ModelRegistry
from driftline.models.specs import ESTIMATORS, ModelSpec
from driftline.settings import Settings


def feature_vectors(settings: Settings, events: list[dict[str, Any]]) -> list[FeatureRecord]:
    stage = ingest_stage(settings)
    return [
        r
        for offset, e in enumerate(events)
        for r in stage.handle(json.dumps(e).encode(), 0, offset)
        if isinstance(r, FeatureRecord)
    ]


def river_rate(spec: ModelSpec, records: list[FeatureRecord]) -> float:
    from river import metrics

    model, metric = spec.build(), metrics.MAE()
    rows = [(r.features, r.target) for r in records if r.target is not None]
    started = time.perf_counter()
    for x, y in rows:
        y_pred = model.predict_one(x)
        metric.update(y, y_pred)
        model.learn_one(x, y)
    return len(rows) / (time.perf_counter() - started)


def stages_rate(settings: Settings, events: list[dict[str, Any]], batch: int) -> Progress:
    """driftline's own stages called in-process, no broker, no checkpoints: validate, clean,
    featurize, then predict/score/learn with every metric. What the pipeline costs before any
    messaging, so the rows below show what the hop and the exactly-once bookkeeping add."""
    spec = settings.model_specs()[0]
    stage = ingest_stage(settings, [spec])
    learner = OnlineLearner.create(spec)
    messages = [json.dumps(events[i : i + batch]).encode() for i in range(0, len(events), batch)]
    started, cpu = time.perf_counter(), time.process_time()
    for offset, message in enumerate(messages):
        records = [r for r in stage.handle(message, 0, offset) if isinstance(r, FeatureRecord)]
        learner.learn_message(0, offset, records)
    seen = learner.events_seen
    return Progress(seen / (time.perf_counter() - started), 1e6 * (time.process_time() - cpu) / seen)


def seen_in_latest_snapshot(client: redis.Redis, settings: Settings) -> int:
    model = settings.keys.model(settings.default_model)
    version = client.hget(f"{model}:aliases", "latest")
    if version is None:
        return 0
    return int(json.loads(client.hget(f"{model}:meta", version) or b"{}").get("events_seen", 0))


def wait_until_seen(client: redis.Redis, settings: Settings, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while seen_in_latest_snapshot(client, settings) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the snapshot saw {seen_in_latest_snapshot(client, settings)} of {n} events")
        time.sleep(0.01)


def pipeline_rate(
    kafka_url: str,
    redis_url: str,
    events: list[dict[str, Any]],
    batch: int,
    split: bool = False,
    **overrides: Any,
) -> Progress:
    """Events per second through one worker running both stages, or (``split``) one process per
    stage, consuming the events as a backlog, to the snapshot that has seen every one of them; and
    the CPU time the worker processes spent per event meanwhile (steadier on a shared machine).

    Every event is published before the worker starts, as the in-process loop is handed its
    messages encoded beforehand: the producer's work is no part of the streaming tax, and on two
    cores it would otherwise take CPU from the worker while the clock runs. The clock starts at
    the first snapshot past a warm-up tenth of the events, so the group join, imports and the
    first batches are left out: what is timed is the steady state, down to the last snapshot.
    """
    # A snapshot every 1,000 events, and 0.25 s after the last one: the tail waits on the timer
    # (5 s by default), which would otherwise dominate a run this short.
    values: dict[str, Any] = {
        # The product's default take (DRIFTLINE_BATCH_SIZE, 500 messages), but at most 3,000
        # events per stream batch, so a run this short still shows progress in steps. (Until
        # issue 17 the bench took 1,000 events: 12% fewer events/s at 50 per message, from the
        # per-batch round trips, broker acks and the checkpoint, paid three times as often.)
        "batch_size": min(500, max(1, 3000 // batch)),
        "snapshot_every_events": 1000,
        "snapshot_every_seconds": 0.25,
    }
    settings = bench_settings(kafka_url, redis_url, **(values | overrides))
    ensure_topics(settings)
    client = redis.Redis.from_url(redis_url)
    stages = [settings]
    if split:
        stages = [
            settings.model_copy(update={"worker_stages": "ingest"}),
            settings.model_copy(update={"worker_stages": "learn", "batch_size": 1000}),
        ]
    publish(settings, events, batch)
    with contextlib.ExitStack() as workers:
        pids = [workers.enter_context(worker(stage)).pid for stage in stages]
        # The clock starts on the ingest stage's progress: it checkpoints every stream batch,
        # while a learn stage behind it may take the whole backlog's features in one batch and
        # publish one snapshot. Counting from the ingest stage's count undercounts the learn
        # stage's work in the span (it was further behind), never overcounts it.
        while (counted := ingest_received(client, settings)) < len(events) // 10:
            time.sleep(0.01)
        started, cpu = time.monotonic(), sum(map(cpu_seconds, pids))
        wait_until_seen(client, settings, len(events))
        took, cpu = time.monotonic() - started, sum(map(cpu_seconds, pids)) - cpu
        if counted >= len(events):
            raise RuntimeError("every event was handled before the clock started: raise --events")
        return Progress((len(events) - counted) / took, 1e6 * cpu / (len(events) - counted))


#: The bench's events carry a numeric target: the named estimators that learn one.
REGRESSORS = sorted(name for name, named in ESTIMATORS.items() if "regression" in named.task)

SNAPSHOT_MODELS = [
    ("linear regression", ModelSpec(name="lin")),
    ("Hoeffding tree", ModelSpec(name="ht", estimator="hoeffding_tree_regressor")),
    ("adaptive random forest, 5 trees", ModelSpec(name="arf5", estimator="arf_regressor")),
    (
        "adaptive random forest, 20 trees",
        ModelSpec(name="arf20", estimator="arf_regressor", params={"n_models": 20}),
    ),
]


async def snapshot_times(redis_url: str, records: list[FeatureRecord], repeats: int) -> list[dict[str, Any]]:
    redis_client = AsyncRedis.from_url(redis_url)
    registry = ModelRegistry(
        redis_client, f"bench-snap-{time.time_ns()}", b"bench-secret-key-0123456789", keep_versions=2
    )
    rows = []
    try:
        for label, spec in SNAPSHOT_MODELS:
            learner = OnlineLearner.create(spec)
            learner.learn_message(
                0,
                0,
                [
                    FeatureRecord(
                        spec.name,
                        r.device_id,
                        r.event_id,
                        r.ts,
                        r.features,
                        r.target,
                        r.source_partition,
                        r.source_offset,
                    )
                    for r in records
                ],
            )
            times, size = [], 0
            for _ in range(repeats):
                started = time.perf_counter()
                meta = await registry.publish(learner)
                times.append(1000 * (time.perf_counter() - started))
                size = meta["size_bytes"]
            rows.append(
                {
                    "model": label,
                    "size_kib": size / 1024,
                    "publish_ms": statistics.median(times),
                    "seal_ms": meta["seal_ms"],
                }
            )
            print(
                f"  {label:<34} {size / 1024:>9,.1f} KiB   publish {statistics.median(times):>8.2f} ms"
                f"   (seal {meta['seal_ms']:.2f} ms; runs: {', '.join(f'{t:.1f}' for t in times)})"
            )
    finally:
        await redis_client.aclose()
    return rows


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument(
            "--snapshots", action="store_true", help="also time snapshot publish against model size (minutes)"
        )
        parser.add_argument(
            "--estimator", choices=REGRESSORS, help="a named regressor in place of the default model's"
        )
        parser.add_argument("--split", action="store_true", help="also time the two stages in two processes")
        # Each pipeline run also pays a worker's start, group join and stop (about 15 s here):
        # 12,000 events keep a full run within 3 minutes.
        parser.set_defaults(events=12_000)

    args = stream_bench_args(__doc__, argv, options)
    if args.quick:
        args.events, args.repeats, args.snapshots = min(args.events, 6000), 1, False
    events = make_events(args.events)
    models: dict[str, Any] = {}
    if args.estimator is not None:
        models["models"] = (ModelSpec(name="default", estimator=args.estimator),)
    river = f"River in-process loop ({args.estimator or 'default model'})"
    batched = f"pipeline, 1 process, {args.batch} events/message"
    split = f"pipeline, 2 processes (ingest | learn), {args.batch} events/message"
    single = "pipeline, 1 process, 1 event/message"
    stages = f"driftline stages in-process (no broker), {args.batch} events/message"
    rows: dict[str, list[float]] = {river: [], stages: [], batched: [], single: []}
    if args.split:
        rows[split] = []
    with services() as (kafka_url, redis_url):
        in_process = bench_settings(kafka_url, redis_url, **models)  # the pipeline runs get their own
        records = feature_vectors(in_process, events)
        spec = in_process.model_specs()[0]
        cpu: dict[str, list[float]] = {label: [] for label in rows if label != river}

        def timed(label: str, progress: Progress) -> None:
            rows[label].append(progress.rate)
            cpu[label].append(progress.cpu_us_per_event or 0.0)

        for repeat in range(args.repeats):
            print(f"run {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
            rows[river].append(river_rate(spec, records))
            timed(stages, stages_rate(in_process, events, args.batch))
            timed(batched, pipeline_rate(kafka_url, redis_url, events, args.batch, **models))
            if split in rows:
                timed(split, pipeline_rate(kafka_url, redis_url, events, args.batch, split=True, **models))
            timed(single, pipeline_rate(kafka_url, redis_url, events, 1, **models))
        # Side by side in each run: the machine is shared, and both rates move with its load.
        tax = [p / s for p, s in zip(rows[batched], rows[stages], strict=True)]
        # The same by CPU time per event (the worker's against the in-process loop's): what the
        # streaming layer costs in work, whatever else the machine runs meanwhile.
        cpu_tax = [s / p for p, s in zip(cpu[batched], cpu[stages], strict=True)]
        print(
            "\nCPU time per event (us, median): "
            + ", ".join(f"{label}: {statistics.median(values):.0f}" for label, values in cpu.items())
        )
        report(
            "learning" if args.estimator is None else f"learning-{args.estimator}",
            rows,
            baseline=river,
            targets=[
                Target("pipeline / driftline stages in-process (streaming tax)", statistics.median(tax), 0.8),
                # The same cost as work done: steadier than the rates when the machine is shared.
                Target("the same, by CPU time per event", statistics.median(cpu_tax), 0.8),
            ],
            extra={
                "pipeline_to_stages_per_run": tax,
                "cpu_us_per_event": cpu,
                "pipeline_to_stages_by_cpu_per_run": cpu_tax,
            },
        )
        if not args.snapshots:
            return
        print(f"\nsnapshot publish time vs model size (median of 5, after {len(records)} events):")
        snapshots = asyncio.run(snapshot_times(redis_url, records, 5))
    (RESULTS / "snapshots.json").write_text(json.dumps(snapshots, indent=2))


if __name__ == "__main__":
    main()
