"""Retraining on drift: served accuracy over time with and without a challenger race, next to
River's self-adapting models, and what a race costs the learn step, in one run, in-process.

    python -m bench.retrain [--quick] [--events 10000] [--seeds 3] [--cost-events 10000] [--repeats 3]
                            [--jobs N]

- accuracy, per stream x contender x seed: an :class:`OnlineLearner` built from a
  :class:`ModelSpec` (classification, default drift settings) fed :class:`FeatureRecord` s of an
  abrupt concept change at half the events, generators chained (River's ``ConceptDriftStream``
  overflows for an abrupt drift deep in a stream):

  - SEA, variant 3 then variant 2;
  - Agrawal, classification function 0 then 4.

  Contenders: River's plain Hoeffding tree (``river.tree.HoeffdingTreeClassifier``) and
  ``logistic_regression``, each with retraining ``never`` and ``on_drift`` (the default
  :class:`RetrainSpec`); River's self-adapting models, driftline's ``hoeffding_tree_classifier``
  (Hoeffding adaptive tree) and ``arf_classifier`` (adaptive random forest, 5 trees), retraining
  ``never``. The accuracy is the served one: ``learner.predict`` before the event is learned.
  Reported, median over seeds: accuracy before the change, over every event after it, overall;
  races, promotions, the first promotion's event and its delay after the change (and, in the
  JSON only, the learn step's µs per event: indicative, as the runs share the machine).
- plot: rolling accuracy (500 events) per contender for the first seed of each stream, the
  change and each promotion marked (``bench/results/retrain.png``);
- cost: the learn step (``learner.learn``, timed with ``time.perf_counter`` around it) of
  ``logistic_regression`` on a stationary SEA stream with no race (retraining ``never``), idle
  (``on_drift``, no drift: only the warm-start buffer), during a race against one challenger
  (``periodic`` every event, ``min_events`` too large for the race ever to end) and with N search
  candidates racing (N = 1, 2, 4, 8: a grid over ``l2``), the learners taking turns by blocks of
  50 events (which goes first rotates) so a busy moment weighs on all alike; per repeat the median
  over blocks, then the median of ``--repeats``; ratios to no race paired block by block.

Results: ``bench/results/retrain.json``, ``retrain.md`` and ``retrain.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from river.datasets import synth

from bench.common import RESULTS, report
from driftline.core.records import FeatureRecord
from driftline.models import drift as drift_module
from driftline.models import learner as learner_module
from driftline.models import retrain as retrain_module
from driftline.models.learner import OnlineLearner
from driftline.models.retrain import RetrainSpec, SearchSpec
from driftline.models.specs import ModelSpec

Stream = Iterator[tuple[dict[Any, Any], Any]]

#: Events in the rolling accuracy the plot shows.
ROLLING = 500
#: The plot keeps one point every this many events.
PLOT_EVERY = 10
#: A race that never ends by itself: the cost runs measure it for their whole length.
FOREVER = 10**9
#: ``l2`` values of the search candidates (the first N race).
L2_GRID = (0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEARCH_SIZES = (1, 2, 4, 8)
#: Events a cost variant learns in a row before the next one's turn.
BLOCK = 50
#: How the plot marks a model event: marker, size, legend.
MARKERS = {
    "spawn": ("o", 6, "race starts"),
    "promote": ("*", 13, "challenger promoted"),
    "retire": ("X", 8, "race retired"),
}
EDGE: dict[str, Any] = {"markeredgecolor": "black", "markeredgewidth": 0.6}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    #: (concept, seed) -> that concept's generator; ``concepts``: before and after the change.
    make_one: Callable[[int, int], Stream]
    concepts: tuple[int, int]

    def stream(self, seed: int, change: int, events: int) -> Stream:
        before, after = self.concepts
        return itertools.chain(
            itertools.islice(self.make_one(before, seed), change),
            itertools.islice(self.make_one(after, seed + 1000), events - change),
        )


SCENARIOS = {
    s.key: s
    for s in (
        Scenario("sea", "SEA 3→2", lambda c, s: iter(synth.SEA(variant=c, seed=s)), (3, 2)),
        Scenario(
            "agrawal",
            "Agrawal 0→4",
            lambda c, s: iter(synth.Agrawal(classification_function=c, seed=s)),
            (0, 4),
        ),
    )
}


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    estimator: str
    policy: Literal["on_drift", "periodic", "never"]
    #: The plot's colour, one per model (of a pair, the one without retraining is dashed).
    color: str

    def spec(self, name: str) -> ModelSpec:
        return ModelSpec(
            name=name,
            task="classification",
            estimator=self.estimator,
            retrain=RetrainSpec(policy=self.policy),
        )


CONTENDERS = {
    c.key: c
    for c in (
        Contender("ht", "Hoeffding tree", "river.tree.HoeffdingTreeClassifier", "never", "tab:blue"),
        Contender(
            "ht+retrain", "Hoeffding tree", "river.tree.HoeffdingTreeClassifier", "on_drift", "tab:blue"
        ),
        Contender("lr", "logistic regression", "logistic_regression", "never", "tab:orange"),
        Contender("lr+retrain", "logistic regression", "logistic_regression", "on_drift", "tab:orange"),
        Contender("hat", "Hoeffding adaptive tree", "hoeffding_tree_classifier", "never", "tab:green"),
        Contender("arf", "ARF (5 trees)", "arf_classifier", "never", "tab:red"),
    )
}
#: Roughly how long a contender takes per event, relative to the plain tree: longest jobs first.
WEIGHT = {"ht": 1, "ht+retrain": 1, "lr": 0.7, "lr+retrain": 0.7, "hat": 1.5, "arf": 6}


def _record(name: str, i: int, x: dict[Any, Any], y: Any) -> FeatureRecord:
    return FeatureRecord(name, "d", f"e{i}", float(i), {str(k): float(v) for k, v in x.items()}, y, 0, i)


# --- accuracy ---------------------------------------------------------------------------------
def run_one(stream_key: str, contender_key: str, seed: int, events: int, keep_trace: bool) -> dict[str, Any]:
    """One contender on one stream and seed: the served prediction of every event, scored."""
    scenario, contender = SCENARIOS[stream_key], CONTENDERS[contender_key]
    change = events // 2
    learner = OnlineLearner.create(contender.spec(stream_key))
    correct: list[int] = []
    spent = 0.0
    for i, (x, y) in enumerate(scenario.stream(seed, change, events)):
        record = _record(stream_key, i, x, y)
        correct.append(int(learner.predict(record.features).value == y))
        started = time.perf_counter()
        learner.learn(record, 0, i)
        spent += time.perf_counter() - started
    n = len(correct)
    moves = [{"action": e.action, "offset": e.offset} for e in learner.model_events]
    promotions = [m["offset"] for m in moves if m["action"] == "promote"]
    after = [p for p in promotions if p >= change]
    trace = None
    if keep_trace:
        total, rolling = 0, []
        for k, c in enumerate(correct):
            total += c - (correct[k - ROLLING] if k >= ROLLING else 0)
            if k % PLOT_EVERY == PLOT_EVERY - 1:
                rolling.append(total / min(k + 1, ROLLING))
        trace = rolling
    return {
        "stream": stream_key,
        "contender": contender_key,
        "seed": seed,
        "events": n,
        "change": change,
        "before": sum(correct[:change]) / change,
        "after": sum(correct[change:]) / (n - change),
        "overall": sum(correct) / n,
        "races": sum(m["action"] == "spawn" for m in moves),
        "promotions": len(promotions),
        "retirements": sum(m["action"] == "retire" for m in moves),
        "promotions_before_change": len(promotions) - len(after),
        "first_promotion": promotions[0] if promotions else None,
        "delay": after[0] - change if after else None,
        "model_events": moves,
        "learn_us_per_event": 1e6 * spent / n,
        "trace": trace,
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stream and contender, medians over seeds (the paired gain over the same model
    without retraining, too)."""
    by = {(r["stream"], r["contender"], r["seed"]): r for r in runs}
    rows = []
    for stream_key, scenario in SCENARIOS.items():
        for key, contender in CONTENDERS.items():
            mine = sorted(
                (r for r in runs if (r["stream"], r["contender"]) == (stream_key, key)),
                key=lambda r: r["seed"],
            )
            plain = key.removesuffix("+retrain") if key.endswith("+retrain") else None
            gains = [r["after"] - by[(stream_key, plain, r["seed"])]["after"] for r in mine] if plain else []
            rows.append(
                {
                    "stream": stream_key,
                    "title": scenario.title,
                    "contender": key,
                    "model": contender.label,
                    "estimator": contender.estimator,
                    "retrain": contender.policy,
                    "seeds": len(mine),
                    **{f: statistics.median(r[f] for r in mine) for f in ("before", "after", "overall")},
                    "after_gain": statistics.median(gains) if gains else None,
                    "races": statistics.median(r["races"] for r in mine),
                    "promotions": statistics.median(r["promotions"] for r in mine),
                    "promoted_after_change": sum(r["delay"] is not None for r in mine),
                    "promotions_before_change": sum(r["promotions_before_change"] for r in mine),
                    "first_promotion": _median([r["first_promotion"] for r in mine]),
                    "delay": _median([r["delay"] for r in mine]),
                    "learn_us_per_event": statistics.median(r["learn_us_per_event"] for r in mine),
                    "per_seed": {
                        str(r["seed"]): {
                            f: r[f] for f in ("before", "after", "overall", "delay", "model_events")
                        }
                        for r in mine
                    },
                }
            )
    return rows


