"""Sealing never blocks learning (issue 17, target 4): the longest gap between learned events
while a ~10 MiB model's snapshots seal, and the learn rate with snapshots on against off.

    python -m bench.seal [--quick] [--repeats 3] [--events 400] [--warm-up 5000] [--trees 10]

Measured in-process, on the learn stage's own code path: :class:`LearnBatch` (learn, hold,
capture, settle, ack) with the worker's :class:`Sealer` and the real :class:`ModelRegistry` on a
real Redis, one event per features message (as a device sends them), yielding to the event loop
between messages as the worker does between batches. Only Faust and the broker are left out:
they add the same cost per message with snapshots on or off, and would hide a gap in batching.
A timestamp is taken as each message is learned; a gap is the time between two.

The model is an adaptive random forest regressor (``arf_regressor``, ``--trees`` trees) warmed up
on ``--warm-up`` simulated events until its pickle reaches about 10 MiB (its size is reported),
then copied for every run. Each repeat runs, side by side:

- **off**: snapshots off (``snapshot_every_events`` and ``_seconds`` out of reach);
- **forked**: a snapshot after 300 events, then every 5 s (the default) or as rarely as
  ``LearnBatch.seal_share`` asks (at most a fifth of the time sealing), sealed in a forked child,
  as the worker does for a model this size;
- **inline** (one run, not with ``--quick``): the same, sealed on the event loop (the worker
  before issue 17, and today's path for models under ``seal_fork_min_bytes``).

Also measured: what a fork costs the forking process at 10 MiB and 200 MiB of heap, and what an
inline seal of the default (linear) model costs, the two figures behind ``FORK_MIN_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import RESULTS, Target, bench_settings, report, stream_bench_args
from bench.ingest import make_events
from bench.learning import feature_vectors
from driftline.core import records
from driftline.core.meta import SnapshotMeta
from driftline.core.records import FeatureRecord
from driftline.embedded import EmbeddedRedis, redis_answers
from driftline.models.learner import OnlineLearner
from driftline.models.registry import ModelRegistry
from driftline.models.sealing import Sealer
from driftline.models.specs import ModelSpec
from driftline.streams.batches import Incoming, LearnBatch
from driftline.streams.cleaning import Rejection

NAME = "big"
SECRET = b"bench-secret-key-0123456789"
#: Never due: snapshots off.
NEVER = 10**12
MAX_GAP_MS = 50.0
#: Snapshots on: the first one early in a run (300 events), then at the worker's default 5 s
#: cadence or as the sealing share allows (LearnBatch.seal_share): a run covers a seal's cycle.
SNAPSHOT_EVERY_EVENTS, SNAPSHOT_EVERY_SECONDS = 300, 5.0

FORK_COST = """
import os, sys, time, statistics
ballast = [list(range(20)) for _ in range(int(sys.argv[1]) * 1024 * 1024 // 300)]
rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
times = []
for _ in range(15):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    times.append((time.perf_counter() - started) * 1000)
    os.waitpid(pid, 0)
print(rss, statistics.median(times))
"""


class Effects:
    """The learn stage's effects with the worker's sealer; acks are counted (no broker)."""

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer
        self.acked = 0

    async def seal(self, learners: Sequence[OnlineLearner]) -> asyncio.Future[list[SnapshotMeta]]:
        return await self.sealer.start(learners)

    def ack(self, message: Incoming) -> None:
        self.acked += 1

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None:
        raise RuntimeError(f"no record should fail here: {rejection.message}")

    async def flush(self) -> None:
        pass


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """The local Redis (db 14, as the other benches), or an embedded one."""
    url = os.environ.get("DRIFTLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    if redis_answers(url):
        yield url
        return
    embedded = EmbeddedRedis(log_dir=Path(tempfile.mkdtemp(prefix="driftline-bench-"))).start()
    try:
        yield embedded.url
    finally:
        embedded.stop()


def warmed_model(spec: ModelSpec, warm_up: list[FeatureRecord], progress: Any) -> bytes:
    """The learner after ``warm_up``, pickled (each run starts from a copy)."""
    learner = OnlineLearner.create(spec)
    task = progress.add_task(f"warm-up: {spec.params['n_models']} trees", total=len(warm_up))
    for start in range(0, len(warm_up), 100):
        learner.learn_message(0, start, warm_up[start : start + 100])
        progress.advance(task, len(warm_up[start : start + 100]))
    return pickle.dumps(learner, protocol=5)


async def learn_run(
    url: str, template: bytes, messages: list[bytes], first_offset: int, mode: str
) -> dict[str, Any]:
    """Learn ``messages`` (one event each) from a copy of the warmed model; ``mode`` is off,
    forked or inline. Returns the rate, the gaps and how many snapshots were published."""
    redis = Redis.from_url(url)
    registry = ModelRegistry(redis, f"bench-seal-{time.time_ns()}", SECRET, keep_versions=2)
    try:
        learner = pickle.loads(template)  # our own pickle, made above
        sealer = Sealer(registry, fork_min_bytes=0 if mode == "forked" else NEVER)
        effects = Effects(sealer)
        off = mode == "off"
        batch = LearnBatch(
            {NAME: learner.spec},
            effects,
            snapshot_every_events=NEVER if off else SNAPSHOT_EVERY_EVENTS,
            snapshot_every_seconds=NEVER if off else SNAPSHOT_EVERY_SECONDS,
        )
        batch.restore([learner])
        batch.last_snapshot = time.monotonic()
        pauses: list[float] = []  # the collector's, in ms: a stop that is not sealing's
        began: list[float] = []

        def collector(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                began.append(time.perf_counter())
            elif began:
                pauses.append(1000 * (time.perf_counter() - began.pop()))

        gc.callbacks.append(collector)
        faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        learned, stalls = [time.perf_counter()], []
        for i, value in enumerate(messages):
            batch.handle([Incoming("features", 0, first_offset + i, value)])
            learned.append(time.perf_counter())
            await batch.step()
            await asyncio.sleep(0)  # the worker waits for its next batch here: the loop runs
            stalls.append(1000 * (time.perf_counter() - learned[-1]))
        elapsed = learned[-1] - learned[0]
        # This process's own CPU and page faults (not the child's): what copy-on-write costs it.
        cpu_ms = 1000 * (time.process_time() - cpu) / len(messages)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(messages)
        gc.callbacks.remove(collector)
        await batch.publish()
        gaps = [1000 * (b - a) for a, b in zip(learned, learned[1:], strict=False)]
        versions = await registry.versions(NAME)
        return {
            "rate": len(messages) / elapsed,
            "max_gap_ms": max(gaps),
            "p99_gap_ms": statistics.quantiles(gaps, n=100)[98],
            "median_gap_ms": statistics.median(gaps),
            "max_stall_ms": max(stalls),
            "max_gc_ms": max(pauses, default=0.0),
            "cpu_ms_per_event": cpu_ms,
            "page_faults_per_event": faults,
            "gaps_ms": gaps,
            "stalls_ms": stalls,
            "snapshots": len(versions) and versions[-1]["version"],
            "model_bytes": versions[-1]["model_bytes"] if versions else None,
            "seal_ms": [v["seal_ms"] for v in versions],
            "forked": sealer.forked,
            "inline": sealer.inline,
            "acked": effects.acked,
        }
    finally:
        await redis.aclose()


def fork_costs() -> dict[str, dict[str, float]]:
    """The forking process's stop per fork (median of 15) with about 10 and 200 MiB of heap."""
    out = {}
    for mib in (10, 200):
        done = subprocess.run(
            [sys.executable, "-c", FORK_COST, str(mib)], capture_output=True, text=True, check=True
        )
        rss, median_ms = map(float, done.stdout.split())
        out[f"{mib} MiB heap"] = {"rss_mib": round(rss), "fork_ms": round(median_ms, 2)}
    return out


async def default_model_seal(url: str, featurized: list[FeatureRecord]) -> dict[str, float]:
    """An inline publish of the default (linear) model: its pickle's size and seal time (median
    of 20), the other figure behind ``FORK_MIN_BYTES``."""
    redis = Redis.from_url(url)
    registry = ModelRegistry(redis, f"bench-seal-{time.time_ns()}", SECRET, keep_versions=2)
    try:
        learner = OnlineLearner.create(ModelSpec(name="default"))
        learner.learn_message(0, 0, [dataclasses.replace(r, model="default") for r in featurized])
        listings = [await registry.publish(learner) for _ in range(20)]
        return {
            "model_bytes": listings[-1]["model_bytes"],
            "seal_ms": statistics.median(listing["seal_ms"] for listing in listings),
        }
    finally:
        await redis.aclose()


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for mode, run in runs.items():
        label = f"{mode}: longest {run['max_stall_ms']:.1f} ms"
        ax.plot([max(v, 0.001) for v in run["stalls_ms"]], label=label, linewidth=0.8)
    ax.axhline(MAX_GAP_MS, color="red", linestyle="--", linewidth=0.8, label=f"target < {MAX_GAP_MS:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("event learned (one per message)")
    ax.set_ylabel("loop time after it, outside learning (ms)")
    ax.set_title("What sealing a ~10 MiB snapshot stops learning for (one repeat)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = stream_bench_args(
        __doc__,
        argv,
        lambda p: (
            p.add_argument("--warm-up", type=int, default=None, help="events the model learns first"),
            p.add_argument("--trees", type=int, default=10),
        ),
    )
    quick = args.quick
    repeats = 1 if quick else args.repeats
    # Long enough to hold a seal's cycle (a snapshot after 300 events, then every 5 s). The
    # streaming benchmarks' --events (20,000; --quick 5,000) is far too many for this model.
    events_per_run = args.events if args.events not in (20_000, 5_000) else 800
    warm_up_n = args.warm_up or (1000 if quick else 4000)
    modes = ["off", "forked"] + ([] if quick else ["inline"])

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    started = time.monotonic()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    settings = bench_settings("kafka://unused:9092", "redis://unused")
    spec = ModelSpec(name=NAME, estimator="arf_regressor", params={"n_models": args.trees})
    featurized = feature_vectors(settings, make_events(warm_up_n + events_per_run))
    as_big = [dataclasses.replace(r, model=NAME) for r in featurized]
    warm_up, timed = as_big[:warm_up_n], as_big[warm_up_n:]
    messages = [records.encode(NAME, [r]) for r in timed]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with progress, redis_url() as url:
        template = warmed_model(spec, warm_up, progress)
        task = progress.add_task("runs (off / forked / inline)", total=repeats * 2 + len(modes) - 2)
        for repeat in range(repeats):
            for mode in modes:
                if mode == "inline" and repeat:
                    continue  # the worker before: one run shows its stops (and keeps the bench short)
                runs[mode].append(asyncio.run(learn_run(url, template, messages, warm_up_n, mode)))
                progress.advance(task)
        small = asyncio.run(default_model_seal(url, featurized[:1000]))
        forks = fork_costs()

    rows = {f"learn rate, snapshots {mode}": [r["rate"] for r in runs[mode]] for mode in modes}

    def median_of(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    ratio = statistics.median(f["rate"] / o["rate"] for f, o in zip(runs["forked"], runs["off"], strict=True))
    model_bytes = max(r["model_bytes"] or 0 for r in runs["forked"])
    targets = [
        Target(
            "longest stop of learning by sealing (10 MiB, forked)",
            median_of("forked", "max_stall_ms"),
            MAX_GAP_MS,
            False,
            " ms",
        ),
        Target("learn rate with 10 MiB snapshots / snapshots off", ratio, 0.9, True, ""),
    ]
    figures = {
        mode: {
            key: round(median_of(mode, key), 2)
            for key in (
                "max_stall_ms",
                "max_gap_ms",
                "p99_gap_ms",
                "median_gap_ms",
                "max_gc_ms",
                "cpu_ms_per_event",
                "page_faults_per_event",
            )
        }
        for mode in modes
    }
    extra = {
        "model": f"arf_regressor, {args.trees} trees, after {warm_up_n} events",
        "model_bytes": model_bytes,
        "events_per_run": events_per_run,
        "gaps_and_stops_ms (medians over repeats)": figures,
        "snapshots_per_run": {mode: [r["snapshots"] for r in runs[mode]] for mode in modes},
        "child_seal_ms": [ms for r in runs["forked"] for ms in r["seal_ms"]],
        "inline_seal_ms": [ms for r in runs.get("inline", []) for ms in r["seal_ms"]],
        "fork_cost": forks,
        "default_model_inline_seal": small,
        "duration_s": round(time.monotonic() - started, 1),
    }
    report("seal", rows, "learn rate, snapshots off", targets=targets, extra=extra)
    print(f"  model: {extra['model']}: {model_bytes / 2**20:.1f} MiB pickled")
    for mode, figure in figures.items():
        print(
            f"  snapshots {mode}: longest stop by the loop {figure['max_stall_ms']:.1f} ms; gaps between "
            f"learned events: longest {figure['max_gap_ms']:.0f}, p99 {figure['p99_gap_ms']:.0f}, "
            f"median {figure['median_gap_ms']:.1f} ms; longest collector pause {figure['max_gc_ms']:.0f} ms; "
            f"CPU {figure['cpu_ms_per_event']:.2f} ms and {figure['page_faults_per_event']:.0f} page faults "
            "per event"
        )
    print(f"  fork cost: {forks}")
    print(f"  default model, inline publish: {small}")
    print(f"  took {extra['duration_s']} s")
    plot({mode: runs[mode][-1] for mode in modes}, RESULTS / "seal.png")


if __name__ == "__main__":
    main()
