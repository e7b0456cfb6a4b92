"""Freshness: from an event's publish to the first ``/predict`` answer served by a snapshot that
learned it (issue 17, target 5: p99 < 2 s at the default snapshot interval).

``python -m bench.freshness [--quick] [--configs 1:0.2,5:0.5] [--rate 200] [--seconds 20]``

About 1.5 minutes (two configurations, 20 s each); ``--quick``, the defaults only for 5 s: about 20 s.

A real worker and a real ``driftline api`` process, on a fresh embedded broker; events trickle
at ``--rate`` per second, one event per message (what devices send), across 50 devices. The
producer's acknowledgement gives each event its time and its place (events partition, offset).
A client asks ``/predict`` every 20 ms and notes which version answered. A version *learned* an
event when its snapshot's ``source_positions["events/<partition>"]`` (the last source offset
its model learned from that partition) is at or past the event's offset. An event's freshness
is the time from its acknowledgement to the first answer, received after it, from a version
that learned it.

Each ``--configs`` value (``snapshot_every_seconds:batch_within``) runs on a worker and an API of
its own, one after the other on the same broker; other settings stay at their defaults. The
first (by default: the defaults) is the figure the target is about. Beside the latency, each run
says what its cadence costs: snapshots per minute, bytes written to Redis per minute, how long
the ``keep_versions`` versions and the 10,000-entry audit log last, and the worker's and the
API's CPU per event at that rate. A histogram of latencies: ``bench/results/freshness.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.common import RESULTS, Target, api, bench_settings, cpu_seconds, report, services, worker
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator

#: How often the client asks ``/predict``: the resolution of every figure here.
POLL_SECONDS = 0.02
DEVICES = 50


@dataclass(frozen=True)
class Ack:
    """An event the broker acknowledged: when (monotonic seconds), and where it landed."""

    at: float
    partition: int
    offset: int
    wall: float = 0.0


@dataclass(frozen=True)
class Answer:
    """A ``/predict`` answer: when it was received (monotonic seconds), and which version gave it."""

    at: float
    version: int
    #: the wall clock then (snapshot times are wall-clock)
    wall: float


def learned_positions(meta: Mapping[str, Any]) -> dict[int, int]:
    """Per events partition, the last source offset a snapshot's model learned from.

    >>> learned_positions({"source_positions": {"events/0": [41, 0], "events/3": [7, 2], "labels/0": [9, 0]}})
    {0: 41, 3: 7}
    """
    out = {}
    for source, (offset, _index) in meta.get("source_positions", {}).items():
        kind, _, partition = source.partition("/")
        if kind == "events":
            out[int(partition)] = int(offset)
    return out


@dataclass(frozen=True)
class Served:
    """An event, and the first answer after its ack from a version that learned it."""

    ack: Ack
    answer: Answer

    @property
    def latency(self) -> float:
        return self.answer.at - self.ack.at


def freshness(
    acks: Sequence[Ack], answers: Sequence[Answer], learned: Mapping[int, Mapping[int, int]]
) -> tuple[list[Served], int]:
    """Each event with the first answer received after its ack from a version that learned it
    (``learned``: version -> partition -> last offset learned), and how many events no answer
    covered.

    >>> answers = [Answer(1.0, 1, 0.0), Answer(2.0, 1, 0.0), Answer(3.0, 2, 0.0)]
    >>> learned = {1: {0: 10}, 2: {0: 20}}
    >>> acks = [Ack(0.5, 0, 10), Ack(0.5, 0, 11), Ack(2.5, 0, 11), Ack(2.9, 0, 21)]
    >>> served, missed = freshness(acks, answers, learned)
    >>> [(s.latency, s.answer.version) for s in served], missed
    ([(0.5, 1), (2.5, 2), (0.5, 2)], 1)
    """
    times = [answer.at for answer in answers]
    served, missed = [], 0
    for ack in acks:
        start = bisect.bisect_right(times, ack.at)
        for answer in answers[start:]:
            if learned.get(answer.version, {}).get(ack.partition, -1) >= ack.offset:
                served.append(Served(ack, answer))
                break
        else:
            missed += 1
    return served, missed


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``.

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5), quantile(list(range(100)), 0.99)
    (2.0, 98)
    """
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


