"""Recovery: SIGKILL the worker under load; seconds until a new worker learns again, and events
learned twice (issue 17, target 7: < 15 s, and 0 double-counted).

``python -m bench.recovery [--quick] [--kills 2] [--rate 200] [--configs default,dynamic-10s]``

One worker learns while events flow (``--rate`` per second, 10 per message, 20 devices). At a
moment after its latest snapshot, it is killed (SIGKILL: no shutdown, no leave-group) and a new
worker is started at once with the same settings, as a supervisor restarts it. For each kill:

* **to consume**: seconds from the kill until the new worker's ingest stage checkpoints events
  past what the killed one had checkpointed;
* **to learn**: seconds until a snapshot with more events than the newest before the kill is
  published (what "learns again" means from outside: a model that moved on);
* **redone**: events acknowledged by the broker that the newest snapshot before the kill did not
  hold; the new worker learns them (again, for those the killed one had learned in memory);
* **phases**: where the seconds to learn went, from the new worker's log lines (each carries its
  wall-clock time): the process up (interpreter, imports, settings), topics and Redis checked,
  the stream code loaded, Faust's app started, the wait until it asks to join the
  group, the group join until the partitions are assigned (and how many joins it took); then,
  each from the assignment, the first batch checkpointed and the first snapshot published (the
  learn stage may publish before the ingest stage's first checkpoint: it reads again what the
  killed worker had sent it). The report prints their medians.

After the last kill the stream ends and every event must have been learned exactly once: the
newest snapshot's ``events_seen`` and ``events_learned`` and the ingest stage's ``received``
must equal the events sent, with 0 deduplicated (a double count would exceed them).

``--configs`` compares consumer-group timeouts one after the other on one broker: ``default``
(the settings' defaults: 6 s), ``session-10s`` (the 10 s session and rebalance timeouts driftline
had before issue 17), ``session-6s``, ``session-4s`` (the fault suite's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis

from bench.common import Target, bench_settings, ingest_received, report, services, settings_env, stop
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator

#: Consumer-group settings compared by ``--configs``: ``default`` is the product's (the other
#: benchmarks shorten them, see ``bench_settings``).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {
        name: Settings.model_fields[name].default
        for name in ("broker_session_timeout", "broker_rebalance_timeout", "broker_heartbeat_interval")
    },
    # the group timeouts driftline had before issue 17
    "session-10s": {
        "broker_session_timeout": 10.0,
        "broker_rebalance_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
    },
    "session-6s": {
        "broker_session_timeout": 6.0,
        "broker_rebalance_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
    },
    "session-4s": {
        "broker_session_timeout": 4.0,
        "broker_rebalance_timeout": 4.0,
        "broker_heartbeat_interval": 0.5,
    },
}
PER_MESSAGE = 10

#: The new worker's start, step by step: each phase ends at the first log line that matches its
#: pattern (after the previous phase's line); the first phase starts at the kill, and the last
#: ends when the partitions are assigned.
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("process up (interpreter, imports, settings)", re.compile(r"worker starting: process up")),
    ("topics and Redis checked", re.compile(r"topics and Redis checked")),
    ("stream code loaded, agents built", re.compile(r"stream code loaded")),
    ("Faust app started", re.compile(r"\[\^Worker\]: Starting")),
    ("waits before asking to join the group", re.compile(r"\(Re-\)joining group")),
    ("group join until partitions assigned", re.compile(r"ingest restored:")),
)
ASSIGNED = PHASES[-1][0]
#: What the stages do once assigned, each timed from the assignment (they do not wait on each
#: other: the learn stage reads again what the killed worker's ingest stage had sent it).
AFTER_ASSIGNMENT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("first batch checkpointed, after the assignment", re.compile(r"first batch since the assignment")),
    ("first snapshot published, after the assignment", re.compile(r"snapshot \S+ v\d+:")),
)
_JOIN = re.compile(r"\(Re-\)joining group")
#: driftline's log lines start ``2026-11-27 01:58:39,827``, Faust's ``[2026-11-27 01:58:40,466]``:
#: local wall-clock time, to the millisecond (logging's asctime).
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def log_time(line: str) -> float | None:
    """The wall-clock time (epoch seconds) a log line was written, or ``None`` for a line
    without one (a continuation, a table Faust prints).

    >>> t = log_time("[2026-11-27 01:58:40,466] [7942] [INFO] [^Worker]: Starting...")
    >>> t == datetime(2026, 11, 27, 1, 58, 40, 466000).timestamp()
    True
    >>> log_time("+-------------------------+") is None
    True
    """
    found = _STAMP.match(line)
    if found is None:
        return None
    whole = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")
    return whole.timestamp() + int(found.group(2)) / 1000


def startup_phases(lines: Iterable[str], killed_at: float) -> tuple[dict[str, float], int]:
    """The seconds each of :data:`PHASES` took in a new worker's log ``lines`` (the kill at
    ``killed_at``, epoch seconds), and each of :data:`AFTER_ASSIGNMENT` from the assignment; and
    how many times it asked to join the group before its partitions were assigned. A phase whose
    line never came is left out (and those after it).

    >>> log = [
    ...     "2026-11-27 01:58:39,500 INFO driftline.worker: worker starting: process up 1.2 s ago",
    ...     "2026-11-27 01:58:40,000 INFO driftline.worker: topics and Redis checked in 0.5 s: {}",
    ...     "[2026-11-27 01:58:41,500] [1] [INFO] (Re-)joining group g",
    ...     "[2026-11-27 01:58:44,500] [1] [INFO] (Re-)joining group g",
    ...     "[2026-11-27 01:58:47,500] [1] [INFO] ingest restored: partitions [0] at offsets {}",
    ... ]
    >>> phases, joins = startup_phases(log, datetime(2026, 11, 27, 1, 58, 38).timestamp())
    >>> phases, joins
    ({'process up (interpreter, imports, settings)': 1.5, 'topics and Redis checked': 0.5}, 2)
    """
    phases: dict[str, float] = {}
    previous, wanted, joins = killed_at, 0, 0
    for line in lines:
        at = log_time(line)
        if at is None:
            continue
        if ASSIGNED not in phases:
            joins += bool(_JOIN.search(line))
            if PHASES[wanted][1].search(line):
                phases[PHASES[wanted][0]] = round(at - previous, 3)
                previous, wanted = at, wanted + 1
            continue
        for name, pattern in AFTER_ASSIGNMENT:
            if name not in phases and pattern.search(line):
                phases[name] = round(at - previous, 3)
    return phases, joins


class Stream(threading.Thread):
    """``rate`` events per second, ``PER_MESSAGE`` per message, until :meth:`finish`."""

    def __init__(self, settings: Settings, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rate = settings, rate
        self.sent = 0  # events handed to the producer
        self.acked = 0  # events the broker acknowledged
        self.error: BaseException | None = None
        self.finishing = threading.Event()
        self._lock = threading.Lock()

    def finish(self) -> None:
        self.finishing.set()
        self.join()
        if self.error:
            raise RuntimeError(f"the producer failed: {self.error}")

    def run(self) -> None:
        simulator = SensorSimulator(
            devices=20, start=datetime.now(UTC), step_seconds=1 / self.rate, missing_rate=0.0
        )
        try:
            with SensorProducer(self.settings) as producer:
                started = time.monotonic()
                while not self.finishing.is_set():
                    events = list(simulator.events(PER_MESSAGE))
                    future = producer.send_raw(events[0]["device_id"].encode(), json.dumps(events).encode())
                    future.add_callback(self._acked)
                    self.sent += PER_MESSAGE
                    pause = started + self.sent / self.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _acked(self, _metadata: Any) -> None:
        with self._lock:
            self.acked += PER_MESSAGE


def newest_meta(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """The newest snapshot's metadata of the default model (``{}`` before the first)."""

    async def read() -> dict[str, Any]:
        connection = AsyncRedis.from_url(settings.redis_url)
        try:
            registry = settings.registry(connection)
            version = await registry.alias_version(settings.model_name)
            return dict(await registry.version_meta(settings.model_name, version)) if version else {}
        finally:
            await connection.aclose()

    return asyncio.run(read())


