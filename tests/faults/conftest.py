"""The fault suite's harness: a TCP proxy a test can cut, a broker behind it, and the in-process
reference run the pipeline's results must equal.

Every fault test runs the real worker against the real broker and Redis (``integration``); the
long variants carry the ``chaos`` marker too, which ``make test`` leaves out and ``make chaos``
runs. The child-process fixtures (``start_worker``, ``wait_for``...) are tests/integration's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from redis.asyncio import Redis

from driftline.api.stats import ingest_totals
from driftline.core.records import FeatureRecord
from driftline.embedded import EmbeddedBroker, free_port
from driftline.kafka import SensorProducer
from driftline.models.learner import OnlineLearner
from driftline.settings import Settings
from driftline.streams.cleaning import Rejection
from driftline.streams.ingest import IngestStage
from driftline.worker import worker_config
from tests.integration_fixtures import integration_conftest

_shared = integration_conftest()
start_worker = _shared.start_worker
start_api = _shared.start_api
wait_for = _shared.wait_for
pytest_runtest_makereport = _shared.pytest_runtest_makereport  # failed tests show worker logs
on_registry = _shared.on_registry
WorkerProcess = _shared.WorkerProcess

#: Event times of the fault streams: in the past (nothing "from the future"), fixed.
START = 1_780_000_000.0

#: Group timeouts short enough that a killed worker's partitions move on within seconds.
QUICK_GROUP = {
    "broker_session_timeout": 4.0,
    "broker_rebalance_timeout": 4.0,
    "broker_heartbeat_interval": 0.5,
}


# --- a cuttable link to the broker ---------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy to ``127.0.0.1:target_port`` that a test cuts and restores.

    :meth:`cut` drops every open connection and then either refuses new ones (``hold=False``:
    the port is closed, as when a broker is down) or accepts and holds them without an answer
    (``hold=True``: a black hole, as when a network path is lost). :meth:`restore` serves again;
    held connections are then forwarded.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.cuts = 0
        #: Connections reset by :meth:`cut`, and connections forwarded (held ones included).
        self.dropped = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._cut = False
        self._hold = False
        self._server: socket.socket | None = None

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed by cut() or stop()
            with self._lock:
                if self._cut:
                    self._held.append(client)
                    continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
            self.forwarded += 1
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(source)
            _close(sink)

    def cut(self, hold: bool = False) -> None:
        """Break the link: open connections reset; new ones refused, or held when ``hold``."""
        with self._lock:
            self._cut, self._hold = True, hold
            self.cuts += 1
            doomed, self._open = self._open, set()
            self.dropped += len(doomed) // 2
        if not hold and self._server is not None:
            # shutdown, not just close: a close leaves the socket listening while the accepting
            # thread is blocked on it
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            _close(self._server)
            self._server = None
        for sock in doomed:
            _close(sock, reset=True)

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            held, self._held = self._held, []
        if self._server is None:
            self._listen()
        for client in held:
            self._forward(client)

    def stop(self) -> None:
        self.cut()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _close(sock)


def _close(sock: socket.socket, reset: bool = False) -> None:
    with contextlib.suppress(OSError):
        if reset:  # RST, not FIN: the peer sees the connection fail, as in a real outage
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


@dataclass
class ProxiedBroker:
    """A broker of its own for one test, reachable only through :attr:`proxy`."""

    broker: EmbeddedBroker
    proxy: TcpProxy

    @property
    def url(self) -> str:
        return self.broker.url


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[ProxiedBroker]:
    """An embedded broker that advertises the proxy's address, so every client (metadata
    included) goes through the proxy, and a cut really cuts the broker off."""
    listen = free_port()
    proxy = TcpProxy(listen).start()
    broker = EmbeddedBroker(port=listen, log_dir=tmp_path / "proxied-broker", advertised_port=proxy.port)
    broker.start()
    try:
        yield ProxiedBroker(broker, proxy)
    finally:
        proxy.stop()
        broker.stop(timeout=1)  # memory only, and ours alone: no need to wait on a clean exit


# --- the in-process reference ------------------------------------------------------------------


@dataclass
class Reference:
    """What the worker's stages do with the same messages in one process, in order."""

    stage: IngestStage
    learners: dict[str, OnlineLearner]
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def reasons(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejections)


