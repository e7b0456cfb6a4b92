"""The serving API under load, next to a trivial endpoint and the model in-process: ``python -m bench.api``.

    python -m bench.api [--quick] [--seconds 1] [--repeats 3] [--workers N] [--compare-workers 1,2]

A real deployment: ``driftline api`` in its own process (``DRIFTLINE_API_WORKERS`` server
processes), against Redis, with a model published in the registry and 64 devices' feature states
checkpointed as the worker leaves them, so every ``/predict`` reads its device's history and
featurizes the reading as in production. Side by side in one run, interleaved, per concurrency
(1, 16, 64 keep-alive connections):

- ``GET /livez``: the trivial endpoint of the same app (a constant, no I/O);
- ``POST /predict``, one raw reading per request;
- ``POST /predict``, a batch of 100 raw readings per request;
- the client's own ceiling: the same client against a bare asyncio server answering a constant;
- in-process, no HTTP: the served learner's ``predict`` on the features the API computes for
  the same readings, and the route's own featurize + predict (device state copied, cleaned,
  featurized, predicted).

The load generator is a hand-rolled HTTP/1.1 keep-alive client on asyncio in this process (a
fraction of the server's CPU per request; its ceiling is measured and printed). Each cell runs for
``--seconds`` after a warm-up; requests/s counts the answers completed in that window; latency
is each request's, send to last byte. Medians over ``--repeats`` runs. Results:
bench/results/api.json, api.md and api.png.

Targets (issue 16): single ``/predict`` keeps >= 0.8 of ``/livez``'s rate at each concurrency;
its p99 < 10 ms at concurrency 16; a batch of 100 costs less than 10 single requests (median
latency at concurrency 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.common import (
    RESULTS,
    Target,
    bench_settings,
    cpu_seconds,
    ingest_stage,
    report,
    services,
    settings_env,
    stop,
)
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.settings import Settings
from driftline.simulator import SensorSimulator
from driftline.streams.checkpoint import save_checkpoint
from driftline.streams.features import DeviceState
from driftline.streams.ingest import featurize_reading, label_readings

CONCURRENCY = (1, 16, 64)
DEVICES = 64
BATCH = 100
TRIVIAL, SINGLE, BATCHED, CEILING = (
    "GET /livez",
    "POST /predict (1 reading)",
    "POST /predict (100 readings)",
    "client ceiling",
)
IN_PROCESS_PREDICT = "in-process: learner.predict"
IN_PROCESS_FEATURIZE = "in-process: featurize + predict"


# --- pure helpers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated between the closest ranks
    (numpy's default, "linear").

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([5.0], 99)
    5.0
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Cell:
    """One endpoint at one concurrency, one run: answers per second, latency, CPU per answer."""

    rate: float
    p50_ms: float
    p99_ms: float
    answers: int
    errors: int
    client_cpu_us: float
    server_cpu_us: float | None


def summarize(
    latencies: Sequence[float], errors: int, window: float, client_cpu: float, server_cpu: float | None
) -> Cell:
    """A :class:`Cell` from the latencies (seconds) of the answers completed in ``window`` seconds
    and the CPU seconds the client and the server spent meanwhile.

    >>> c = summarize([0.001, 0.002, 0.003, 0.004], 0, 2.0, 0.0004, None)
    >>> (c.rate, c.p50_ms, round(c.p99_ms, 2), c.client_cpu_us)
    (2.0, 2.5, 3.97, 100.0)
    """
    answers = len(latencies)
    if not answers:
        raise RuntimeError("no answer in the window")
    return Cell(
        rate=answers / window,
        p50_ms=1e3 * percentile(latencies, 50),
        p99_ms=1e3 * percentile(latencies, 99),
        answers=answers,
        errors=errors,
        client_cpu_us=1e6 * client_cpu / answers,
        server_cpu_us=None if server_cpu is None else 1e6 * server_cpu / answers,
    )


def http_request(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    """One HTTP/1.1 keep-alive request, as bytes to send as they are.

    >>> http_request("GET", "/livez", "h:1")
    b'GET /livez HTTP/1.1\\r\\nHost: h:1\\r\\nContent-Length: 0\\r\\n\\r\\n'
    """
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def content_length(head: bytes) -> int:
    """The Content-Length of a response head (the client never asks for chunked answers).

    >>> content_length(b"HTTP/1.1 200 OK\\r\\ncontent-length: 12\\r\\n\\r\\n")
    12
    """
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError(f"no Content-Length in {head[:200]!r}")


# --- the load generator ----------------------------------------------------------------------


#: A cell's window stays open until it has this many answers (or one per connection, if fewer)...
MIN_ANSWERS = 16
#: ...up to this many times its planned length.
MAX_WINDOW_FACTOR = 8


@dataclass
class Window:
    """When answers count: set once every connection has had an answer and the warm-up is over
    (a batch at concurrency 64 takes seconds to get its first answers; a fixed warm-up would
    start counting before the server is in its steady state)."""

    measure_from: float = math.inf
    stop_at: float = math.inf
    answered_once: int = 0


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    first: int,
    window: Window,
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    turn = first
    try:
        while (sent := time.perf_counter()) < window.stop_at:
            writer.write(requests[turn % len(requests)])
            turn += 1
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(content_length(head))
            done = time.perf_counter()
            if turn == first + 1:
                window.answered_once += 1
            # Counted by when it ended: a slow request (a batch) begun before the window still
            # counts, so the rate holds however long one request takes.
            if window.measure_from <= done <= window.stop_at:
                latencies.append(done - sent)
                if head[9:12] != b"200":
                    errors.append(int(head[9:12]))
    finally:
        writer.close()


def server_cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    seconds: float,
    warmup: float,
    server_pids: Sequence[int] = (),
) -> Cell:
    """``concurrency`` keep-alive connections sending ``requests`` in turn, back to back: after
    ``warmup`` seconds and once each connection has had an answer, the answers completed in the
    next ``seconds`` counted (longer if it takes that to have :data:`MIN_ANSWERS`; a request still
    under way when the window closes is finished and left out)."""
    latencies: list[float] = []
    errors: list[int] = []
    window = Window()

    async def run() -> tuple[float, float | None]:
        tasks = [
            asyncio.create_task(_connection(host, port, requests, i * 7, window, latencies, errors))
            for i in range(concurrency)
        ]
        await asyncio.sleep(warmup)
        while window.answered_once < concurrency:
            await asyncio.sleep(0.01)
        client0, server0 = time.process_time(), server_cpu(server_pids) if server_pids else None
        window.measure_from = time.perf_counter()
        await asyncio.sleep(seconds)
        # A slow cell (batches of 100 at concurrency 64: seconds per answer) runs on until it
        # has a few answers to count, within a bound.
        while len(latencies) < min(concurrency, MIN_ANSWERS) and (
            time.perf_counter() - window.measure_from < MAX_WINDOW_FACTOR * seconds
        ):
            await asyncio.sleep(0.02)
        window.stop_at = time.perf_counter()
        client = time.process_time() - client0
        server = server_cpu(server_pids) - server0 if server0 is not None else None
        await asyncio.gather(*tasks)
        return client, server

    client, server = asyncio.run(run())
    if errors:
        raise RuntimeError(f"{len(errors)} answers were not 200 (e.g. {sorted(set(errors))[:5]})")
    return summarize(latencies, len(errors), window.stop_at - window.measure_from, client, server)


CONSTANT_SERVER = """
import asyncio, sys
BODY = b'{"status":"alive"}'
HEAD = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n"
ANSWER = HEAD % len(BODY) + BODY
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