def events_seen(client: redis.Redis, settings: Settings) -> int:
    return int(newest_meta(client, settings).get("events_seen", 0))


def wait_until(condition: Any, timeout: float, what: str, every: float = 0.05) -> float:
    """Poll ``condition`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError(f"waited {timeout} s for {what}")


def start_worker(settings: Settings, log: Any) -> Any:
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "driftline", "worker", "--loglevel", "info"],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_config(
    kafka_url: str, redis_url: str, overrides: dict[str, Any], kills: int, rate: float
) -> dict[str, Any]:
    """Kill the worker ``kills`` times under a stream; per kill the seconds to consume and to learn
    again and the events redone; then the exactly-once check."""
    import tempfile
    from pathlib import Path

    defaults = Settings.model_fields
    settings = bench_settings(
        kafka_url,
        redis_url,
        batch_size=defaults["batch_size"].default,
        batch_within=defaults["batch_within"].default,
        **overrides,
    )
    ensure_topics(settings)
    client = redis.Redis.from_url(redis_url)
    log = open(Path(tempfile.gettempdir()) / f"{settings.worker_id}-recovery.log", "ab")
    stream = Stream(settings, rate)
    stream.start()
    rng = random.Random(17)
    to_consume, to_learn, redone = [], [], []
    phases: list[dict[str, float]] = []
    joins: list[int] = []
    process = start_worker(settings, log)
    try:
        wait_until(lambda: events_seen(client, settings) > 0, 120, "the first snapshot")
        for number in range(kills):
            # learning for a while, then a moment between two snapshots
            before = events_seen(client, settings)
            wait_until(lambda b=before: events_seen(client, settings) > b, 60, "a snapshot")
            time.sleep(2.0 + rng.uniform(0.0, 1.0))
            process.kill()
            killed_at, killed_epoch = time.monotonic(), time.time()
            killed_wall = time.strftime("%H:%M:%S")
            process.wait()
            new_lines_from = Path(log.name).stat().st_size  # the new worker's log starts here
            acked, seen, received = (
                stream.acked,
                events_seen(client, settings),
                ingest_received(client, settings),
            )
            process = start_worker(settings, log)
            consumed = wait_until(
                lambda r=received: ingest_received(client, settings) > r, 120, "the new worker to consume"
            )
            learned = wait_until(
                lambda s=seen: events_seen(client, settings) > s, 120, "the new worker to learn"
            )
            to_consume.append(consumed - killed_at)
            to_learn.append(learned - killed_at)
            redone.append(acked - seen)
            time.sleep(0.5)  # the snapshot's log line follows its publication
            with open(log.name, "rb") as written:
                written.seek(new_lines_from)
                lines = written.read().decode(errors="replace").splitlines()
            kill_phases, kill_joins = startup_phases(lines, killed_epoch)
            phases.append(kill_phases)
            joins.append(kill_joins)
            print(
                f"  kill {number + 1} at {killed_wall}: consuming after {to_consume[-1]:.1f} s, learning "
                f"after {to_learn[-1]:.1f} s, {redone[-1]} events redone; {kill_joins} group join(s): "
                + ", ".join(f"{name} {seconds:.2f}" for name, seconds in kill_phases.items()),
                file=sys.stderr,
            )
        stream.finish()
        sent = stream.sent
        wait_until(lambda: events_seen(client, settings) >= sent, 120, f"all {sent} events learned")
        time.sleep(2 * settings.snapshot_every_seconds + 1)  # a double count would show by now
        meta = newest_meta(client, settings)
        totals = _ingest_totals(settings)
    finally:
        if stream.is_alive():
            stream.finishing.set()
        stop(process)
        log.close()
        client.close()
    double = max(meta["events_seen"], meta["events_learned"], totals["received"]) - sent
    return {
        "to_consume": to_consume,
        "to_learn": to_learn,
        "redone": redone,
        "phases": phases,
        "joins": joins,
        "sent": sent,
        "events_seen": meta["events_seen"],
        "events_learned": meta["events_learned"],
        "received": totals["received"],
        "deduplicated": totals["deduplicated"],
        "double_counted": double,
        "exactly_once": meta["events_seen"] == meta["events_learned"] == totals["received"] == sent
        and totals["deduplicated"] == 0,
    }


def _ingest_totals(settings: Settings) -> dict[str, int]:
    from driftline.api.stats import ingest_totals

    async def read() -> dict[str, int]:
        connection = AsyncRedis.from_url(settings.redis_url)
        try:
            return dict((await ingest_totals(connection, settings))["totals"])
        finally:
            await connection.aclose()

    return asyncio.run(read())


def print_phases(config: str, phases: list[dict[str, float]], joins: list[int]) -> None:
    """The median seconds of each phase of the new worker's start, over the kills."""
    print(f"\nrecovery phases, {config}: median seconds over {len(phases)} kills (min-max)")
    for name, _ in PHASES + AFTER_ASSIGNMENT:
        values = [kill[name] for kill in phases if name in kill]
        if values:
            print(f"  {name:<48} {statistics.median(values):6.2f}   ({min(values):.2f}-{max(values):.2f})")
    snapshot = AFTER_ASSIGNMENT[-1][0]
    totals = [sum(kill[name] for name, _ in PHASES) + kill[snapshot] for kill in phases if snapshot in kill]
    if totals:
        print(f"  {'kill to first snapshot, by the log':<48} {statistics.median(totals):6.2f}")
    print(f"  group joins per kill: {joins}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kills", type=int, default=None, help="kills per configuration (default 2; quick 1)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument(
        "--configs", default=None, help=f"of {', '.join(CONFIGS)} (default: default; quick too)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer kills")
    args = parser.parse_args(argv)
    # SIGTERM (a runner's timeout) unwinds like Ctrl-C: the workers, broker and Redis are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kills = args.kills or (1 if args.quick else 2)
    names = args.configs.split(",") if args.configs else ["default"]
    results: dict[str, dict[str, Any]] = {}
    with services() as (kafka_url, redis_url):
        for name in names:
            print(f"recovery: {name}, {kills} kills at {args.rate:g} events/s", file=sys.stderr)
            results[name] = run_config(kafka_url, redis_url, CONFIGS[name], kills, args.rate)
    rows: dict[str, list[float]] = {}
    for name, result in results.items():
        rows[f"seconds to learn again, {name}"] = result["to_learn"]
        rows[f"seconds to consume again, {name}"] = result["to_consume"]
    for name, result in results.items():
        print_phases(name, result["phases"], result["joins"])
    first = results[names[0]]
    report(
        "recovery",
        rows,
        baseline=f"seconds to learn again, {names[0]}",
        unit="s",
        targets=[
            Target(
                f"seconds until a new worker learns again ({names[0]})",
                statistics.median(first["to_learn"]),
                15.0,
                higher_is_better=False,
                unit=" s",
            ),
            Target(f"events double-counted ({names[0]})", first["double_counted"], 1, higher_is_better=False),
        ],
        extra=results,
    )


if __name__ == "__main__":
    main()
