"""Featurization cost next to the model's learn step, and memory per device, in one run.

    python -m bench.features [--quick] [--events 20000] [--devices 2000] [--repeats 5]

- featurize: :func:`driftline.streams.features.featurize` with the default :class:`FeatureSpec`, per event;
- clean + featurize: the whole pure ingest stage (validation, dedupe, cleaning, features);
- learn: the default model's predict + score + learn (:meth:`OnlineLearner.learn`) on the very
  feature vectors featurize produced;
- memory: tracemalloc of 2,000 devices' states after 30 events each, and their size as stored
  in Redis (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from datetime import datetime

from bench.common import report
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.specs import DEFAULT_SPEC
from driftline.simulator import SensorSimulator
from driftline.streams.features import DeviceState, FeatureSpec, featurize
from driftline.streams.ingest import IngestStage


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = fn()
        runs.append(count / (time.perf_counter() - started))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5,000 events, 300 devices, 3 repeats")
    parser.add_argument("--events", type=int, default=None, help="events timed (20,000)")
    parser.add_argument("--devices", type=int, default=None, help="devices whose memory is measured (2,000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each (5)")
    args = parser.parse_args(argv)
    args.events = args.events or (5_000 if args.quick else 20_000)
    args.devices = args.devices or (300 if args.quick else 2_000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    spec = FeatureSpec()
    events = list(SensorSimulator(devices=20, seed=5).events(args.events))
    readings = [
        (
            {k: v for k, v in e["readings"].items() if v is not None},
            datetime.fromisoformat(e["ts"].replace("Z", "+00:00")),
            e["device_id"],
        )
        for e in events
    ]
    raws = [json.dumps(e).encode() for e in events]

    def run_featurize() -> int:
        states: dict[str, DeviceState] = {}
        for values, ts, device in readings:
            featurize(states.setdefault(device, DeviceState()), values, ts, spec)
        return len(readings)

    def run_stage() -> int:
        stage = IngestStage(models=("default",), target="power", max_message_bytes=1_000_000, features=spec)
        now_ms = int(time.time() * 1000)
        for offset, raw in enumerate(raws):
            stage.handle(raw, 0, offset, now_ms)
        return len(raws)

    stage = IngestStage(models=("default",), target="power", max_message_bytes=1_000_000, features=spec)
    records = [
        r
        for o, raw in enumerate(raws)
        for r in stage.handle(raw, 0, o, int(time.time() * 1000))
        if isinstance(r, FeatureRecord)
    ]

    def run_learn() -> int:
        learner = OnlineLearner.create(DEFAULT_SPEC)
        for offset, record in enumerate(records):
            learner.learn(record, 0, offset)
        return len(records)

    rows = {
        "learn (predict+score+learn, linear_regression)": timed(run_learn, args.repeats),
        "featurize (default FeatureSpec)": timed(run_featurize, args.repeats),
        "clean + featurize (pure ingest stage)": timed(run_stage, args.repeats),
    }
    print(f"{len(records[0].features)} features per event with the default spec")
    report("features", rows, baseline="learn (predict+score+learn, linear_regression)")
    per_event_us = {k: 1e6 / statistics.median(v) for k, v in rows.items()}
    for label, us in per_event_us.items():
        print(f"  {label:<48} {us:8.1f} us/event")

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    states = {f"dev-{i:05d}": DeviceState() for i in range(args.devices)}
    sim = SensorSimulator(devices=1, seed=9)
    warm = [sim.next_event() for _ in range(30)]
    for state in states.values():
        for e in warm:
            featurize(
                state,
                {k: v for k, v in e["readings"].items() if v is not None},
                datetime.fromisoformat(e["ts"].replace("Z", "+00:00")),
                spec,
            )
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    stored = statistics.median(len(json.dumps(s.to_json())) for s in list(states.values())[:100])
    print(
        f"\nmemory: {args.devices:,} devices after 30 events each: {used / 2**20:.1f} MiB in the worker, "
        f"{used / args.devices / 1024:.1f} KiB per device; {stored / 1024:.1f} KiB per device in Redis"
    )


if __name__ == "__main__":
    main()
