"""What every benchmark needs: a fresh broker, a Redis, settings of its own, a worker to time."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from driftline.embedded import EmbeddedBroker, EmbeddedRedis, redis_answers
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.ingest import IngestStage

RESULTS = Path(__file__).parent / "results"


@contextmanager
def services() -> Iterator[tuple[str, str]]:
    """(kafka_url, redis_url): a fresh embedded broker, and the local Redis or an embedded one."""
    logs = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    broker = EmbeddedBroker(log_dir=logs).start()
    redis_url = os.environ.get("DRIFTLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    embedded = None
    if not redis_answers(redis_url):
        embedded = EmbeddedRedis(log_dir=logs).start()
        redis_url = embedded.url
    try:
        yield broker.url, redis_url
    finally:
        broker.stop()
        if embedded:
            embedded.stop()


def bench_settings(kafka_url: str, redis_url: str, **overrides: Any) -> Settings:
    run = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_url": kafka_url,
        "redis_url": redis_url,
        "namespace": f"bench-{run}",
        "worker_id": f"bench-{run}",
        "events_topic": f"bench-events-{run}",
        "features_topic": f"bench-features-{run}",
        "dlq_topic": f"bench-dlq-{run}",
        "labels_topic": f"bench-labels-{run}",
        "model_events_topic": f"bench-model-events-{run}",
        "batch_size": 1000,
        "batch_within": 0.2,
        # A worker's start waits on its group join, which the embedded broker holds for half the
        # session timeout (docs/design.md, §7 "Recovery is a restart"): the benchmarks time steady
        # states, so their groups' timeouts are short (1.5 s joins, against 3 s with the product's
        # 6 s). bench.recovery measures the product's own.
        "broker_session_timeout": 3.0,
        "broker_rebalance_timeout": 3.0,
        "broker_heartbeat_interval": 0.5,
        "env": "test",
        "secret_key": "bench-secret-key-0123456789",
        "api_keys": "bench-api-key-0123456789",
        "admin_keys": "bench:bench-admin-key-0123456789",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def ingest_stage(settings: Settings, models: Sequence[ModelSpec] | None = None) -> IngestStage:
    """The ingest stage as ``driftline worker`` builds it from ``settings`` (its models, target,
    features, message limit and sensor catalog), for a benchmark that runs it in-process."""
    return IngestStage(
        models=tuple(settings.model_specs() if models is None else models),
        target=settings.target,
        features=settings.features,
        max_message_bytes=settings.max_message_bytes,
        catalog=settings.catalog(),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}, **settings.as_env()}


def worker_log(settings: Settings) -> Path:
    """Where :func:`worker` writes the worker's output."""
    return Path(tempfile.gettempdir()) / f"{settings.worker_id}.log"


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a supervisor stops a service; SIGKILL if it is still there after 20 s."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    log = open(worker_log(settings), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline", "worker", "--loglevel", "warn"],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        stop(process)
        log.close()


