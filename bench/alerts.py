"""A hanging webhook must not slow learning: ``python -m bench.alerts``.

The learn rate of one worker on a backlog of River's SEA stream with concept changes (so drift
alerts are raised, and their deliveries tried, while it learns), with no webhook and with a
webhook that never answers (1 s timeout, retried with backoff), side by side on the same broker,
interleaved and each first in turn. Timed in the wall clock from the first learned event to the
last (``bench.common.time_until``), median of the runs. Target: the rate with the hanging webhook
within 10% of the rate without.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from river.datasets import synth

from bench.common import bench_settings, report, services, time_until, worker
from driftline.kafka import SensorProducer, ensure_topics

SEA = {
    "name": "sea",
    "task": "classification",
    "estimator": "logistic_regression",
    "drift": {"features": None, "cooldown": 500},
}


class Hanging(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        time.sleep(60)

    def log_message(self, *args: Any) -> None:
        pass


def events(n: int) -> list[dict[str, Any]]:
    rows = itertools.chain(
        *(itertools.islice(synth.SEA(variant=v, seed=s), n // 8) for s, v in enumerate((0, 3) * 4))
    )
    start = datetime.now(UTC) - timedelta(seconds=n)
    return [
        {
            "event_id": f"sea-{i}",
            "device_id": f"sea-{i % 4}",
            "ts": (start + timedelta(seconds=i)).isoformat(),
            "readings": {f"x{k}": float(v) for k, v in x.items()},
            "target": bool(y),
        }
        for i, (x, y) in enumerate(rows)
    ]


def learned(client: redis.Redis, key: str) -> int:
    entries = client.xrevrange(key, count=1)
    return int(entries[0][1][b"events_learned"]) if entries else 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    hanging = ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    hanging.daemon_threads = True
    threading.Thread(target=hanging.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hanging.server_address[1]}/hook"
    backlog = events(args.events)
    rows: dict[str, list[float]] = {"no webhook": [], "a webhook that hangs (1 s timeout, retried)": []}
    with services() as (kafka_url, redis_url):
        client = redis.Redis.from_url(redis_url)
        for run in range(args.runs):
            kinds = list(rows)
            for kind in kinds if run % 2 == 0 else kinds[::-1]:
                hooks = url if "hangs" in kind else ""
                settings = bench_settings(
                    kafka_url,
                    redis_url,
                    models=[SEA],
                    features="raw",
                    sensor_catalog="none",
                    alert_webhooks=hooks,
                    alert_webhook_timeout=1.0,
                    batch_size=50,
                    alerts_topic=f"bench-alerts-{time.time_ns()}",
                )
                ensure_topics(settings)
                with SensorProducer(settings) as producer:
                    for event in backlog:
                        producer.send(event)
                with worker(settings):
                    rate = time_until(len(backlog), lambda s=settings: learned(client, s.keys.audit()))
                print(f"run {run + 1}/{args.runs}, {kind}: {rate:,.0f} events/s", flush=True)
                rows[kind].append(rate)
    report("alerts", rows, baseline="no webhook")
    hanging.shutdown()


if __name__ == "__main__":
    main()