class Trickle(threading.Thread):
    """One event per message at ``rate`` per second, until stopped; each ack noted while
    ``recording`` is set."""

    def __init__(self, settings: Settings, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate = settings, rate
        self.acks: list[Ack] = []
        self.sent = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.recording = threading.Event()

    def run(self) -> None:
        simulator = SensorSimulator(
            devices=DEVICES, start=datetime.now(UTC), step_seconds=1 / self.rate, missing_rate=0.0
        )
        try:
            with SensorProducer(self.settings) as producer:
                started = time.monotonic()
                while not self.stopping.is_set():
                    future = producer.send_raw(*encoded(simulator.next_event()))
                    if self.recording.is_set():
                        future.add_callback(self._acked)
                    self.sent += 1
                    pause = started + self.sent / self.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except BaseException as exc:  # reported by the bench, not lost in a thread
            self.error = exc

    def _acked(self, metadata: Any) -> None:
        self.acks.append(Ack(time.monotonic(), metadata.partition, metadata.offset, time.time()))


def encoded(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return str(event["device_id"]).encode(), json.dumps(event).encode()


class Poller(threading.Thread):
    """Asks ``/predict`` (an explicit feature vector: no device state to read) every
    :data:`POLL_SECONDS`, noting each answer's version and when it came."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[Answer] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        body = {"features": {"temperature": 21.0, "humidity": 50.0, "vibration": 0.3, "voltage": 230.0}}
        with httpx.Client(base_url=self.url, timeout=5) as client:
            next_at = time.monotonic()
            while not self.stopping.is_set():
                try:
                    response = client.post("/predict", json=body)
                    if response.status_code == 200:
                        self.answers.append(
                            Answer(time.monotonic(), int(response.json()["version"]), time.time())
                        )
                    elif self.answers:  # a 503 before the first snapshot is expected
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1
                next_at += POLL_SECONDS
                time.sleep(max(0.0, next_at - time.monotonic()))


async def version_metas(settings: Settings, versions: Sequence[int]) -> dict[int, dict[str, Any]]:
    redis = Redis.from_url(settings.redis_url)
    try:
        registry = settings.registry(redis)
        return {v: dict(await registry.version_meta(settings.model_name, v)) for v in versions}
    finally:
        await redis.aclose()


@dataclass(frozen=True)
class Run:
    """One interval's figures."""

    latencies: list[float]
    missed: int
    events: int
    snapshots_per_minute: float
    redis_bytes_per_minute: float
    worker_cpu_us_per_event: float
    #: the API's CPU (cores), answering the poller and swapping models
    api_cpu: float
    #: per version, seconds from its snapshot's creation to the API's first answer from it
    swap_lags: list[float]
    #: per event, seconds from its ack to the creation of the snapshot that served it first
    to_snapshot: list[float]
    seal_ms: list[float]
    poll_failures: int


def run_config(kafka_url: str, redis_url: str, config: Config, rate: float, seconds: float) -> Run:
    """A worker and an API with ``config`` (other settings at their defaults); events trickle at
    ``rate`` for ``seconds`` after a warm-up."""
    interval = config.interval
    settings = bench_settings(
        kafka_url,
        redis_url,
        snapshot_every_seconds=interval,
        batch_size=Settings.model_fields["batch_size"].default,
        batch_within=config.within,
        # every version's metadata must outlive the run, to say which events it learned
        keep_versions=100_000,
    )
    ensure_topics(settings)
    trickle = Trickle(settings, rate)
    with worker(settings) as worker_process, api(settings) as (api_process, url):
        trickle.start()
        poller = Poller(url)
        poller.start()
        deadline = time.monotonic() + 90
        while not poller.answers:  # the first snapshot has been served: warmed up
            if time.monotonic() > deadline or trickle.error:
                raise RuntimeError(f"no model served within 90 s ({trickle.error})")
            time.sleep(0.1)
        time.sleep(3 * interval)  # past the first snapshots' cadence
        cpu_before = cpu_seconds(worker_process.pid), cpu_seconds(api_process.pid)
        sent_before = trickle.sent
        trickle.recording.set()
        time.sleep(seconds)
        trickle.recording.clear()
        events = trickle.sent - sent_before
        cpu_after = cpu_seconds(worker_process.pid), cpu_seconds(api_process.pid)
        # the last events recorded get the time they need to be served (the stream still flows)
        time.sleep(interval + 3)
        poller.stopping.set()
        trickle.stopping.set()
        poller.join()
        trickle.join()
    if trickle.error:
        raise RuntimeError(f"the producer failed: {trickle.error}")
    acks = sorted(trickle.acks, key=lambda ack: ack.at)
    versions = sorted({answer.version for answer in poller.answers})
    metas = asyncio.run(version_metas(settings, versions))
    learned = {v: learned_positions(meta) for v, meta in metas.items()}
    served, missed = freshness(acks, poller.answers, learned)
    latencies = [s.latency for s in served]
    # where the time goes: from the ack to the snapshot's creation (batches, the snapshot's
    # cadence), then to the answer (seal, record, announce, the API's load)
    created = {v: created_at(meta) for v, meta in metas.items()}
    to_snapshot = [created[s.answer.version] - s.ack.wall for s in served]
    # the cadence's cost, over the versions created while events were recorded
    window = (acks[0].at, acks[-1].at)
    first_seen = {}
    for answer in poller.answers:
        first_seen.setdefault(answer.version, answer.at)
    in_window = [v for v in versions if window[0] <= first_seen[v] <= window[1]]
    minutes = (window[1] - window[0]) / 60
    return Run(
        latencies=latencies,
        missed=missed,
        events=events,
        snapshots_per_minute=len(in_window) / minutes,
        redis_bytes_per_minute=sum(metas[v].get("size_bytes", 0) for v in in_window) / minutes,
        worker_cpu_us_per_event=1e6 * (cpu_after[0] - cpu_before[0]) / events,
        api_cpu=(cpu_after[1] - cpu_before[1]) / (window[1] - window[0]),
        swap_lags=[swap_lag(metas[v], poller.answers) for v in in_window],
        to_snapshot=to_snapshot,
        seal_ms=[float(metas[v].get("seal_ms", 0.0)) for v in in_window],
        poll_failures=poller.failures,
    )


def created_at(meta: Mapping[str, Any]) -> float:
    """A snapshot's creation time (wall clock, epoch seconds)."""
    return datetime.fromisoformat(str(meta["created_at"]).replace("Z", "+00:00")).timestamp()


def swap_lag(meta: Mapping[str, Any], answers: Sequence[Answer]) -> float:
    """Seconds from a snapshot's creation to the first answer from its version."""
    return min(a.wall for a in answers if a.version == meta["version"]) - created_at(meta)


@dataclass(frozen=True)
class Config:
    """A snapshot cadence and a batch wait: ``snapshot_every_seconds`` and ``batch_within``."""

    interval: float
    within: float

    @property
    def name(self) -> str:
        return f"snapshot every {self.interval:g} s, batches within {self.within:g} s"

    @staticmethod
    def parse(text: str, within: float) -> Config:
        """``"1"`` or ``"1:0.2"`` (interval, and batch_within unless the default ``within``).

        >>> Config.parse("1:0.2", 0.5), Config.parse("5", 0.5)
        (Config(interval=1.0, within=0.2), Config(interval=5.0, within=0.5))
        """
        interval, _, wait = text.partition(":")
        return Config(float(interval), float(wait) if wait else within)


def plot(runs: Mapping[Config, Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for number, (config, run) in enumerate(runs.items()):
        ordered = sorted(run.latencies)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axis.plot(ordered, fractions, label=config.name + (" (default)" if number == 0 else ""))
    axis.axvline(2.0, color="red", linestyle="--", label="target: p99 < 2 s")
    axis.axhline(0.99, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlabel("seconds from the broker's ack to the first /predict answer that learned the event")
    axis.set_ylabel("fraction of events")
    axis.set_title("Freshness (CDF)")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(RESULTS / "freshness.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    interval = float(Settings.model_fields["snapshot_every_seconds"].default)
    within = float(Settings.model_fields["batch_within"].default)
    parser.add_argument(
        "--configs",
        default=None,
        help="snapshot_every_seconds[:batch_within] values, comma-separated; the first is the target's "
        f"(default: the defaults, {interval:g}:{within:g}, then 5:0.5, the defaults before issue 17)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=None, help="recorded seconds per configuration")
    parser.add_argument("--quick", action="store_true", help="the defaults only, 10 s")
    args = parser.parse_args(argv)
    if args.configs:
        configs = [Config.parse(text, within) for text in args.configs.split(",")]
    else:
        configs = [Config(interval, within)] + ([] if args.quick else [Config(5.0, 0.5)])
    configs = list(dict.fromkeys(configs))
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    runs: dict[Config, Run] = {}
    with services() as (kafka_url, redis_url):
        for config in configs:
            print(f"freshness: {config.name}, {args.rate:g} events/s, {seconds:g} s", file=sys.stderr)
            runs[config] = run_config(kafka_url, redis_url, config, args.rate, seconds)
    rows: dict[str, list[float]] = {}
    extra: dict[str, Any] = {
        "rate": args.rate,
        "seconds": seconds,
        "poll_seconds": POLL_SECONDS,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    keep = Settings.model_fields["keep_versions"].default
    for config, run in runs.items():
        rows[f"p50, {config.name}"] = [statistics.median(run.latencies)]
        rows[f"p99, {config.name}"] = [quantile(run.latencies, 0.99)]
        rows[f"max, {config.name}"] = [max(run.latencies)]
        extra[config.name] = figures = {
            "events": run.events,
            "events_answered": len(run.latencies),
            "events_never_answered": run.missed,
            "snapshots_per_minute": run.snapshots_per_minute,
            "redis_snapshot_bytes_per_minute": run.redis_bytes_per_minute,
            "snapshot_bytes": run.redis_bytes_per_minute / run.snapshots_per_minute,
            f"minutes_the_{keep}_kept_versions_cover": keep / run.snapshots_per_minute,
            "hours_the_audit_log_covers": 10_000 / run.snapshots_per_minute / 60,
            "worker_cpu_us_per_event": run.worker_cpu_us_per_event,
            "api_cpu_cores": run.api_cpu,
            "swap_lag_median_s": statistics.median(run.swap_lags),
            "swap_lag_max_s": max(run.swap_lags),
            "ack_to_snapshot_p50_s": statistics.median(run.to_snapshot),
            "ack_to_snapshot_p99_s": quantile(run.to_snapshot, 0.99),
            "seal_ms_median": statistics.median(run.seal_ms),
            "poll_failures": run.poll_failures,
        }
        print(
            f"  {config.name}: p50 {statistics.median(run.latencies):.3f} s, "
            f"p99 {quantile(run.latencies, 0.99):.3f} s; "
            + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()),
            file=sys.stderr,
        )
    first = configs[0]
    report(
        "freshness",
        rows,
        baseline=f"p99, {first.name}",
        unit="s",
        targets=[
            Target(
                f"freshness p99 ({first.name})",
                quantile(runs[first].latencies, 0.99),
                2.0,
                higher_is_better=False,
                unit=" s",
            )
        ],
        extra=extra,
    )
    plot(runs)


if __name__ == "__main__":
    main()
