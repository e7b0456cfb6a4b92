"""Where a worker's time goes per event: py-spy records one worker (both stages) while it learns a
backlog of the bench's events, and names the three biggest costs per event.

    python -m bench.profile [--quick] [--seconds 20] [--svg bench/results/profile.svg]

The simulator's events (50 devices, 2% of readings missing), ``--batch`` per message, are
published before the worker starts. Once it has learned its first events (the consumer groups have
joined), two py-spy recordings of ``--seconds`` run side by side on its pid, without pausing it
(``--nonblocking``): a flame graph (``--svg``) and py-spy's raw collapsed stacks, from which the
self and cumulative time of each function are counted. Only samples of threads that are not idle
count, so the figures are the worker's busy time; divided by the events the worker learned in the
same span (from its snapshots, published every 1,000 events), they are µs per event. Results:
``bench/results/profile.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import RESULTS, bench_settings, services, worker
from bench.suite import top_costs
from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator


def learned(client: redis.Redis, settings: Settings) -> int:
    """Events seen by the newest snapshot of the default model."""
    model = settings.keys.model(settings.default_model)
    version = client.hget(f"{model}:aliases", "latest")
    if version is None:
        return 0
    return int(json.loads(client.hget(f"{model}:meta", version) or b"{}").get("events_seen", 0))


def publish(settings: Settings, events: list[dict[str, Any]], batch: int) -> None:
    """``batch`` events of one device per message, as devices that buffer send them."""
    with SensorProducer(settings) as producer:
        pending: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            mine = pending.setdefault(event["device_id"], [])
            mine.append(event)
            if len(mine) == batch:
                producer.send_batch(mine)
                pending[event["device_id"]] = []
        for mine in pending.values():
            if mine:
                producer.send_batch(mine)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: make install (it is in the dev extra)")
    return found


def record(pid: int, seconds: float, rate: int, out: Path, form: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
        + ["--nonblocking", "--format", form, "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="record 5 s instead of 20")
    parser.add_argument("--seconds", type=int, default=None, help="seconds recorded (20; --quick: 5)")
    parser.add_argument("--batch", type=int, default=50, help="events per message")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--svg", type=Path, default=RESULTS / "profile.svg", help="the flame graph")
    args = parser.parse_args(argv)
    seconds = args.seconds or (5 if args.quick else 20)
    # More than a worker learns in that time (about 3,000-5,000/s here), so it never waits for events.
    events = list(SensorSimulator(devices=50, seed=3, missing_rate=0.02).events(6_000 * (seconds + 2)))
    raw = Path(tempfile.mkdtemp(prefix="driftline-profile-")) / "profile.txt"
    with services() as (kafka_url, redis_url):
        settings = bench_settings(
            kafka_url,
            redis_url,
            batch_size=max(1, 1000 // args.batch),
            snapshot_every_events=1000,
            snapshot_every_seconds=0.25,
        )
        ensure_topics(settings)
        publish(settings, events, args.batch)
        client = redis.Redis.from_url(redis_url)
        with worker(settings) as process:
            deadline = time.monotonic() + 120
            while learned(client, settings) == 0:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the worker learned nothing in 120 s")
                time.sleep(0.05)
            before, started = learned(client, settings), time.monotonic()
            print(
                f"recording the worker (pid {process.pid}) for {seconds} s ...", file=sys.stderr, flush=True
            )
            recorders = [record(process.pid, seconds, args.rate, raw, "raw")]
            recorders.append(record(process.pid, seconds, args.rate, args.svg, "flamegraph"))
            time.sleep(max(0.0, started + seconds - time.monotonic()))
            after, elapsed = learned(client, settings), time.monotonic() - started
            for recorder in recorders:
                _, err = recorder.communicate(timeout=60)
                if recorder.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
    events_learned = after - before
    if events_learned <= 0:
        raise RuntimeError("the worker learned no event while it was recorded")
    costs = top_costs(raw.read_text(), events_learned, args.rate)
    result = {
        "events": events_learned,
        "seconds": elapsed,
        "events_per_second": events_learned / elapsed,
        "batch": args.batch,
        "rate": args.rate,
        "svg": args.svg.name,
        **costs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile.json").write_text(json.dumps(result, indent=2))
    print(
        f"{events_learned:,} events in {elapsed:.1f} s ({events_learned / elapsed:,.0f}/s while recorded); "
        f"{costs['samples']:,} samples, {costs['us_per_event']:.1f} µs of worker time per event"
    )
    for kind in ("self", "cumulative"):
        print(f"top 3 by {kind} time:")
        for row in costs["top"][kind]:
            print(f"  {row['us_per_event']:8.1f} µs/event  {100 * row['share']:5.1f}%  {row['function']}")
    print(f"flame graph: {args.svg}")


if __name__ == "__main__":
    main()
