"""Memory: the worker's and the API's resident memory as events flow over 1,000 devices (issue
17, target 6: growth < 50 MB per 1M events once every device is known).

``python -m bench.memory [--quick] [--events 300000] [--mark 100000] [--devices 1000] [--trace SECONDS]``

A real worker and a real ``driftline api`` on a fresh embedded broker. Events from ``--devices``
devices, 50 per message (one device's readings, as a gateway sends them), are produced ahead of
the worker (at most 100,000 waiting). While they flow, the API answers ``/predict`` for a random
device's raw reading (its state read from Redis, featurized) about 20 times a second and swaps
in every snapshot the worker publishes. RSS (``/proc/<pid>/status``) of both is sampled as the
ingest stage's checkpointed count grows (every 0.5 s); the growth is measured from ``--mark``
events (every device long known) to ``--events``, as the least-squares slope of those samples
per 1M events (the difference of the first and the last sample is reported beside it). Full
run: 100k -> 300k (1M events took too long for the suite's budget on a busy 2-core machine,
where the worker learned about 1,100 events/s: ``--events 1000000`` for the whole run);
``--quick``: 10k -> 30k. RSS over events: ``bench/results/memory.png``. ``--trace 60`` runs the
worker with ``DRIFTLINE_TRACEMALLOC_SECONDS=60``
(driftline/memtrace.py): its log then says which allocation sites grew (its RSS is then not
the target's figure: tracemalloc's bookkeeping is in it).

Between 100k and 1M events each device's dedupe window (the last 1,000 event ids it keeps,
``streams/features.py``) is still filling: that growth is bounded (1,000 ids per device) but counts
against the target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis
from rich.console import Console
from rich.progress import Progress

from bench.common import (
    RESULTS,
    Target,
    api,
    bench_settings,
    ingest_received,
    report,
    rss_mb,
    services,
    worker,
    worker_log,
)
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator

PER_MESSAGE = 50
#: Events produced ahead of the worker, at most: the embedded broker keeps every one in memory.
AHEAD = 100_000
GOAL_MB_PER_MILLION = 50.0


class Feeder(threading.Thread):
    """Produces ``count`` events from ``devices`` devices, ``PER_MESSAGE`` of one device per
    message, staying at most :data:`AHEAD` events ahead of what ``received()`` says."""

    def __init__(self, settings: Settings, count: int, devices: int, received: Any) -> None:
        super().__init__(daemon=True)
        self.settings, self.count, self.devices, self.received = settings, count, devices, received
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        # event times in the past (never "from the future"), 20 per second per device at most
        start = datetime.now(UTC) - timedelta(seconds=self.count / 20 + 3600)
        simulator = SensorSimulator(devices=self.devices, start=start, step_seconds=0.05, missing_rate=0.0)
        pending: dict[str, list[dict[str, Any]]] = {}
        try:
            with SensorProducer(self.settings) as producer:
                while self.sent < self.count:
                    event = simulator.next_event()
                    batch = pending.setdefault(event["device_id"], [])
                    batch.append(event)
                    if len(batch) == PER_MESSAGE:
                        producer.send_batch(batch)
                        pending.pop(event["device_id"])
                        self.sent += PER_MESSAGE
                        while self.sent - self.received() > AHEAD:
                            time.sleep(0.2)
        except BaseException as exc:  # reported by the bench
            self.error = exc


class Asker(threading.Thread):
    """``/predict`` for a random device's reading, about ``per_second`` times a second."""

    def __init__(self, url: str, devices: int, per_second: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.url, self.devices, self.pause = url, devices, 1 / per_second
        self.answered = self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random(3)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopping.wait(self.pause):
                body = {
                    "device_id": f"sensor-{rng.randrange(self.devices) + 1:03d}",
                    "readings": {"temperature": 21.0, "humidity": 50.0, "vibration": 0.3, "voltage": 230.0},
                }
                try:
                    ok = client.post("/predict", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.answered += ok
                self.failed += not ok


def growth_per_million(samples: list[tuple[int, float]], mark: int) -> tuple[float, float, float, float]:
    """RSS at the first sample at or past ``mark`` events and at the last sample; the growth
    between those two per 1M events (MB); and the slope of every sample from the mark on, fitted
    by least squares, per 1M events (MB): the target's figure.

    RSS moves in steps (the allocator takes arenas at a batch's peak and keeps them), so the
    difference of two samples swings with where a step falls (47 to 112 MB per 1M over five runs
    of the same code); the fitted slope weighs every sample (one every 0.5 s) in between.

    >>> growth_per_million([(0, 50.0), (100, 90.0), (600, 95.0), (1100, 100.0)], 100)
    (90.0, 100.0, 10000.0, 10000.0)
    >>> growth_per_million([(100, 90.0), (600, 99.0), (1100, 90.0)], 100)[2:]
    (0.0, 0.0)
    """
    tail = [(events, rss) for events, rss in samples if events >= mark]
    (first_events, at_mark), (last_events, end) = tail[0], tail[-1]
    endpoints = (end - at_mark) / (last_events - first_events) * 1_000_000
    events, rss = zip(*tail, strict=True)
    fitted = (
        statistics.linear_regression(events, rss).slope * 1_000_000 if len(set(events)) > 1 else endpoints
    )
    return at_mark, end, endpoints, fitted


def plot(samples: dict[str, list[tuple[int, float]]], mark: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, points in samples.items():
        axis.plot([e for e, _ in points], [r for _, r in points], label=name)
    axis.axvline(mark, color="grey", linestyle=":", label=f"every device known ({mark:,} events)")
    axis.set_xlabel("events received by the worker")
    axis.set_ylabel("RSS (MB)")
    axis.set_title("Resident memory over events")
    axis.legend(loc="center right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(RESULTS / "memory.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=None, help="default 300,000 (quick 30,000)")
    parser.add_argument("--mark", type=int, default=None, help="default 100,000 (quick 10,000)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--trace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run the worker with DRIFTLINE_TRACEMALLOC_SECONDS: its log gets the sites that grew "
        "most (its RSS then includes tracemalloc's bookkeeping: not a measurement of the target)",
    )
    args = parser.parse_args(argv)
    count = args.events or (30_000 if args.quick else 300_000)
    mark = args.mark or (10_000 if args.quick else 100_000)
    began = time.monotonic()
    samples: dict[str, list[tuple[int, float]]] = {"worker": [], "api": []}
    with services() as (kafka_url, redis_url):
        settings = bench_settings(
            kafka_url,
            redis_url,
            batch_size=Settings.model_fields["batch_size"].default,
            batch_within=Settings.model_fields["batch_within"].default,
            tracemalloc_seconds=args.trace,
        )
        ensure_topics(settings)
        client = redis.Redis.from_url(redis_url)
        with worker(settings) as worker_process, api(settings) as (api_process, url):
            feeder = Feeder(settings, count, args.devices, lambda: ingest_received(client, settings))
            asker = Asker(url, args.devices)
            feeder.start()
            asker.start()
            try:
                with Progress(transient=True, console=Console(stderr=True)) as progress:
                    task = progress.add_task("events received", total=count)
                    received = 0
                    deadline = time.monotonic() + 1800
                    while received < count:
                        if feeder.error or worker_process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"stopped at {received} events: {feeder.error}")
                        received = ingest_received(client, settings)
                        samples["worker"].append((received, rss_mb(worker_process.pid)))
                        samples["api"].append((received, rss_mb(api_process.pid)))
                        progress.update(task, completed=received)
                        time.sleep(0.5)
            finally:
                asker.stopping.set()
                asker.join()
            feeder.join()
        client.close()
    seconds = time.monotonic() - began
    rows: dict[str, list[float]] = {}
    extra: dict[str, Any] = {
        "events": count,
        "mark": mark,
        "devices": args.devices,
        "seconds": seconds,
        "predicts_answered": asker.answered,
        "predicts_failed": asker.failed,
        "samples": samples,
    }
    targets = []
    for name, points in samples.items():
        at_mark, end, endpoints, growth = growth_per_million(points, mark)
        rows[f"{name} RSS at {mark:,} events"] = [at_mark]
        rows[f"{name} RSS at {count:,} events"] = [end]
        rows[f"{name} growth per 1M events after {mark:,}, first and last sample"] = [endpoints]
        rows[f"{name} growth per 1M events after {mark:,}, fitted slope"] = [growth]
        targets.append(
            Target(
                f"{name} RSS growth per 1M events",
                growth,
                GOAL_MB_PER_MILLION,
                higher_is_better=False,
                unit=" MB",
            )
        )
    print(f"memory: {count:,} events over {args.devices} devices in {seconds:.0f} s", file=sys.stderr)
    if args.trace:
        print(f"memory: the worker's tracemalloc reports: {worker_log(settings)}", file=sys.stderr)
    report("memory", rows, baseline=f"worker RSS at {mark:,} events", unit="MB", targets=targets, extra=extra)
    plot(samples, mark)


if __name__ == "__main__":
    main()