# --- the cost of a race -----------------------------------------------------------------------
def cost_variants() -> dict[str, ModelSpec]:
    def spec(retrain: RetrainSpec) -> ModelSpec:
        return ModelSpec(name="cost", task="classification", estimator="logistic_regression", retrain=retrain)

    variants = {
        "no race (retrain never)": spec(RetrainSpec(policy="never")),
        "idle (on_drift, no drift: buffer only)": spec(RetrainSpec(policy="on_drift")),
        "race, 1 challenger": spec(
            RetrainSpec(policy="periodic", every=1, min_events=FOREVER, max_events=FOREVER)
        ),
    }
    for n in SEARCH_SIZES:
        search = SearchSpec(grid={"l2": L2_GRID[:n]})
        variants[f"search, {n} candidate{'s' if n > 1 else ''}"] = spec(
            RetrainSpec(policy="never", search=search, min_events=FOREVER, max_events=FOREVER)
        )
    return variants


def cost(n: int, repeats: int, advance: Callable[[int], None]) -> dict[str, Any]:
    """Every variant learns the same stationary SEA events, in blocks of :data:`BLOCK` events
    taken in turn (which variant goes first rotates); each learn call is timed with
    ``perf_counter``. A repeat's figure is the median over its blocks: a garbage collection or
    another process's time slice lands on one variant's block, not on its figure. The ratio to
    no race is the median over every block of the variant's time to no race's in the same turn:
    a busy spell of the machine that outlasts a block weighs on both sides of each ratio."""
    stream = itertools.islice(synth.SEA(variant=0, seed=7), n)
    records = [_record("cost", i, x, y) for i, (x, y) in enumerate(stream)]
    variants = cost_variants()
    labels = list(variants)
    runs: dict[str, list[float]] = {label: [] for label in labels}
    paired: dict[str, list[float]] = {label: [] for label in labels}
    racing: dict[str, int] = {}
    for _ in range(repeats):
        learners = {label: OnlineLearner.create(spec) for label, spec in variants.items()}
        blocks: dict[str, list[float]] = {label: [] for label in labels}
        for b, start in enumerate(range(0, n, BLOCK)):
            block = records[start : start + BLOCK]
            shift = b % len(labels)
            for label in labels[shift:] + labels[:shift]:
                learner, spent = learners[label], 0.0
                for i, record in enumerate(block, start):
                    started = time.perf_counter()
                    learner.learn(record, 0, i)
                    spent += time.perf_counter() - started
                blocks[label].append(1e6 * spent / len(block))
        for label in labels:
            runs[label].append(statistics.median(blocks[label]))
            paired[label] += [a / b for a, b in zip(blocks[label], blocks[labels[0]], strict=True)]
        racing = {
            label: len(learner.race.contenders) if learner.race is not None else 0
            for label, learner in learners.items()
        }
        advance(1)
    base = statistics.median(runs[labels[0]])
    return {
        "events": n,
        "estimator": "logistic_regression",
        "clock": f"time.perf_counter around each learn call; median over blocks of {BLOCK} events, "
        "the variants' blocks taken in turn",
        "baseline": labels[0],
        "us_per_event": {label: statistics.median(v) for label, v in runs.items()},
        "ratio": {label: statistics.median(v) for label, v in paired.items()},
        "ratio_of_medians": {label: statistics.median(v) / base for label, v in runs.items()},
        "runs_us_per_event": runs,
        "challengers_racing_at_end": racing,
    }


