"""Drift alerts for operators, against the real Redis: the server-sent event stream under a real
uvicorn (``driftline api``), acknowledging over HTTP and from the CLI, and ``driftline alerts tail``.

Alerts are recorded the way the worker records them: a learner whose drift outbox holds them is
published to the registry, which writes each alert's record and stream entry in the snapshot's
transaction. No broker or worker is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from driftline.api.main import create_app
from driftline.api.routes import api_key_name
from driftline.core.alerts import Alert
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings

from .conftest import ApiProcess, on_registry, settings_env

pytestmark = pytest.mark.integration

API_KEY = "test-key-1"


def make_alert(model: str, offset: int, signal: str = "error") -> Alert:
    return Alert.create(
        model,
        signal,
        "adwin",
        {},
        "drift",
        "events/0",
        offset,
        0,
        1.79e9 + offset,
        offset,
        before=0.1,
        after=0.4,
    )


def record(settings: Settings, *alerts: Alert) -> float:
    """Record ``alerts`` as the worker does (in a snapshot's transaction); when it was done."""

    async def publish() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            for model in dict.fromkeys(a.model for a in alerts):
                learner = OnlineLearner.create(ModelSpec(name=model))
                learner.drift.outbox.extend(a for a in alerts if a.model == model)
                await settings.registry(redis).publish(learner)
        finally:
            await redis.aclose()

    asyncio.run(publish())
    return time.monotonic()


class SSEReader:
    """A client of an event stream in a thread of its own: each message (its fields, and when it
    arrived) goes to a queue. ``close`` drops the connection as a client going away does."""

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        self.url = url
        self.headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.status: int | None = None
        self.ended = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> SSEReader:
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(5, read=None)) as client:
                with client.stream("GET", self.url, headers=self.headers) as response:
                    self.status = response.status_code
                    self._socket = response.extensions["network_stream"].get_extra_info("socket")
                    fields: dict[str, Any] = {}
                    for line in response.iter_lines():
                        if line:
                            name, _, value = line.partition(":")
                            fields[name] = value.removeprefix(" ")
                        elif fields:
                            self.messages.put({**fields, "received": time.monotonic()})
                            fields = {}
        except (httpx.HTTPError, OSError):
            pass  # closed under it
        finally:
            self.ended.set()

    def next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def alerts(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The next ``count`` alert events (fewer if they do not come within ``timeout``)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and (message := self.next(max(0.0, deadline - time.monotonic()))):
            if message.get("event") == "alert":
                out.append(message)
        return out

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_the_stream_sends_a_new_alert_within_a_second_and_a_reconnect_exactly_what_it_missed(
    make_settings: Any, start_api: Callable[[Settings], ApiProcess]
) -> None:
    settings = make_settings()
    api = start_api(settings)
    stream = f"{api.url}/alerts/stream"
    record(settings, make_alert("m", 1))  # before anyone listens: not sent

    reader = SSEReader(stream).start()
    opening = reader.next(timeout=10)
    assert reader.status == 200 and opening is not None and "data" not in opening, api.log_tail()
    first = make_alert("m", 2)
    recorded_at = record(settings, first)
    [event] = reader.alerts(1, timeout=5)
    reader.close()

    assert event["received"] - recorded_at < 1.0
    assert json.loads(event["data"]) == {**first.to_json(), "version": 2}

    missed = [make_alert("m", 3), make_alert("m", 4, signal="feature:x")]
    record(settings, missed[0])
    record(settings, missed[1])
    again = SSEReader(stream, last_event_id=event["id"]).start()
    resumed = again.alerts(2, timeout=5)
    extra = again.alerts(1, timeout=1.5)
    again.close()

    assert [json.loads(e["data"])["id"] for e in resumed] == [a.id for a in missed]
    assert extra == []
    positions = [tuple(map(int, e["id"].split("-"))) for e in [event, *resumed]]
    assert positions == sorted(positions)  # stream entry ids, increasing


def test_the_stream_ends_when_the_api_is_stopped_and_a_test_client_shuts_down_with_one_open(
    make_settings: Any, start_api: Callable[[Settings], ApiProcess]
) -> None:
    settings = make_settings()
    api = start_api(settings)
    reader = SSEReader(f"{api.url}/alerts/stream").start()
    assert reader.next(timeout=10) is not None, api.log_tail()
    assert api.process is not None

    stopped_at = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    api.process.wait(10)

    assert time.monotonic() - stopped_at < 5, api.log_tail()
    assert reader.ended.wait(5)
    assert "Application shutdown complete" in api.log_tail()

    with contextlib.ExitStack() as responses:
        started = time.monotonic()
        with TestClient(create_app(settings)) as client:
            response = responses.enter_context(client.stream("GET", "/alerts/stream"))
            assert response.status_code == 200
            assert next(response.iter_lines()).startswith(": drift alerts after")
        # the client exits (and the app's lifespan ends) with the stream still open
        assert time.monotonic() - started < 10


def test_an_ack_over_http_and_from_the_cli_records_who_and_when_once(make_settings: Any) -> None:
    settings = make_settings(api_keys=API_KEY)
    alerts = [make_alert("m", 10), make_alert("m", 11)]
    record(settings, *alerts)
    env = settings_env(settings)

    with TestClient(create_app(settings)) as client:
        refused = client.post(f"/alerts/{alerts[0].id}/ack")
        unknown = client.post("/alerts/m:error:events/0:999:0/ack", headers={"X-API-Key": API_KEY})
        acked = client.post(
            f"/alerts/{alerts[0].id}/ack", json={"by": "alice"}, headers={"X-API-Key": API_KEY}
        )
        again = client.post(f"/alerts/{alerts[0].id}/ack", json={"by": "bob"}, headers={"X-API-Key": API_KEY})
        shown = client.get(f"/alerts/{alerts[0].id}").json()

    assert (refused.status_code, unknown.status_code, acked.status_code, again.status_code) == (
        401,
        404,
        200,
        200,
    )
    assert (shown["acked_by"], shown["acked_key"]) == ("alice", api_key_name(API_KEY))
    assert shown["acked_at"] == acked.json()["acked_at"] == again.json()["acked_at"]  # the first ack stays
    assert shown["status"] == "firing" and shown["version"] == 1

    cli = [sys.executable, "-m", "driftline", "alerts", "ack"]
    by_cli = subprocess.run([*cli, alerts[1].id, "--by", "carol"], env=env, capture_output=True, text=True)
    repeated = subprocess.run([*cli, alerts[1].id], env=env, capture_output=True, text=True)
    missing = subprocess.run([*cli, "nope"], env=env, capture_output=True, text=True)

    assert by_cli.returncode == 0, by_cli.stderr
    assert by_cli.stdout.startswith(f"alert {alerts[1].id}: acked by carol at ")
    assert repeated.stdout.startswith(f"alert {alerts[1].id}: was already acked by carol at ")
    assert (missing.returncode, missing.stderr.strip()) == (2, "driftline: error: no alert 'nope'")
    recorded = on_registry(settings, lambda registry: registry.alert(alerts[1].id))
    assert recorded["acked_by"] == "carol" and "acked_key" not in recorded
    audit = on_registry(settings, lambda registry: registry.audit("m"))
    acks = [e for e in audit if e["action"] == "ack"]
    assert [(e["alert"], e["by"]) for e in acks] == [(alerts[1].id, "carol"), (alerts[0].id, "alice")]
    assert acks[1]["key"] == api_key_name(API_KEY) and acks[1]["at"] == shown["acked_at"]


def test_alerts_tail_prints_each_new_alert_of_its_model_until_ctrl_c(make_settings: Any) -> None:
    settings = make_settings()
    record(settings, make_alert("m", 1))  # before the tail: not printed
    tail = subprocess.Popen(
        [sys.executable, "-m", "driftline", "alerts", "tail", "--model", "m"],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        assert "following drift alerts of model m" in tail.stderr.readline()
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout or []], daemon=True)
        reader.start()
        new = make_alert("m", 2)
        record(settings, make_alert("other", 3), new)
        line = lines.get(timeout=5)
        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 0
        reader.join(5)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()

    assert line.split() == [
        "2026-09-21T14:13:22Z",
        "m",
        "error",
        "drift",
        "firing",
        "0.1",
        "->",
        "0.4",
        new.id,
    ]
    assert lines.empty()  # nothing of model other
