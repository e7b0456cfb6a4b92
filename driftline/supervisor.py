"""``driftline up``: the whole system in one foreground process tree.

Starts (or reuses) the broker and Redis, creates the topics, then runs the worker, the API and the
simulator as children. SIGINT/SIGTERM stops the children in reverse order (simulator first, broker
last) and waits for each; children also die with this process if it is killed outright
(see :func:`driftline.embedded.die_with_parent`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from driftline.core.urls import safe_url
from driftline.embedded import (
    EmbeddedBroker,
    EmbeddedProcess,
    EmbeddedRedis,
    die_with_parent,
    free_port,
    kafka_answers,
    port_open,
    redis_answers,
)
from driftline.kafka import ensure_topics
from driftline.running import remove_stack_file, write_stack_file
from driftline.settings import Settings

#: Events after which ``driftline up``'s simulated world changes (DRIFTLINE_SIM_DRIFT_AFTER).
DEMO_DRIFT_AFTER = 3000


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Stack:
    """Everything ``up`` started, in start order."""

    services: list[EmbeddedProcess] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)

    def stop(self, timeout: float = 15.0) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        for service in reversed(self.services):
            service.stop()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _say(message: str) -> None:
    print(f"driftline | {message}", flush=True)


def dev_mode_unless_set() -> None:
    """``driftline up`` is the development stack: ``DRIFTLINE_ENV=dev`` unless set otherwise.

    Set in this process's environment before its settings are read, so ``up`` and every child
    it starts (they inherit the environment) run in dev mode, where the published development
    secrets stand in for unset ones (each process warns; the API still binds loopback only).
    """
    os.environ.setdefault("DRIFTLINE_ENV", "dev")


def resolve_services(settings: Settings, stack: Stack, data_dir: Path) -> dict[str, str]:
    """Use the configured broker/Redis when they answer; otherwise start embedded ones."""
    env: dict[str, str] = {}
    if settings.kafka_url and kafka_answers(settings.kafka_bootstrap):
        _say(f"Kafka: using {settings.kafka_bootstrap}")
    else:
        if settings.kafka_url:
            _say(f"Kafka at {settings.kafka_bootstrap} does not answer: starting an embedded broker")
        port = 9092 if not port_open("127.0.0.1", 9092) else free_port()
        broker = EmbeddedBroker(port, log_dir=data_dir / "logs").start()
        stack.services.append(broker)
        env["DRIFTLINE_KAFKA_URL"] = broker.url
        _say(f"Kafka: embedded broker (Tansu, memory only) at {broker.address}")
    if redis_answers(settings.redis_url):
        _say(f"Redis: using {safe_url(settings.redis_url)}")
    else:
        port = 6379 if not port_open("127.0.0.1", 6379) else free_port()
        redis = EmbeddedRedis(port, log_dir=data_dir / "redis").start()
        stack.services.append(redis)
        env["DRIFTLINE_REDIS_URL"] = redis.url
        _say(
            f"Redis: {safe_url(settings.redis_url)} does not answer; embedded redis-server at {redis.address}"
        )
    return env


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # Own session: Ctrl-C reaches only us, and we stop the children in order.
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    return Child(name, process, log_path)


def run_up(settings: Settings, data_dir: Path = Path(".driftline"), simulate: bool = True) -> int:
    """Run the stack until interrupted; return the exit code."""
    stack = Stack()
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        services = resolve_services(settings, stack, data_dir)
        env = {
            **os.environ,
            **services,
            # The children keep their runtime files in the same folder, wherever they run.
            "DRIFTLINE_DATA_DIR": str(data_dir.resolve()),
        }
        # What the children will read: these settings with the services' addresses. (Not
        # Settings(**env): init values are not JSON-decoded as environment values are, so a
        # DRIFTLINE_MODELS list given as text would be refused.)
        effective = settings.model_copy(update={**_env_overrides(services), "data_dir": data_dir.resolve()})
        _say(_state_report(effective))
        ensure_topics(effective)
        api_port = settings.api_port if not port_open("127.0.0.1", settings.api_port) else free_port()
        env["DRIFTLINE_API_PORT"] = str(api_port)
        logs = data_dir / "logs"
        stack.children.append(spawn("worker", ["worker"], env, logs))
        stack.children.append(spawn("api", ["api"], env, logs))
        if simulate:
            # The demo shows what driftline is for: unless told otherwise, the simulated world
            # changes after a while, and the model's drift alert follows within minutes.
            drift_after = (
                settings.sim_drift_after if settings.sim_drift_after is not None else DEMO_DRIFT_AFTER
            )
            env["DRIFTLINE_SIM_DRIFT_AFTER"] = str(drift_after)
            stack.children.append(spawn("simulator", ["simulate"], env, logs))
            _say(
                f"simulated sensors: their power draw changes after {drift_after:,} events "
                f"(about {drift_after / settings.sim_rate / 60:.0f} min): watch the dashboard for the "
                "drift alert"
            )
        base = f"http://{settings.api_host}:{api_port}"
        _say(f"API:        {base}   (docs: {base}/docs, health: {base}/health)")
        _say(f"dashboard:  {base}/dashboard   (every model's metrics over time, live)")
        _say(
            f"predict:    curl -s -XPOST {base}/predict -H 'content-type: application/json' "
            """-d '{"device_id": "sensor-001", "readings": {"temperature": 21.5, "humidity": 40, """
            """"vibration": 0.3, "voltage": 230}}'"""
        )
        _say(f"logs:       {logs.resolve()}/{{worker,api,simulator}}.log")
        # Commands run from the same folder (replay, models, simulate) find the stack here.
        write_stack_file(
            data_dir,
            kafka_url=effective.kafka_url,
            redis_url=effective.redis_url,
            api_url=base,
            env=settings.env,
        )
        _say("other shells: driftline replay | models | simulate, run from this folder, use this stack")
        _say("Ctrl-C stops everything.")
        _watch(effective, stack)
        return 0
    except _Stop as stop:
        _say(f"{stop}: stopping")
        return 0
    except ChildExited as exited:
        _say(f"{exited}; stopping the rest (see {exited.child.log_path})")
        return 1
    finally:
        remove_stack_file(data_dir)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _say("stopped: no process of the stack is left running")