# --- the deployment --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's worker processes)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found += children(int(entry.name))
    return found


def wait_until_answers(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def api_server(settings: Settings, workers: int) -> Iterator[tuple[int, list[int]]]:
    """``driftline api`` as deployed, on a free port, until its model is loaded: (port, pids)."""
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"{settings.worker_id}-api-{port}.log"
    env = {**settings_env(settings), "DRIFTLINE_API_PORT": str(port), "DRIFTLINE_API_WORKERS": str(workers)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "driftline", "api"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/ready", process, log)
        pids = children(process.pid)
        if len(pids) < workers:
            raise RuntimeError(f"{workers} workers asked for, {len(pids)} processes found")
        yield port, pids
    finally:
        stop(process)


@contextmanager
def constant_server() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", CONSTANT_SERVER, str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@dataclass(frozen=True)
class Workload:
    """What the requests carry: readings of devices whose states Redis holds, and the learner."""

    learner: OnlineLearner
    states: dict[str, DeviceState]
    readings: list[dict[str, Any]]  # {"device_id", "readings"}: a request's body


def make_workload(settings: Settings, events: int = 20_000) -> Workload:
    """Simulated readings through the stream's ingest stage: the devices' states as the worker
    checkpoints them, and the default model trained on the same feature records."""
    spec = settings.model_specs()[0]
    stage = ingest_stage(settings, [spec])
    start = datetime.now(UTC) - timedelta(seconds=events + 60)
    simulator = SensorSimulator(devices=DEVICES, seed=11, start=start)
    learner = OnlineLearner.create(spec)
    offset = 0
    for event in simulator.events(events):
        stamp = int(datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp() * 1000)
        for record in stage.handle(json.dumps(event).encode(), 0, offset, stamp):
            if isinstance(record, FeatureRecord):
                learner.learn(record, 0, offset)
        offset += 1
    labels = label_readings(settings.model_specs(), settings.target)
    readings = [
        {
            "device_id": event["device_id"],
            "readings": {k: v for k, v in event["readings"].items() if k not in labels and v is not None},
        }
        for event in simulator.events(DEVICES * 4)
    ]
    return Workload(learner, dict(stage.devices), readings)


def publish(settings: Settings, workload: Workload) -> int:
    async def go() -> int:
        redis = Redis.from_url(settings.redis_url)
        try:
            await save_checkpoint(redis, settings.keys, "bench", "bench", {}, workload.states)
            return int((await settings.registry(redis).publish(workload.learner))["version"])
        finally:
            await redis.aclose()

    return asyncio.run(go())


def in_process(settings: Settings, workload: Workload, seconds: float) -> dict[str, float]:
    """Readings per second: the learner's predict on the route's features, and the route's
    featurize + predict, for the very readings the requests carry (no HTTP, no Redis): each on a
    copy of its device's state as the route reads it (without the remembered event ids)."""
    labels = label_readings(settings.model_specs(), settings.target)
    catalog, spec = settings.catalog(), settings.features
    as_read = {
        device: DeviceState.from_json({**state.to_json(), "recent_ids": []})
        for device, state in workload.states.items()
    }

    def featurized(item: dict[str, Any]) -> dict[str, float]:
        state = DeviceState.from_json(as_read[item["device_id"]].to_json())
        done = featurize_reading(
            item["readings"], datetime.now(UTC), state, labels=labels, catalog=catalog, spec=spec
        )
        assert not isinstance(done, Exception) and isinstance(done, tuple), done
        return done[1]

    vectors = [featurized(item) for item in workload.readings]

    def rate(step: Any, items: Sequence[Any]) -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for item in items:
                step(item)
            count += len(items)
        return count / (time.perf_counter() - start)

    return {
        IN_PROCESS_PREDICT: rate(workload.learner.predict, vectors),
        IN_PROCESS_FEATURIZE: rate(
            lambda item: workload.learner.predict(featurized(item)), workload.readings
        ),
    }


# --- the run ---------------------------------------------------------------------------------


def requests_for(host: str, workload: Workload) -> dict[str, list[bytes]]:
    singles = [http_request("POST", "/predict", host, json.dumps(r).encode()) for r in workload.readings]
    batches = [
        http_request("POST", "/predict", host, json.dumps(workload.readings[i : i + BATCH]).encode())
        for i in range(0, len(workload.readings) - BATCH + 1, BATCH // 2)
    ]
    return {TRIVIAL: [http_request("GET", "/livez", host)], SINGLE: singles, BATCHED: batches}


def check_answers(port: int, workload: Workload) -> None:
    """The requests the bench sends are answered as meant: a prediction from device history."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        one = client.post("/predict", json=workload.readings[0])
        one.raise_for_status()
        answer = one.json()
        if answer["degraded"] or answer["prediction"] is None:
            raise RuntimeError(f"/predict did not answer from the device's history: {answer}")
        batch = client.post("/predict", json=workload.readings[:BATCH]).json()
        if batch["answered"] != BATCH:
            raise RuntimeError(f"a batch was not answered in full: {batch['refused']} refused")


def label(endpoint: str, concurrency: int) -> str:
    return f"{endpoint} @ c={concurrency}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=0.4, help="seconds per cell before measuring")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, help="server processes (default: DRIFTLINE_API_WORKERS's default)"
    )
    parser.add_argument(
        "--compare-workers",
        default="",
        help="also run single /predict and /livez with these worker counts (comma-separated)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (make bench-quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeats = 0.5, 0.25, 1
    workers = args.workers or Settings.model_fields["api_workers"].default
    compare = [int(w) for w in args.compare_workers.split(",") if w.strip() and int(w) != workers]

    rows: dict[str, list[float]] = {}
    cells: dict[str, list[Cell]] = {}
    load_before = os.getloadavg()[0]  # the machine's other work: the figures move with it
    with services() as (kafka_url, redis_url):
        settings = bench_settings(kafka_url, redis_url)
        workload = make_workload(settings, events=5_000 if args.quick else 20_000)
        version = publish(settings, workload)
        print(f"model {settings.default_model} v{version} published; {len(workload.states)} device states")
        with constant_server() as port:
            for concurrency in CONCURRENCY:
                for _ in range(args.repeats):
                    cell = load(
                        "127.0.0.1",
                        port,
                        [http_request("GET", "/livez", "x")],
                        concurrency,
                        args.seconds,
                        args.warmup,
                    )
                    cells.setdefault(label(CEILING, concurrency), []).append(cell)
        with api_server(settings, workers) as (port, pids):
            check_answers(port, workload)
            requests = requests_for(f"127.0.0.1:{port}", workload)
            for repeat in range(args.repeats):
                for concurrency in CONCURRENCY:
                    # Each endpoint first in turn: none always runs on a machine the last one warmed.
                    order = list(requests)[repeat % 3 :] + list(requests)[: repeat % 3]
                    for endpoint in order:
                        if args.quick and endpoint == BATCHED and concurrency == CONCURRENCY[-1]:
                            # 64 batches in flight take seconds to drain after each cell; no
                            # target reads this cell, so the quick run leaves it out.
                            continue
                        cell = load(
                            "127.0.0.1",
                            port,
                            requests[endpoint],
                            concurrency,
                            args.seconds,
                            args.warmup,
                            pids,
                        )
                        cells.setdefault(label(endpoint, concurrency), []).append(cell)
                        name = label(endpoint, concurrency)
                        print(f"  {name:<44} {cell.rate:>8,.0f}/s  p99 {cell.p99_ms:6.2f} ms")
        for other in compare:
            with api_server(settings, other) as (port, pids):
                requests = requests_for(f"127.0.0.1:{port}", workload)
                for _ in range(args.repeats):
                    for concurrency in CONCURRENCY[1:]:
                        for endpoint in (TRIVIAL, SINGLE):
                            cell = load(
                                "127.0.0.1",
                                port,
                                requests[endpoint],
                                concurrency,
                                args.seconds,
                                args.warmup,
                                pids,
                            )
                            cells.setdefault(f"{label(endpoint, concurrency)}, {other} workers", []).append(
                                cell
                            )
        for _ in range(args.repeats):
            for name, value in in_process(settings, workload, args.seconds).items():
                rows.setdefault(name, []).append(value)

    for name, runs in cells.items():
        rows[name] = [c.rate for c in runs]
    medians = {
        name: {
            k: statistics.median(getattr(c, k) for c in runs)
            for k in ("rate", "p50_ms", "p99_ms", "client_cpu_us")
        }
        for name, runs in cells.items()
    }
    for name, runs in cells.items():
        server = [c.server_cpu_us for c in runs if c.server_cpu_us is not None]
        medians[name]["server_cpu_us"] = statistics.median(server) if server else float("nan")
    targets = targets_of(medians)
    report(
        "api",
        rows,
        baseline=label(TRIVIAL, 16),
        unit="requests/s (in-process: readings/s)",
        targets=targets,
        extra={
            "workers": workers,
            "load_average": [load_before, os.getloadavg()[0]],
            "cpus": os.cpu_count(),
            "seconds_per_cell": args.seconds,
            "repeats": args.repeats,
            "cells": {name: [asdict(c) for c in runs] for name, runs in cells.items()},
            "medians": medians,
        },
    )
    table(medians, rows, workers)
    write_markdown(medians, rows, targets, workers, args, (load_before, os.getloadavg()[0]))
    plot(medians, rows)


def targets_of(medians: dict[str, dict[str, float]]) -> list[Target]:
    targets = [
        Target(
            f"single /predict rate / /livez rate at c={c}",
            medians[label(SINGLE, c)]["rate"] / medians[label(TRIVIAL, c)]["rate"],
            0.8,
        )
        for c in CONCURRENCY
    ]
    targets.append(
        Target("single /predict p99 at c=16", medians[label(SINGLE, 16)]["p99_ms"], 10, False, " ms")
    )
    targets.append(
        Target(
            "batch of 100 / single request, median latency at c=1",
            medians[label(BATCHED, 1)]["p50_ms"] / medians[label(SINGLE, 1)]["p50_ms"],
            10,
            False,
        )
    )
    return targets


def table(medians: dict[str, dict[str, float]], rows: dict[str, list[float]], workers: int) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"driftline API, {workers} worker process(es): medians")
    for column in (
        "endpoint",
        "conc.",
        "requests/s",
        "readings/s",
        "p50 ms",
        "p99 ms",
        "server CPU us/req",
        "client CPU us/req",
    ):
        out.add_column(column, justify="left" if column == "endpoint" else "right")
    for name, m in medians.items():
        endpoint, _, rest = name.partition(" @ c=")
        per = BATCH if endpoint == BATCHED else 1
        out.add_row(
            endpoint + (rest.partition(",")[2] and f" ({rest.partition(', ')[2]})"),
            rest.partition(",")[0],
            f"{m['rate']:,.0f}",
            f"{m['rate'] * per:,.0f}",
            f"{m['p50_ms']:.2f}",
            f"{m['p99_ms']:.2f}",
            "" if math.isnan(m["server_cpu_us"]) else f"{m['server_cpu_us']:,.0f}",
            f"{m['client_cpu_us']:,.0f}",
        )
    for name in (IN_PROCESS_PREDICT, IN_PROCESS_FEATURIZE):
        rate = statistics.median(rows[name])
        out.add_row(name, "-", "", f"{rate:,.0f}", f"{1e3 / rate:.3f}", "", "", "")
    Console(width=150).print(out)


def write_markdown(
    medians: dict[str, dict[str, float]],
    rows: dict[str, list[float]],
    targets: Sequence[Target],
    workers: int,
    args: argparse.Namespace,
    load_average: tuple[float, float],
) -> None:
    lines = [
        "# Serving API benchmark (`python -m bench.api`)",
        "",
        f"`driftline api` with {workers} worker process(es), real Redis, {DEVICES} devices' states; "
        f"{args.seconds} s per cell after {args.warmup} s warm-up, median of {args.repeats}, "
        f"written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores; 1-minute load "
        f"average {load_average[0]:.1f} at the start, {load_average[1]:.1f} at the end.",
        "",
        "| endpoint | concurrency | requests/s | readings/s | p50 ms | p99 ms "
        "| server CPU µs/request | client CPU µs/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in medians.items():
        endpoint, _, rest = name.partition(" @ c=")
        per = BATCH if endpoint == BATCHED else 1
        server = "" if math.isnan(m["server_cpu_us"]) else f"{m['server_cpu_us']:,.0f}"
        lines.append(
            f"| {endpoint}{' (' + rest.partition(', ')[2] + ')' if ', ' in rest else ''} "
            f"| {rest.partition(',')[0]} | {m['rate']:,.0f} | {m['rate'] * per:,.0f} | {m['p50_ms']:.2f} "
            f"| {m['p99_ms']:.2f} | {server} | {m['client_cpu_us']:,.0f} |"
        )
    for name in (IN_PROCESS_PREDICT, IN_PROCESS_FEATURIZE):
        rate = statistics.median(rows[name])
        lines.append(f"| {name} | - | | {rate:,.0f} | {1e3 / rate:.3f} (per reading) | | | |")
    cpu = {name: m["server_cpu_us"] for name, m in medians.items()}
    cpu_ratios = ", ".join(
        f"c={c}: {cpu[label(TRIVIAL, c)] / cpu[label(SINGLE, c)]:.2f}" for c in CONCURRENCY
    )
    lines += [
        "",
        f"Server CPU per `/livez` over server CPU per single `/predict` (steadier than rates on a "
        f"shared machine): {cpu_ratios}.",
    ]
    lines += ["", "Targets:", ""]
    for t in targets:
        comparison = ">=" if t.higher_is_better else "<"
        verdict = "met" if t.met else "**not met**"
        lines.append(f"- {t.name}: {t.value:.3g}{t.unit} ({comparison} {t.goal:g}{t.unit}): {verdict}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api.md").write_text("\n".join(lines) + "\n")


def plot(medians: dict[str, dict[str, float]], rows: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, p99_ax) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"wspace": 0.95})
    colors = {CEILING: "tab:gray", TRIVIAL: "tab:blue", SINGLE: "tab:orange", BATCHED: "tab:green"}
    for endpoint, style in ((CEILING, ":"), (TRIVIAL, "-"), (SINGLE, "-"), (BATCHED, "-")):
        xs = [c for c in CONCURRENCY if label(endpoint, c) in medians]
        color = colors[endpoint]
        rate_ax.plot(
            xs,
            [medians[label(endpoint, c)]["rate"] for c in xs],
            style,
            color=color,
            marker="o",
            label=f"{endpoint}, requests/s",
        )
        if endpoint != CEILING:
            p99s = [medians[label(endpoint, c)]["p99_ms"] for c in xs]
            p99_ax.plot(xs, p99s, style, color=color, marker="o", label=endpoint)
    batched_at = [c for c in CONCURRENCY if label(BATCHED, c) in medians]
    rate_ax.plot(
        batched_at,
        [BATCH * medians[label(BATCHED, c)]["rate"] for c in batched_at],
        "--",
        color=colors[BATCHED],
        marker="s",
        label=f"{BATCHED}, readings/s",
    )
    for name, style in ((IN_PROCESS_PREDICT, "-."), (IN_PROCESS_FEATURIZE, "--")):
        rate_ax.axhline(
            statistics.median(rows[name]), linestyle=style, color="grey", label=f"{name}, readings/s"
        )
    rate_ax.set(
        xscale="log", yscale="log", xlabel="concurrent connections", ylabel="per second", title="rate"
    )
    rate_ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    p99_ax.axhline(10, color="red", linewidth=0.8, label="target: 10 ms (single, c=16)")
    p99_ax.set(xscale="log", yscale="log", xlabel="concurrent connections", ylabel="ms", title="p99 latency")
    p99_ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    rate_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    p99_ax.legend(fontsize=7)
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "api.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
