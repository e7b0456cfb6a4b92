"""River's drift detectors as driftline uses them: delay, misses and false alarms on streams with
known change points, and what the drift checks cost the learn stage, in one run, in-process.

    python -m bench.drift [--quick] [--seeds 3] [--stationary 50000] [--window 2000] [--jobs N]

- detection, per detector x stream: an :class:`OnlineLearner` built from a :class:`ModelSpec`
  (classification: ``logistic_regression``; regression: the default ``linear_regression``) whose
  ``drift`` is ``DriftSpec(error=DetectorSpec(detector=NAME), features=None)`` with the default
  warm-up, cooldown and ``increases_only``, fed :class:`FeatureRecord` s of River's synthetic
  streams, several seeds, several changes each:

  - SEA, abrupt: concepts 0, 3, 0, 3, 0 (generators chained), a change every 5,000 events;
  - Agrawal, abrupt: classification functions 0, 4, 0, 4, 0, the same way;
  - SEA, gradual: the same concepts through ``synth.ConceptDriftStream(width=1000)``, the change
    point being the transition's middle (an alert from half a width before it counts);
  - Friedman, abrupt: ``synth.FriedmanDrift(drift_type="gra", position=(5000, 10000))``;

  plus, per stream, a stationary run (the first concept only, ``--stationary`` events; SEA's
  serves both SEA rows). Reported: detection delay (events from the change to the first error
  alert at or after it: mean, p90), misses (no alert within ``--window`` events), false alarms
  (alerts before the first change, more than the window after one, or in the stationary run)
  per 100,000 events watched outside the windows, after the warm-up.

  The model does not depend on the detector that watches it, so each stream and seed is learned
  once, by a learner with the default detector (ADWIN), recording the error values its monitor
  is given; every detector then gets those values through ``on_error`` of a learner built from
  its own spec. Checked in each run: replayed ADWIN alerts at exactly the positions the learner
  raised them, and, on a short stream, a learner per detector raising what its replay raises.
- plot: for one seed of each stream, the model's rolling error with the change points and the
  default detector's alerts (``bench/results/drift.png``);
- cost: the learn stage's time per event (``learn_message`` on 500-record messages) for the
  default model with driftline's default drift settings (error and raw-feature detectors) vs
  drift off, on the same precomputed feature records of the simulator, median of 3 runs
  (``bench/results/drift-cost.json``, with the target: at most +15%).

Retraining is off throughout (``policy="never"``): this measures the detectors and what they
cost; a race started by an alert would change the errors the detectors are replayed on.

Results: ``bench/results/drift.json`` and ``drift.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import os
import queue
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from river.datasets import synth

from bench.common import RESULTS, Target, report
from driftline.core.records import FeatureRecord
from driftline.models import drift as drift_module
from driftline.models.drift import DetectorSpec, DriftSpec
from driftline.models.learner import OnlineLearner
from driftline.models.retrain import RetrainSpec
from driftline.models.specs import ModelSpec

Stream = Iterator[tuple[dict[Any, Any], Any]]

CONTINUOUS = ("adwin", "page_hinkley", "kswin")
BINARY = ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm")
DEFAULT_DETECTOR = DetectorSpec().detector
WARM_UP = DriftSpec().warm_up
#: What is measured here is the detectors, and what they cost: no challenger races (bench.retrain).
NO_RETRAIN = RetrainSpec(policy="never")
#: Events between two changes of a drifting stream, and changes per classification stream.
SEGMENT = 5000
CHANGES = 4
WIDTH = 1000  # the gradual stream's transition width
#: Progress is reported every this many events.
CHUNK = 5000
#: The drift checks may cost the learn stage at most this ratio of its time per event without them.
COST_GOAL = 1.15


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    task: str
    estimator: str
    #: (stream, change points, events) for one seed.
    make: Callable[[int], tuple[Stream, list[int], int]]
    #: The stationary stream: the first concept only.
    stationary: Callable[[int], Stream]
    #: Whose stationary run this stream's false alarms count (the same concept: the same run).
    stationary_key: str
    #: An alert this many events before a change point detects it (a gradual change begins early).
    early: int = 0

    @property
    def detectors(self) -> tuple[str, ...]:
        return CONTINUOUS + BINARY if self.task == "classification" else CONTINUOUS

    def spec(self, detector: str) -> ModelSpec:
        return ModelSpec(
            name=self.key,
            task=self.task,  # type: ignore[arg-type]
            estimator=self.estimator,
            drift=DriftSpec(error=DetectorSpec(detector=detector), features=None),
            # Detectors only: a race started by an alert would change the errors after it, and the
            # replays of the same errors (what every detector is judged on) would no longer match.
            retrain=NO_RETRAIN,
        )


def _alternating(concepts: tuple[int, int], seed: int) -> list[tuple[int, int]]:
    """(concept, generator seed) per segment: a, b, a, b, a."""
    return [(concepts[k % 2], 1000 * seed + k) for k in range(CHANGES + 1)]


def _chained(make_one: Callable[[int, int], Stream], concepts: tuple[int, int], seed: int) -> Stream:
    return itertools.chain(
        *(itertools.islice(make_one(c, s), SEGMENT) for c, s in _alternating(concepts, seed))
    )


def sea_abrupt(seed: int) -> tuple[Stream, list[int], int]:
    stream = _chained(lambda c, s: iter(synth.SEA(variant=c, seed=s)), (0, 3), seed)
    return stream, [SEGMENT * k for k in range(1, CHANGES + 1)], SEGMENT * (CHANGES + 1)


def agrawal_abrupt(seed: int) -> tuple[Stream, list[int], int]:
    stream = _chained(lambda c, s: iter(synth.Agrawal(classification_function=c, seed=s)), (0, 4), seed)
    return stream, [SEGMENT * k for k in range(1, CHANGES + 1)], SEGMENT * (CHANGES + 1)


def sea_gradual(seed: int) -> tuple[Stream, list[int], int]:
    """Each change's ``ConceptDriftStream`` covers from halfway after the previous change to
    halfway before the next, so every ``position`` is small (``ConceptDriftStream`` overflows
    ``math.exp`` when the position is more than ~177 widths into the stream)."""
    segments = _alternating((0, 3), seed)
    pieces = []
    for k in range(CHANGES):
        (old, old_seed), (new, new_seed) = segments[k], segments[k + 1]
        local = SEGMENT if k == 0 else SEGMENT // 2  # the change, counted from the piece's start
        length = local + (SEGMENT if k == CHANGES - 1 else SEGMENT // 2)
        piece = synth.ConceptDriftStream(
            stream=synth.SEA(variant=old, seed=old_seed),
            drift_stream=synth.SEA(variant=new, seed=new_seed),
            position=local + 1,  # River counts samples from 1: drift is 50% likely at ``position``
            width=WIDTH,
            seed=seed * 100 + k,
        )
        pieces.append(itertools.islice(piece, length))
    return itertools.chain(*pieces), [SEGMENT * k for k in range(1, CHANGES + 1)], SEGMENT * (CHANGES + 1)


def friedman_abrupt(seed: int) -> tuple[Stream, list[int], int]:
    changes = [SEGMENT, 2 * SEGMENT]
    stream = synth.FriedmanDrift(drift_type="gra", position=tuple(changes), seed=seed)
    return iter(stream), changes, 3 * SEGMENT


SCENARIOS = {
    s.key: s
    for s in (
        Scenario(
            "sea",
            "SEA abrupt (0→3→0…)",
            "classification",
            "logistic_regression",
            sea_abrupt,
            lambda seed: iter(synth.SEA(variant=0, seed=seed)),
            "sea",
        ),
        Scenario(
            "agrawal",
            "Agrawal abrupt (0→4→0…)",
            "classification",
            "logistic_regression",
            agrawal_abrupt,
            lambda seed: iter(synth.Agrawal(classification_function=0, seed=seed)),
            "agrawal",
        ),
        Scenario(
            "sea_gradual",
            f"SEA gradual (0→3→0…, width {WIDTH})",
            "classification",
            "logistic_regression",
            sea_gradual,
            lambda seed: iter(synth.SEA(variant=0, seed=seed)),
            "sea",
            early=WIDTH // 2,
        ),
        Scenario(
            "friedman",
            "Friedman abrupt (gra)",
            "regression",
            "linear_regression",
            friedman_abrupt,
            lambda seed: iter(synth.Friedman(seed=seed)),
            "friedman",
        ),
    )
}
STATIONARY_SEED = 10_000

# --- the work, in worker processes ------------------------------------------------------------
_advance: Callable[[int], None] = lambda n: None  # noqa: E731


def _init_worker(progress: Any) -> None:
    global _advance
    _advance = progress.put


def _record(key: str, i: int, x: dict[Any, Any], y: Any) -> FeatureRecord:
    return FeatureRecord(key, "d", f"e{i}", float(i), {str(k): float(v) for k, v in x.items()}, y, 0, i)


def _learn(
    scenario: Scenario, detector: str, stream: Stream, n: int
) -> tuple[list[int], list[float], list[int]]:
    """Learn ``n`` events the way driftline does; (offsets, error values, offsets of the alerts)
    of what the learner's drift monitor was given and raised."""
    learner = OnlineLearner.create(scenario.spec(detector))
    offsets: list[int] = []
    errors: list[float] = []
    fired: list[int] = []
    on_error = learner.drift.on_error

    def recording(error: float, source: str, offset: int, *rest: Any) -> Any:
        offsets.append(offset)
        errors.append(error)
        alert = on_error(error, source, offset, *rest)
        if alert is not None:
            fired.append(offset)
        return alert

    learner.drift.on_error = recording  # type: ignore[method-assign]
    for i, (x, y) in enumerate(itertools.islice(stream, n)):
        learner.learn(_record(scenario.key, i, x, y), 0, i)
        if (i + 1) % CHUNK == 0:
            _advance(CHUNK)
    _advance(n % CHUNK)
    return offsets, errors, fired


