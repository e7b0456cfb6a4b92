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

Each repeat runs all three, one after the other, so each ratio is measured side by side. The full
run (20,000 events, 3 repeats) takes about a minute; ``--quick`` (5,000 events) about 15 s.
"""

from __future__ import annotations

import statistics
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from bench.common import Target, bench_settings, report, stream_bench_args
from bench.ingest import make_events
from bench.learning import feature_vectors, river_rate, stages_rate
from bench.river_baseline import river_program_rate

BARE = "River bare loop (precomputed vectors)"
PROGRAM = "River featurizing program (Agg, Rolling, TimeRolling)"
STAGES = "driftline stages in-process (validate, clean, featurize, learn)"


def main(argv: list[str] | None = None) -> None:
    args = stream_bench_args(__doc__, argv)
    n = 5_000 if args.quick else args.events
    events = make_events(n)
    # No broker and no Redis are used: the settings only carry the model, target, features, catalog.
    settings = bench_settings("localhost:9", "redis://localhost:9/0")
    spec = settings.model_specs()[0]
    records = feature_vectors(settings, events)
    rows: dict[str, list[float]] = {BARE: [], PROGRAM: [], STAGES: []}
    runs: list[tuple[str, Any]] = [
        (BARE, lambda: river_rate(spec, records)),
        (PROGRAM, lambda: river_program_rate(events, args.batch, spec)),
        (STAGES, lambda: stages_rate(settings, events, args.batch)),
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
            "us_per_event": {label: 1e6 / rate for label, rate in medians.items()},
        },
    )
    for label, rate in medians.items():
        print(f"  {label:<66} {1e6 / rate:8.1f} us/event")


if __name__ == "__main__":
    main()