@contextmanager
def api(settings: Settings, timeout: float = 30.0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``driftline api`` (uvicorn, as deployed) on a free port: the process and its base URL, once
    ``/health`` answers."""
    import httpx

    from driftline.embedded import free_port

    settings = settings.model_copy(update={"api_port": free_port()})
    url = f"http://127.0.0.1:{settings.api_port}"
    log = open(Path(tempfile.gettempdir()) / f"{settings.worker_id}-api.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline", "api"],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited ({process.returncode}); see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API did not answer within {timeout} s; see {log.name}")
            time.sleep(0.2)
        yield process, url
    finally:
        stop(process)
        log.close()


def rss_mb(pid: int) -> float:
    """A process's resident memory (``VmRSS`` in ``/proc``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def ingest_received(client: redis.Redis, settings: Settings) -> int:
    """Events the ingest stage has checkpointed as received, all partitions together."""
    topic_id = client.hget(settings.keys.topics(), settings.events_topic)
    if topic_id is None:
        return 0
    stats = client.hgetall(settings.keys.ingest_stats(settings.events_topic, topic_id.decode()))
    return sum(json.loads(v).get("received", 0) for v in stats.values())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Progress:
    """Events per second in the wall clock, and the CPU the process spent per event."""

    rate: float
    cpu_us_per_event: float | None


def measure_until(
    count: int, probe: Any, pid: int | None = None, timeout: float = 300.0, every: float = 0.02
) -> Progress:
    """Events per second between the first progress ``probe()`` shows and reaching ``count``,
    and (given the process ``pid``) that process's CPU time per event over the same span.

    Timing from the first progress, not from start, leaves the consumer group's join out. On a
    busy 2-core machine the wall-clock rate moves with whatever else runs; the CPU time a process
    spends per event does not, so it is the steadier figure for "does X slow this process down".
    """
    deadline = time.monotonic() + timeout
    first: tuple[float, int, float] | None = None
    while time.monotonic() < deadline:
        seen = probe()
        now = time.monotonic()
        cpu = cpu_seconds(pid) if pid is not None else 0.0
        if seen and first is None:
            first = (now, seen, cpu)
        if seen >= count and first is not None:
            if now == first[0] or seen == first[1]:
                raise RuntimeError("progress came in one step: raise the event count to time it")
            events = seen - first[1]
            per_event = 1e6 * (cpu - first[2]) / events if pid is not None else None
            return Progress(events / (now - first[0]), per_event)
        time.sleep(every)
    raise TimeoutError(f"only {probe()} of {count} events after {timeout}s")


def time_until(count: int, probe: Any, timeout: float = 300.0, every: float = 0.02) -> float:
    """Events per second between the first progress ``probe()`` shows and reaching ``count``."""
    return measure_until(count, probe, timeout=timeout, every=every).rate


@dataclass(frozen=True)
class Target:
    """One figure an issue asks for, and whether this run met it: ``value`` against ``goal``
    (at least ``goal`` when ``higher_is_better``, else below it). ``make bench`` gathers every
    benchmark's targets into the report (``bench/results/<date>.md``, ``BENCHMARKS.md``)."""

    name: str
    value: float
    goal: float
    higher_is_better: bool = True
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value < self.goal

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def report(
    name: str,
    rows: dict[str, list[float]],
    baseline: str,
    unit: str = "events/s",
    targets: Sequence[Target] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    """Print medians and ratios to the baseline, and keep them in bench/results/<name>.json with
    every run, min-median-max, the ``targets`` this run met or missed, and any ``extra`` data."""
    base = statistics.median(rows[baseline])
    print(f"\n{name}: median of {len(rows[baseline])} runs ({unit}); ratio to {baseline}")
    digits = 1 if base < 1000 else 0
    for label, values in rows.items():
        median = statistics.median(values)
        print(
            f"  {label:<66} {median:>9,.{digits}f}   x{median / base:.3f}   "
            f"(runs: {', '.join(f'{v:,.{digits}f}' for v in values)})"
        )
    for target in targets:
        comparison = ">=" if target.higher_is_better else "<"
        print(
            f"  target {target.name}: {target.value:.3g}{target.unit} ({comparison} {target.goal:g}"
            f"{target.unit}) {'met' if target.met else 'NOT MET'}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {
                "unit": unit,
                "baseline": baseline,
                "medians": {k: statistics.median(v) for k, v in rows.items()},
                "ratios": {k: statistics.median(v) / base for k, v in rows.items()},
                "min": {k: min(v) for k, v in rows.items()},
                "max": {k: max(v) for k, v in rows.items()},
                "runs": rows,
                "targets": [t.as_json() for t in targets],
                **({"extra": extra} if extra else {}),
            },
            indent=2,
        )
    )


def stream_bench_args(
    doc: str | None, argv: list[str] | None, more: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """The options every streaming benchmark takes: events, repeats, events per batched message;
    ``more`` adds a benchmark's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=None, help="events per run (20,000; --quick: 5,000)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each (3; --quick: 2)")
    parser.add_argument("--batch", type=int, default=50, help="events per message in batched mode")
    parser.add_argument(
        "--quick", action="store_true", help="a short run (make bench-quick): fewer events and repeats"
    )
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    # What is not given follows the mode; a benchmark may still shorten its own --quick further.
    args.events = args.events or (5_000 if args.quick else 20_000)
    args.repeats = args.repeats or (2 if args.quick else 3)
    return args
