"""The bare Faust agent a user would write instead of driftline: consume the events topic in
batches (``stream.take``) and only decode each message's JSON. Issue 17's target 3 measures
driftline's one-event-per-message rate against it, on the same broker in the same run.

Not a benchmark of its own: :func:`bare_faust_rate` runs it as a worker process
(``python -m bench.faust_baseline``, configured by ``BARE_*`` environment variables) and times it
as the driftline workers are timed, from its first progress to the last event. It counts what it
decoded in Redis (``INCRBY``, once per batch) so the bench can follow it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import Progress, measure_until, stop

#: The batch a user would take: as many as driftline's agents take with one event per message.
TAKE = 1000
WITHIN = 0.2


def build_app(env: dict[str, str]) -> Any:
    """The bare app: one agent, raw bytes in, ``json.loads`` per message, a count per batch."""
    import faust
    from redis.asyncio import Redis

    app = faust.App(
        env["BARE_GROUP"],
        broker=env["BARE_BROKER"],
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        # What the embedded broker needs of any Faust app (docs/design.md, facts about Tansu):
        # no auto-created leader topic, and short group timeouts so the first join is quick.
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=3,  # as bench_settings gives driftline's workers
        broker_rebalance_timeout=3,
        broker_heartbeat_interval=0.5,
        datadir=env["BARE_DATADIR"],
    )
    topic = app.topic(
        env["BARE_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(topic)
    async def decode(stream: Any) -> None:
        counter = Redis.from_url(env["BARE_REDIS"])
        async for values in stream.take(TAKE, within=WITHIN):
            for value in values:
                json.loads(value)
            await counter.incrby(env["BARE_KEY"], len(values))

    return app


def bare_faust_rate(kafka_bootstrap: str, redis_url: str, topic: str, count: int) -> Progress:
    """Events per second of the bare agent reading ``count`` messages already on ``topic``, and
    the CPU time its process spent per event."""
    import faust  # noqa: F401  # fail here, not in the child, when Faust is missing

    run = uuid.uuid4().hex[:8]
    key = f"bench-bare-faust-{run}"
    env = {
        **os.environ,
        "BARE_GROUP": f"bench-bare-{run}",
        "BARE_BROKER": ";".join(f"kafka://{hp}" for hp in kafka_bootstrap.split(",")),
        "BARE_TOPIC": topic,
        "BARE_REDIS": redis_url,
        "BARE_KEY": key,
        "BARE_DATADIR": tempfile.mkdtemp(prefix="bench-bare-faust-"),
    }
    client = redis.Redis.from_url(redis_url)
    log = open(Path(tempfile.gettempdir()) / f"bench-bare-{run}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.faust_baseline"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        return measure_until(count, lambda: int(client.get(key) or 0), pid=process.pid)
    finally:
        stop(process)
        log.close()
        client.delete(key)


def main(argv: list[str] | None = None) -> None:
    """Run the bare agent until SIGTERM (the bench starts it; see :func:`bare_faust_rate`)."""
    import faust

    app = build_app(dict(os.environ))
    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
