"""Fixtures that run driftline's own processes against the session's real broker and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis

from driftline.models.registry import ModelRegistry
from driftline.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read exactly ``settings``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}, **settings.as_env()}


class DriftlineProcess:
    """A ``driftline`` command as a child process, logging to a file shown when a test fails."""

    command: tuple[str, ...] = ()

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "driftline", *self.command],
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self.process

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class WorkerProcess(DriftlineProcess):
    """``driftline worker``."""

    command = ("worker",)

    def start(self) -> WorkerProcess:
        self.spawn()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def start_worker(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[Settings], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"worker-{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for worker in workers:
            print(f"--- {worker.log_path} ---\n{worker.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def _wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.25) -> object:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def wait_for() -> Callable[..., object]:
    """``wait_for(condition, timeout, what)``: poll until truthy, fail with a message on timeout."""
    return _wait_for


class Receiver:
    """A local HTTP server that records the bodies it accepts."""

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first, self.hang = fail_first, hang
        self.requests = 0
        self.bodies: list[Any] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.requests <= receiver.fail_first
                if receiver.hang:
                    time.sleep(30)  # never answers within the webhook timeout
                    return
                if failing:
                    self.send_response(500)
                else:
                    with receiver.lock:
                        receiver.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def received(self) -> list[tuple[str, str]]:
        with self.lock:
            return [
                (b["id"], b["status"])
                if isinstance(b, dict)
                else (b[0]["labels"]["alert_id"], "resolved" if "endsAt" in b[0] else "firing")
                for b in self.bodies
            ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiProcess(DriftlineProcess):
    """``driftline api`` (uvicorn, as deployed) on a free port."""

    command = ("api",)

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(settings.model_copy(update={"api_port": free_port()}), log_path)
        self.url = f"http://127.0.0.1:{self.settings.api_port}"

    def start(self) -> ApiProcess:
        process = self.spawn()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, self.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"the API did not answer within 30 s:\n{self.log_tail()}")


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[[Settings], ApiProcess]]:
    apis: list[ApiProcess] = []

    def start(settings: Settings) -> ApiProcess:
        api = ApiProcess(settings, tmp_path / f"api-{len(apis)}.log")
        apis.append(api)
        return api.start()

    yield start
    for api in apis:
        api.stop()


T = TypeVar("T")


def on_registry(settings: Settings, action: Callable[[ModelRegistry], Awaitable[T]]) -> T:
    """Run ``action`` on the registry of ``settings`` (its own Redis connection, closed after)."""

    async def go() -> T:
        redis = AsyncRedis.from_url(settings.redis_url)
        try:
            return await action(settings.registry(redis))
        finally:
            await redis.aclose()

    return asyncio.run(go())