class ChildExited(Exception):
    def __init__(self, child: Child) -> None:
        self.child = child
        super().__init__(f"{child.name} exited with code {child.process.returncode}")


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    return {k.removeprefix("DRIFTLINE_").lower(): v for k, v in env.items() if k.startswith("DRIFTLINE_")}


def _watch(settings: Settings, stack: Stack, every: float = 10.0) -> None:
    """Wait for a signal, reporting what flows every ``every`` seconds."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
    next_report = time.monotonic() + every
    while True:
        for child in stack.children:
            if child.process.poll() is not None:
                raise ChildExited(child)
        if time.monotonic() >= next_report:
            next_report += every
            _say(_flow_report(client, settings))
        time.sleep(0.2)


def _flow_report(client: redis.Redis, settings: Settings) -> str:
    try:
        keys = settings.keys
        version = client.hget(keys.model(settings.default_model, "aliases"), "latest")
        if version is None:
            return f"model {settings.default_model!r}: no snapshot yet (the worker is joining)"
        meta = json.loads(client.hget(keys.model(settings.default_model, "meta"), version) or b"{}")
        metric = meta.get("metric", {})
        report = (
            f"model {settings.default_model!r} v{int(version)}: {meta.get('events_learned', 0)} "
            f"events learned, {metric.get('name', 'metric')} {_figure(metric.get('value'))}"
        )
        return "\n".join([report, *(f"WARNING: {w}" for w in meta.get("warnings", []))])
    except redis.RedisError as exc:
        return f"Redis unreachable: {exc}"


def _state_report(settings: Settings) -> str:
    """Whether this run continues an earlier one's state in Redis (see :mod:`driftline.state`)."""
    from driftline.state import describe_state

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        return describe_state(client, settings)
    except redis.RedisError as exc:
        return f"could not read the earlier state in namespace {settings.namespace!r}: {exc}"
    finally:
        client.close()


def _figure(value: float | None) -> str:
    return "no data yet" if value is None else f"{value:.3f}"
