"""driftline's stages in-process next to River: the bare loop, and the program a user would write
instead of driftline, on the same events, side by side in one run (issue 17, target 2).

    python -m bench.stages [--events 20000] [--repeats 3] [--batch 50] [--quick]

- River bare loop: ``predict_one``, metric update, ``learn_one`` for the default model on the
  feature vectors driftline computes for these events (computed beforehand, not timed);
- River featurizing program (:mod:`bench.river_baseline`): decodes the same messages, computes
  the same default features with River's tools (``Agg`` per device, ``utils.Rolling`` /
  ``utils.TimeRolling`` statistics, ``stats.RollingMin/Max``, ``stats.Shift``), then the same loop;
- driftline stages in-process: ``IngestStage.handle`` (validate, dedupe, clean, featurize) and
  ``OnlineLearner.learn_message`` (predict, score with every metric, drift checks, learn), no
  broker and no checkpoints (``bench.learning.stages_rate``).

Each repeat runs all three, one after the other, so each ratio is measured side by side. Rates
are events per second of the process's CPU time (``time.process_time``): all three run on one
thread, and on a shared 2-core machine the wall clock moves with whatever else runs (``--clock
wall`` for the wall clock). The full run (20,000 events, 3 repeats) takes about a minute;
``--quick`` (5,000 events) about 15 s.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from bench.common import Target, bench_settings, ingest_stage, report, stream_bench_args
from bench.ingest import make_events
from bench.learning import feature_vectors
from bench.river_baseline import river_program
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings

BARE = "River bare loop (precomputed vectors)"
PROGRAM = "River featurizing program (Agg, Rolling, TimeRolling)"
STAGES = "driftline stages in-process (validate, clean, featurize, learn)"


def river_bare(spec: ModelSpec, records: list[FeatureRecord], clock: Callable[[], float]) -> float:
    """River's loop on precomputed vectors (as ``bench.learning.river_rate``)."""
    from river import metrics

    model, metric = spec.build(), metrics.MAE()
    rows = [(r.features, r.target) for r in records if r.target is not None]
    started = clock()
    for x, y in rows:
        y_pred = model.predict_one(x)
        metric.update(y, y_pred)
        model.learn_one(x, y)
    return len(rows) / (clock() - started)


def river_featurizing(messages: list[bytes], spec: ModelSpec, clock: Callable[[], float]) -> float:
    started = clock()
    learned = river_program(messages, spec)
    return learned / (clock() - started)


def driftline_stages(settings: Settings, messages: list[bytes], clock: Callable[[], float]) -> float:
    """driftline's stages in-process (as ``bench.learning.stages_rate``): validate, clean,
    featurize, then predict/score/learn with every metric; no broker, no checkpoints."""
    spec = settings.model_specs()[0]
    stage = ingest_stage(settings, [spec])
    learner = OnlineLearner.create(spec)
    started = clock()
    for offset, message in enumerate(messages):
        records = [r for r in stage.handle(message, 0, offset) if isinstance(r, FeatureRecord)]
        learner.learn_message(0, offset, records)
    return learner.events_seen / (clock() - started)


def main(argv: list[str] | None = None) -> None:
    def options(parser: Any) -> None:
        parser.add_argument(
            "--clock", choices=("cpu", "wall"), default="cpu", help="what a rate is per second of"
        )

    args = stream_bench_args(__doc__, argv, options)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n = 5_000 if args.quick else args.events
    events = make_events(n)
    # No broker and no Redis are used: the settings only carry the model, target, features, catalog.
    settings = bench_settings("localhost:9", "redis://localhost:9/0")
    spec = settings.model_specs()[0]
    records = feature_vectors(settings, events)
    messages = [json.dumps(events[i : i + args.batch]).encode() for i in range(0, n, args.batch)]
    rows: dict[str, list[float]] = {BARE: [], PROGRAM: [], STAGES: []}
    runs: list[tuple[str, Any]] = [
        (BARE, lambda: river_bare(spec, records, clock)),
        (PROGRAM, lambda: river_featurizing(messages, spec, clock)),
        (STAGES, lambda: driftline_stages(settings, messages, clock)),
    ]
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"{n:,} events x {args.repeats} repeats", total=args.repeats * len(runs))
        for _ in range(args.repeats):
            for label, run in runs:
                rows[label].append(run())
                progress.advance(task)
    medians = {label: statistics.median(values) for label, values in rows.items()}
    # Each ratio run by run (measured side by side), then the median of those.
    vs_program = statistics.median(s / p for s, p in zip(rows[STAGES], rows[PROGRAM], strict=True))
    vs_bare = statistics.median(s / b for s, b in zip(rows[STAGES], rows[BARE], strict=True))
    report(
        "stages",
        rows,
        baseline=BARE,
        targets=[
            Target("driftline stages / River featurizing program", vs_program, 0.8),
            Target("driftline stages / River bare loop", vs_bare, 0.6),
        ],
        extra={
            "events": n,
            "batch": args.batch,
            "clock": args.clock,
            "us_per_event": {label: 1e6 / rate for label, rate in medians.items()},
        },
    )
    for label, rate in medians.items():
        print(f"  {label:<66} {1e6 / rate:8.1f} us/event")


if __name__ == "__main__":
    main()