# --- the plot ---------------------------------------------------------------------------------
def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    traced = [r for r in runs if r["trace"] is not None]
    figure, axes = plt.subplots(len(SCENARIOS), 1, figsize=(12, 3.6 * len(SCENARIOS)), sharex=True)
    for ax, (stream_key, scenario) in zip(axes, SCENARIOS.items(), strict=True):
        low = 1.0
        seed = None
        for key, contender in CONTENDERS.items():
            run = next(r for r in traced if (r["stream"], r["contender"]) == (stream_key, key))
            seed = run["seed"]
            xs = [PLOT_EVERY * (k + 1) for k in range(len(run["trace"]))]
            retrains = contender.policy != "never"
            label = f"{contender.label}{' + retraining' if retrains else ''}"
            ax.plot(
                xs,
                run["trace"],
                color=contender.color,
                linestyle="--" if key in ("ht", "lr") else "-",
                linewidth=1.4 if retrains else 1.0,
                alpha=0.95 if retrains else 0.8,
                label=label,
            )
            low = min(low, min(run["trace"][ROLLING // PLOT_EVERY :]))
            for move in run["model_events"]:
                at = min(move["offset"] // PLOT_EVERY, len(run["trace"]) - 1)
                marker, size, _ = MARKERS[move["action"]]
                ax.plot(xs[at], run["trace"][at], marker, color=contender.color, markersize=size, **EDGE)
        change = traced[0]["change"]
        ax.axvline(change, color="black", linestyle=":", linewidth=1.3)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_title(
            f"{scenario.title} (abrupt at event {change:,}), seed {seed}: served accuracy, rolling {ROLLING}",
            fontsize=10,
            loc="left",
        )
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="black", linestyle=":", label="concept change"))
        handles += [
            Line2D([], [], marker=marker, markersize=size, color="0.6", linestyle="", label=label, **EDGE)
            for marker, size, label in MARKERS.values()
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("event")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def retrain_source() -> str:
    """A fingerprint of the code measured (``models/retrain.py``, ``learner.py``, ``drift.py``)."""
    digest = hashlib.sha256()
    for module in (retrain_module, learner_module, drift_module):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


# --- output -----------------------------------------------------------------------------------
COLUMNS = (
    "stream",
    "model",
    "retrain",
    "before",
    "after",
    "Δ after",
    "overall",
    "races",
    "promotions",
    "promoted",
    "1st promotion",
    "delay",
)


def _fmt(value: float | None, spec: str = ",.0f", sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+{spec}}" if sign else f"{value:{spec}}"


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            r["title"],
            r["model"],
            r["retrain"],
            _fmt(r["before"], ".3f"),
            _fmt(r["after"], ".3f"),
            _fmt(r["after_gain"], ".3f", sign=True),
            _fmt(r["overall"], ".3f"),
            _fmt(r["races"], "g"),
            _fmt(r["promotions"], "g"),
            f"{r['promoted_after_change']}/{r['seeds']}" if r["retrain"] != "never" else "–",
            _fmt(r["first_promotion"]),
            _fmt(r["delay"]),
        )
        for r in rows
    ]


def markdown(rows: list[dict[str, Any]], costs: dict[str, Any], config: dict[str, Any]) -> str:
    lines = [
        "# Retraining on drift: served accuracy with and without a challenger race",
        "",
        f"`python -m bench.retrain` — {config['seeds']} seeds per stream, {config['events']:,} events, "
        f"an abrupt concept change at event {config['change']:,}; medians over seeds. Accuracy is the "
        "served prediction's (made before the event is learned): *before* the change, *after* it (every "
        "event), *overall*; *Δ after*: the paired gain over the same model without retraining; "
        "*promoted*: seeds with a promotion after the change; *1st promotion*: the event of the first "
        "(one before the change too); *delay*: events from the change to the first after it "
        "(models/retrain.py + learner.py + drift.py sha256 "
        f"{config['source_sha256']}…; {config['seconds']:.0f} s).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(COLUMNS) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(rows)]
    lines += [
        "",
        f"Cost of a race, learn step of `{costs['estimator']}` on {costs['events']:,} stationary SEA "
        f"events (perf_counter per learn call, the variants taking turns by blocks of {BLOCK} events; "
        f"median over blocks, then of {config['repeats']} repeats; the ratio: median over blocks of the "
        "time to no race's in the same turn):",
        "",
        "| | µs/event | ratio to no race |",
        "|---|---:|---:|",
        *(
            f"| {label} | {us:.1f} | {costs['ratio'][label]:.2f} |"
            for label, us in costs["us_per_event"].items()
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="6,000 events, 1 seed, 3,000 events for cost, 2 repeats"
    )
    parser.add_argument(
        "--events", type=int, default=None, help="events per stream; the change at half (10,000)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per stream (3)")
    parser.add_argument(
        "--cost-events", type=int, default=None, help="stationary events timed per repeat (10,000)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="cost repeats (3)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    args.events = args.events or (6_000 if args.quick else 10_000)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.cost_events = args.cost_events or (3_000 if args.quick else 10_000)
    args.repeats = args.repeats or (2 if args.quick else 3)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    jobs = [
        (stream_key, key, seed, args.events, seed == 1)
        for stream_key in SCENARIOS
        for key in CONTENDERS
        for seed in range(1, args.seeds + 1)
    ]
    jobs.sort(key=lambda job: -WEIGHT[job[1]])  # the longest first: the workers finish together
    measured = retrain_source()
    started = time.monotonic()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    runs: list[dict[str, Any]] = []
    with progress:
        bar = progress.add_task(f"accuracy: stream x contender x seed ({args.jobs} jobs)", total=len(jobs))
        if args.jobs <= 1:
            for job in jobs:
                runs.append(run_one(*job))
                progress.advance(bar)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                futures: list[Future[dict[str, Any]]] = [pool.submit(run_one, *job) for job in jobs]
                for future in as_completed(futures):
                    runs.append(future.result())
                    progress.advance(bar)
        timing = progress.add_task("cost: learn step, no race / race / search", total=args.repeats)
        costs = cost(args.cost_events, args.repeats, lambda n: progress.advance(timing, n))
    elapsed = time.monotonic() - started
    if retrain_source() != measured:
        changed = "models/retrain.py, learner.py or drift.py changed during the run"
        console.print(f"[bold red]{changed}: the figures mix versions[/]")

    rows = summarize(runs)
    table = Table(
        title=f"Retraining on drift: served accuracy, median of {args.seeds} seeds "
        f"({args.events:,} events, abrupt change at {args.events // 2:,})"
    )
    for k, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if k < 3 else "right", no_wrap=True)
    previous = None
    for row in table_rows(rows):
        if previous is not None and row[0] != previous:
            table.add_section()
        table.add_row(*row)
        previous = row[0]
    console.print(table)
    console.print(
        f"cost of a race, learn step of logistic_regression ({costs['events']:,} stationary SEA events, "
        f"median of {args.repeats}):"
    )
    for label, us in costs["us_per_event"].items():
        console.print(f"  {label:<40} {us:8.1f} µs/event   x{costs['ratio'][label]:.2f}")

    config = {
        "events": args.events,
        "change": args.events // 2,
        "seeds": args.seeds,
        "rolling": ROLLING,
        "cost_events": args.cost_events,
        "repeats": args.repeats,
        "jobs": args.jobs,
        "quick": args.quick,
        "seconds": elapsed,
        "source_sha256": measured,
        "streams": {k: s.title for k, s in SCENARIOS.items()},
        "contenders": {k: {"estimator": c.estimator, "retrain": c.policy} for k, c in CONTENDERS.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retrain.json").write_text(
        json.dumps({"config": config, "rows": rows, "cost": costs}, indent=2, ensure_ascii=False)
    )
    (RESULTS / "retrain.md").write_text(markdown(rows, costs, config))
    plot(runs, RESULTS / "retrain.png")
    # The cost figures in the suite's common shape (min-median-max, ratios) for `make bench`.
    report(
        "retrain-cost", costs["runs_us_per_event"], baseline=costs["baseline"], unit="µs per event learned"
    )
    console.print(f"results: {RESULTS}/retrain.json, retrain.md, retrain.png ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