def _replay(scenario: Scenario, detector: str, offsets: list[int], errors: list[float]) -> list[int]:
    """The error values through the drift monitor of a learner built for ``detector``: the
    offsets of the alerts it raises."""
    learner = OnlineLearner.create(scenario.spec(detector))
    monitor, metric = learner.drift, learner._metric_now
    fired = []
    for k, (offset, error) in enumerate(zip(offsets, errors, strict=True)):
        if monitor.on_error(error, "events/0", offset, 0, float(offset), metric) is not None:
            fired.append(offset)
        if (k + 1) % CHUNK == 0:
            _advance(CHUNK)
    _advance(len(offsets) % CHUNK)
    return fired


def run_trace(key: str, seed: int, stationary: bool, n: int, keep_errors: bool) -> dict[str, Any]:
    """One stream and seed: learned once, its error values replayed through every detector."""
    scenario = SCENARIOS[key]
    if stationary:
        stream, changes = scenario.stationary(seed), []
    else:
        stream, changes, n = scenario.make(seed)
    offsets, errors, own = _learn(scenario, DEFAULT_DETECTOR, stream, n)
    alerts = {d: _replay(scenario, d, offsets, errors) for d in scenario.detectors}
    if alerts[DEFAULT_DETECTOR] != own:
        raise AssertionError(f"{key} seed {seed}: replayed {alerts[DEFAULT_DETECTOR]} != learner's {own}")
    return {
        "key": key,
        "seed": seed,
        "stationary": stationary,
        "events": n,
        "changes": changes,
        "alerts": alerts,
        "errors": (offsets, errors) if keep_errors else None,
    }


