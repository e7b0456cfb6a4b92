"""Featurization cost next to the model's learn step, and memory per device, in one run.

    python -m bench.features [--quick] [--events 20000] [--devices 2000] [--repeats 5]

- featurize: :func:`driftline.streams.features.featurize` with the default :class:`FeatureSpec`, per event,
  for 20 devices sharing one reading a second (a few readings in each 300 s window), and for one
  device at 10 readings a second (its 300 s windows at their cap of 1,000 readings): the cost per
  event does not grow with the window;
- clean + featurize: the whole pure ingest stage (validation, dedupe, cleaning, features);
- learn: the default model's predict + score + learn (:meth:`OnlineLearner.learn`) on the very
  feature vectors featurize produced;
- memory: tracemalloc of 2,000 devices' states after 30 events each, and of 20 devices at 10
  events a second (full windows), and their size as stored in Redis (JSON).

The full run takes about a minute; ``--quick`` (5,000 events, 300 devices, 2 repeats) about 15 s.
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
    parser.add_argument("--quick", action="store_true", help="5,000 events, 300 devices, 2 repeats")
    parser.add_argument("--events", type=int, default=None, help="events timed (20,000)")
    parser.add_argument("--devices", type=int, default=None, help="devices whose memory is measured (2,000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each (5)")
    args = parser.parse_args(argv)
    args.events = args.events or (5_000 if args.quick else 20_000)
    args.devices = args.devices or (300 if args.quick else 2_000)
    args.repeats = args.repeats or (2 if args.quick else 5)
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
    fast = [
        ({k: v for k, v in e["readings"].items() if v is not None}, parse_ts(e["ts"]), e["device_id"])
        for e in SensorSimulator(devices=1, seed=5, step_seconds=0.1).events(args.events)
    ]

    def run_featurize(readings: list[tuple[dict[str, float], datetime, str]] = readings) -> int:
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
        "featurize, one device at 10 events/s (full windows)": timed(
            lambda: run_featurize(fast), args.repeats
        ),
        "clean + featurize (pure ingest stage)": timed(run_stage, args.repeats),
    }
    print(f"{len(records[0].features)} features per event with the default spec")
    per_event_us = {k: 1e6 / statistics.median(v) for k, v in rows.items()}
    for label, us in per_event_us.items():
        print(f"  {label:<52} {us:8.1f} us/event")

    memory = {
        "heard now and then (30 events)": per_device_memory(spec, args.devices, 30, 1.0),
        "10 events/s (full 300 s windows)": per_device_memory(spec, 5 if args.quick else 20, 3_100, 0.1),
    }
    for label, (in_memory, stored) in memory.items():
        print(
            f"memory per device, {label}: {in_memory / 1024:.1f} KiB in the worker, "
            f"{stored / 1024:.1f} KiB in Redis (JSON), x{in_memory / stored:.1f}"
        )
    report(
        "features",
        rows,
        baseline="learn (predict+score+learn, linear_regression)",
        extra={
            "us_per_event": per_event_us,
            "memory_per_device_bytes": {k: {"worker": m, "redis_json": j} for k, (m, j) in memory.items()},
        },
    )


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def per_device_memory(
    spec: FeatureSpec, devices: int, events: int, step_seconds: float
) -> tuple[float, float]:
    """Bytes per device state in the worker's memory (tracemalloc) and in Redis (its JSON), for
    ``devices`` devices after ``events`` events each, ``step_seconds`` apart."""
    sim = SensorSimulator(devices=1, seed=9, step_seconds=step_seconds)
    warm = [
        ({k: v for k, v in e["readings"].items() if v is not None}, parse_ts(e["ts"]))
        for e in (sim.next_event() for _ in range(events))
    ]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    states = {f"dev-{i:05d}": DeviceState() for i in range(devices)}
    for state in states.values():
        for values, ts in warm:
            featurize(state, values, ts, spec)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    stored = statistics.median(len(json.dumps(s.to_json())) for s in list(states.values())[:100])
    return used / devices, stored


if __name__ == "__main__":
    main()