def reference_run(settings: Settings, messages: list[bytes]) -> Reference:
    """The messages of one events partition through the worker's own ingest stage and learners,
    as River's loop learns: one record after the other, in offset order (the worker keeps a
    model's input in one partition, so its order is this one).

    Pass ``messages`` that do not depend on arrival time: a message's ``now`` here is the wall
    clock, in the worker the broker's timestamp.
    """
    stage = worker_config(settings).ingest_stage()
    learners = {spec.name: OnlineLearner.create(spec) for spec in settings.model_specs()}
    rejections = []
    for offset, raw in enumerate(messages):
        by_model: dict[str, list[FeatureRecord]] = {}
        for outcome in stage.handle(raw, 0, offset):
            if isinstance(outcome, FeatureRecord):
                by_model.setdefault(outcome.model, []).append(outcome)
            elif isinstance(outcome, Rejection):
                rejections.append(outcome)
        for model, records in by_model.items():
            learners[model].learn_message(0, offset, list(records), lambda *failed: None)
    return Reference(stage, learners, rejections)


def assert_same_learning(found: dict[str, dict[str, Any]], reference: Reference) -> None:
    """Each model's snapshot says what the reference learners say: counts exactly, metrics
    to the last bits (the same operations in the same order)."""
    for name, learner in reference.learners.items():
        meta = found[name]
        expected = learner.summary()
        for key in ("events_seen", "events_learned", "records_failed", "labels"):
            assert meta.get(key) == expected.get(key), (name, key, meta.get(key), expected.get(key))
        assert meta["metric"]["value"] == pytest.approx(expected["metric"]["value"], rel=1e-12, abs=1e-12), (
            name
        )
        cumulative = expected["metrics"]["cumulative"]
        assert meta["metrics"]["cumulative"] == pytest.approx(cumulative, rel=1e-12, abs=1e-12), name


# --- reading what the pipeline did -------------------------------------------------------------


def newest_metas(settings: Settings) -> dict[str, dict[str, Any]]:
    """The newest snapshot metadata of every model in the registry."""

    async def read(registry: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for name in await registry.model_names():
            versions = await registry.versions(name)
            if versions:
                out[name] = versions[-1]
        return out

    result: dict[str, dict[str, Any]] = on_registry(settings, read)
    return result


def wait_until_seen(
    settings: Settings, n: int, timeout: float = 120.0, settle: float = 1.5
) -> dict[str, dict[str, Any]]:
    """Snapshots of every model with ``n`` events seen; then a little longer, and read again
    (any double learning would show in a later snapshot)."""
    models = [spec.name for spec in settings.model_specs()]

    def done() -> bool:
        found = newest_metas(settings)
        return all(found.get(m, {}).get("events_seen", 0) >= n for m in models)

    _shared._wait_for(done, timeout, f"snapshots of {models} with {n} events seen")
    time.sleep(settle)
    return newest_metas(settings)


def ingest_counters(settings: Settings) -> dict[str, Any]:
    """The ingest stage's checkpointed counters (what ``GET /stats`` shows)."""

    async def read() -> dict[str, Any]:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await ingest_totals(redis, settings)
        finally:
            await redis.aclose()

    return asyncio.run(read())


def read_dlq(settings: Settings, expected: int, timeout: float = 30.0) -> list[Any]:
    """The dead-letter topic's records: at least ``expected`` of them, and whatever follows soon."""
    consumer = KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1500,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer)
        records.extend(consumer)  # more than expected would be a bug too
    finally:
        consumer.close()
    return records


def batched(events: list[dict[str, Any]], size: int) -> list[bytes]:
    """Events as messages of ``size`` (JSON arrays), as a gateway sends them."""
    return [json.dumps(events[i : i + size]).encode() for i in range(0, len(events), size)]


class Trickle(threading.Thread):
    """Sends ``messages`` at ``per_second``, so the stream flows across the kills.

    With ``hold_last``, the last that many messages wait for :meth:`release`: whatever the
    machine's speed, the stream is still flowing when the test's faults are done.
    """

    def __init__(
        self,
        settings: Any,
        messages: list[bytes],
        per_second: float,
        key: bytes = b"sensor-001",
        hold_last: int = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.settings, self.messages, self.pause, self.key = settings, messages, 1.0 / per_second, key
        self.held_from = len(messages) - hold_last if hold_last else None
        self.released = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def release(self) -> None:
        self.released.set()

    def run(self) -> None:
        try:
            with SensorProducer(self.settings) as producer:
                for index, message in enumerate(self.messages):
                    if index == self.held_from:
                        producer.flush()
                        self.released.wait()
                    producer.send_raw(self.key, message)
                    self.sent += 1
                    time.sleep(self.pause)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