def run_check(n: int) -> dict[str, Any]:
    """A learner per detector on one short stream: each must raise what its replay raises."""
    scenario = SCENARIOS["sea"]
    stream, _, _ = scenario.make(1)
    events = list(itertools.islice(stream, n))
    offsets, errors, _ = _learn(scenario, DEFAULT_DETECTOR, iter(events), n)
    result = {}
    for detector in scenario.detectors:
        _, _, own = _learn(scenario, detector, iter(events), n)
        replayed = _replay(scenario, detector, offsets, errors)
        result[detector] = {"learner": own, "replay": replayed, "same": own == replayed}
    return result


# --- scoring ----------------------------------------------------------------------------------
def score(alerts: list[int], changes: list[int], n: int, window: int, early: int) -> dict[str, Any]:
    """Delays of the changes detected, misses, and false alarms over the events they could be
    raised in (after the warm-up, outside every change's window)."""
    windows = [(c - early, c + window) for c in changes]
    delays: list[int | None] = []
    for start, end in windows:
        hit = next((a for a in alerts if start <= a <= end), None)
        delays.append(None if hit is None else hit - (start + early))
    false = [a for a in alerts if not any(start <= a <= end for start, end in windows)]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(windows)), "windows must not overlap"
    inside = sum(max(0, min(end, n - 1) - max(start, WARM_UP) + 1) for start, end in windows)
    watched = n - WARM_UP - inside
    return {"delays": delays, "false_alarms": false, "watched": watched}


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low, high = int(at), min(int(at) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summarize(traces: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    stationary = {t["key"]: t for t in traces if t["stationary"]}
    rows = []
    for scenario in SCENARIOS.values():
        drifting = [t for t in traces if t["key"] == scenario.key and not t["stationary"]]
        still = stationary[scenario.stationary_key]
        for detector in scenario.detectors:
            delays: list[int] = []
            misses = changes = false_drifting = watched = 0
            for t in drifting:
                s = score(t["alerts"][detector], t["changes"], t["events"], window, scenario.early)
                changes += len(s["delays"])
                misses += sum(d is None for d in s["delays"])
                delays += [d for d in s["delays"] if d is not None]
                false_drifting += len(s["false_alarms"])
                watched += s["watched"]
            false_still = len(still["alerts"][detector])
            still_watched = still["events"] - WARM_UP
            rows.append(
                {
                    "stream": scenario.key,
                    "title": scenario.title,
                    "detector": detector,
                    "changes": changes,
                    "detected": changes - misses,
                    "misses": misses,
                    "delay_mean": statistics.fmean(delays) if delays else None,
                    "delay_p90": percentile(delays, 0.9) if delays else None,
                    "delays": delays,
                    "false_alarms_stationary": false_still,
                    "stationary_events": still["events"],
                    "false_alarms_drifting": false_drifting,
                    "false_alarms": false_still + false_drifting,
                    "watched_events": watched + still_watched,
                    "false_alarms_per_100k": 1e5 * (false_still + false_drifting) / (watched + still_watched),
                }
            )
    return rows


# --- the cost of the checks -------------------------------------------------------------------
def feature_records(n: int) -> list[FeatureRecord]:
    """The simulator's events through the pure ingest stage, as bench.features makes them."""
    from driftline.simulator import SensorSimulator
    from driftline.streams.features import FeatureSpec
    from driftline.streams.ingest import IngestStage

    stage = IngestStage(
        models=("default",), target="power", max_message_bytes=1_000_000, features=FeatureSpec()
    )
    now_ms = int(time.time() * 1000)
    return [
        r
        for offset, e in enumerate(SensorSimulator(devices=20, seed=5).events(n))
        for r in stage.handle(json.dumps(e).encode(), 0, offset, now_ms)
        if isinstance(r, FeatureRecord)
    ]


def cost(n: int, repeats: int, advance: Callable[[int], None]) -> dict[str, Any]:
    """Per run, a learner with the default drift settings and one with drift off learn the same
    messages side by side, message by message (which goes first alternates), each timed in
    process CPU time: a busy moment of a shared machine weighs on both alike."""
    records = feature_records(n)
    messages = [records[i : i + 500] for i in range(0, len(records), 500)]
    variants = {
        "drift on (default: error + raw features)": ModelSpec(name="default", retrain=NO_RETRAIN),
        "drift off": ModelSpec(
            name="default", drift=DriftSpec(error=None, features=None), retrain=NO_RETRAIN
        ),
    }
    labels = list(variants)
    runs: dict[str, list[float]] = {label: [] for label in variants}
    learners: dict[str, OnlineLearner] = {}
    for _ in range(repeats):
        learners = {label: OnlineLearner.create(spec) for label, spec in variants.items()}
        spent = dict.fromkeys(labels, 0.0)
        for offset, batch in enumerate(messages):
            for label in labels if offset % 2 == 0 else labels[::-1]:
                started = time.process_time()
                learners[label].learn_message(0, offset, batch)
                spent[label] += time.process_time() - started
        for label in labels:
            runs[label].append(1e6 * spent[label] / len(records))
        advance(1)
    on, off = (statistics.median(runs[label]) for label in labels)
    return {
        "events": len(records),
        "features": len(records[0].features),
        "clock": "process CPU time, the two learners interleaved per 500-record message",
        "us_per_event": {label: statistics.median(v) for label, v in runs.items()},
        "runs_us_per_event": runs,
        "ratio": on / off,
        "ratios": [a / b for a, b in zip(*runs.values(), strict=True)],
        "alerts_while_timed": {s: w.alerts for s, w in learners[labels[0]].drift.watches.items()},
    }


# --- the plot ---------------------------------------------------------------------------------
def plot(traces: list[dict[str, Any]], window: int, path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = [t for t in traces if t["errors"] is not None]
    figure, axes = plt.subplots(len(shown), 1, figsize=(12, 2.7 * len(shown)), sharex=True)
    rolling = 250
    for ax, t in zip(axes, shown, strict=True):
        scenario = SCENARIOS[t["key"]]
        offsets, errors = t["errors"]
        means, total = [], 0.0
        for k, e in enumerate(errors):
            total += e - (errors[k - rolling] if k >= rolling else 0.0)
            means.append(total / min(k + 1, rolling))
        # The first events' error (an untrained model) would flatten everything after it.
        settled = [m for o, m in zip(offsets, means, strict=True) if o >= WARM_UP]
        top = 1.35 * max(settled)
        ax.set_ylim(0 if scenario.task == "classification" else 0.8 * min(settled), top)
        ax.plot(offsets, means, color="tab:blue", linewidth=1, label=f"rolling error ({rolling} events)")
        ax.axvspan(0, WARM_UP, color="0.5", alpha=0.2, zorder=0)
        for k, c in enumerate(t["changes"]):
            if scenario.early:
                ax.axvspan(c - WIDTH // 2, c + WIDTH // 2, color="tab:orange", alpha=0.2, zorder=0)
            ax.axvspan(c, c + window, color="tab:green", alpha=0.08, zorder=0)
            ax.axvline(
                c, color="black", linestyle="--", linewidth=1.2, label="true change" if k == 0 else None
            )
        alerts = t["alerts"][DEFAULT_DETECTOR]
        for a in alerts:
            ax.axvline(a, color="tab:red", linewidth=1, alpha=0.8)
        ax.plot(
            alerts,
            [0.93 * top] * len(alerts),
            "v",
            color="tab:red",
            markersize=9,
            label=f"{DEFAULT_DETECTOR} alert (default detector)",
        )
        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Patch(color="0.5", alpha=0.2, label=f"warm-up ({WARM_UP:,})"),
            Patch(color="tab:green", alpha=0.15, label=f"detection window ({window:,})"),
        ]
        if scenario.early:
            handles.append(Patch(color="tab:orange", alpha=0.3, label=f"transition (width {WIDTH:,})"))
        unit = "0/1 error" if scenario.task == "classification" else "absolute error"
        ax.set_title(f"{scenario.title}: {scenario.estimator}, seed {t['seed']}", fontsize=10, loc="left")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("event")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def drift_source() -> str:
    """A fingerprint of the drift code measured (``models/drift.py``): figures go with it."""
    with open(drift_module.__file__, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()[:12]


# --- output -----------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


COLUMNS = (
    "stream",
    "detector",
    "detected",
    "delay mean",
    "delay p90",
    "misses",
    "false alarms, stationary",
    "in drift streams",
    "per 100k events",
)


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            r["title"].split(" (")[0],
            r["detector"],
            f"{r['detected']}/{r['changes']}",
            _fmt(r["delay_mean"]),
            _fmt(r["delay_p90"]),
            str(r["misses"]),
            f"{r['false_alarms_stationary']} in {r['stationary_events'] // 1000}k",
            str(r["false_alarms_drifting"]),
            _fmt(r["false_alarms_per_100k"], 1),
        )
        for r in rows
    ]


def markdown(rows: list[dict[str, Any]], costs: dict[str, Any], config: dict[str, Any]) -> str:
    lines = [
        "# Drift detectors as driftline uses them",
        "",
        f"`python -m bench.drift` — {config['seeds']} seeds per stream, a change every {SEGMENT:,} events, "
        f"detection window {config['window']:,} events, default warm-up/cooldown "
        f"({WARM_UP:,}/{DriftSpec().cooldown:,}), increases only; false alarms over every event "
        "watched outside the windows after the warm-up, a stationary run per stream included "
        f"(models/drift.py sha256 {config['drift_py_sha256']}…; {config['seconds']:.0f} s).",
        "",
        "Streams: " + "; ".join(s.title for s in SCENARIOS.values()) + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(COLUMNS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(rows)]
    us = costs["us_per_event"]
    lines += [
        "",
        f"Cost of the checks, learn stage, default model ({costs['events']:,} simulator events, "
        f"{costs['features']} features, median of {config['repeats']}):",
        "",
        "| | µs/event |",
        "|---|---:|",
        *(f"| {label} | {value:.1f} |" for label, value in us.items()),
        f"| ratio | {costs['ratio']:.3f} (+{100 * (costs['ratio'] - 1):.1f}%) |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, 5,000-event stationary runs, no per-detector learner check, "
        "3,000 events for cost, 2 repeats",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per drifting stream (3)")
    parser.add_argument("--stationary", type=int, default=None, help="events per stationary run (50,000)")
    parser.add_argument(
        "--window", type=int, default=2000, help="events after a change an alert detects it in"
    )
    parser.add_argument("--cost-events", type=int, default=None, help="simulator events timed (20,000)")
    parser.add_argument("--repeats", type=int, default=None, help="cost repeats (3)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    stationary_n = args.stationary or (5_000 if args.quick else 50_000)
    cost_n = args.cost_events or (3_000 if args.quick else 20_000)
    args.repeats = args.repeats or (2 if args.quick else 3)
    check_n = 7_000

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 132)
    jobs: list[tuple[Callable[..., Any], tuple[Any, ...], int]] = []  # (task, args, work units)
    for key in {s.stationary_key for s in SCENARIOS.values()}:
        work = stationary_n * (1 + len(SCENARIOS[key].detectors))
        jobs.append((run_trace, (key, STATIONARY_SEED, True, stationary_n, False), work))
    for scenario in SCENARIOS.values():
        for seed in range(1, seeds + 1):
            n = scenario.make(seed)[2]
            jobs.append(
                (run_trace, (scenario.key, seed, False, 0, seed == 1), n * (1 + len(scenario.detectors)))
            )
    if not args.quick:  # a learner per detector: the costliest job, a check rather than a figure
        jobs.append((run_check, (check_n,), check_n * (2 + 2 * len(SCENARIOS["sea"].detectors))))
    jobs.sort(key=lambda job: -job[2])  # the longest first: the workers finish together
    total = sum(work for _, _, work in jobs)

    measured = drift_source()
    started = time.monotonic()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    results: list[Any] = []
    with progress:
        bar = progress.add_task(f"detectors: learn + replay ({len(jobs)} streams)", total=total)
        if args.jobs <= 1:
            global _advance
            _advance = lambda n: progress.advance(bar, n)  # noqa: E731
            results = [task(*task_args) for task, task_args, _ in jobs]
        else:
            context = multiprocessing.get_context("spawn")
            updates = context.Queue()
            with ProcessPoolExecutor(
                args.jobs, mp_context=context, initializer=_init_worker, initargs=(updates,)
            ) as pool:
                futures: list[Future[Any]] = [pool.submit(task, *task_args) for task, task_args, _ in jobs]
                while not all(f.done() for f in futures):
                    try:
                        progress.advance(bar, updates.get(timeout=0.2))
                    except queue.Empty:
                        pass
                results = [f.result() for f in futures]
            progress.update(bar, completed=total)
        timing = progress.add_task("cost: learn stage, drift on/off", total=args.repeats)
        costs = cost(cost_n, args.repeats, lambda n: progress.advance(timing, n))
    elapsed = time.monotonic() - started

    check = next((r for r in results if "key" not in r), {})
    traces = [r for r in results if "key" in r]
    wrong = {d: c for d, c in check.items() if not c["same"]}
    if wrong:
        raise AssertionError(f"a learner per detector disagrees with its replay: {wrong}")
    rows = summarize(traces, args.window)
    if drift_source() != measured:
        console.print("[bold red]models/drift.py changed during the run: the figures mix two versions[/]")

    table = Table(
        title=f"Drift detectors on the error, as driftline runs them ({seeds} seeds; window {args.window:,})"
    )
    for k, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if k < 2 else "right")
    previous = None
    for row in table_rows(rows):
        if previous is not None and row[0] != previous:
            table.add_section()
        table.add_row(*row)
        previous = row[0]
    console.print(table)
    us = costs["us_per_event"]
    console.print(
        f"cost of the drift checks, learn stage ({costs['events']:,} events, median of {args.repeats}):"
    )
    for label, value in us.items():
        console.print(f"  {label:<44} {value:8.1f} µs/event")
    console.print(
        f"  ratio {costs['ratio']:.3f} (+{100 * (costs['ratio'] - 1):.1f}%; "
        f"target at most +{100 * (COST_GOAL - 1):.0f}%)"
    )

    config = {
        "seeds": seeds,
        "stationary_events": stationary_n,
        "window": args.window,
        "segment": SEGMENT,
        "changes_per_classification_stream": CHANGES,
        "gradual_width": WIDTH,
        "warm_up": WARM_UP,
        "cooldown": DriftSpec().cooldown,
        "cost_events": cost_n,
        "repeats": args.repeats,
        "jobs": args.jobs,
        "quick": args.quick,
        "seconds": elapsed,
        "drift_py_sha256": measured,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drift.json").write_text(
        json.dumps(
            {
                "config": config,
                "rows": rows,
                "cost": costs,
                "check": {d: c["same"] for d, c in check.items()},
                "alerts": [
                    {k: t[k] for k in ("key", "seed", "stationary", "events", "changes", "alerts")}
                    for t in traces
                ],
            },
            indent=2,
        )
    )
    (RESULTS / "drift.md").write_text(markdown(rows, costs, config))
    plot(sorted(traces, key=lambda t: list(SCENARIOS).index(t["key"])), args.window, RESULTS / "drift.png")
    console.print(f"results: {RESULTS}/drift.json, drift.md, drift.png ({elapsed:.0f} s)")
    # The cost figures in the suite's common shape (min-median-max, ratios, the target) for `make bench`.
    report(
        "drift-cost",
        costs["runs_us_per_event"],
        baseline="drift off",
        unit="µs of CPU per event learned",
        targets=[Target("drift checks' cost, ratio to drift off", costs["ratio"], COST_GOAL, False)],
    )


if __name__ == "__main__":
    main()
