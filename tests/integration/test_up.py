"""``driftline up``: the whole stack answers a prediction, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftline.embedded import free_port

# `driftline up` takes the usual ports when free: one such test at a time (pytest-xdist).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("driftline-up")]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (children started their own sessions)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_a_prediction_within_60s_and_sigint_stops_everything(services: Any, tmp_path: Path) -> None:
    port = free_port()
    run = os.urandom(4).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update(
        {
            "DRIFTLINE_REDIS_URL": services.redis_url,  # the embedded broker is up's own
            "DRIFTLINE_NAMESPACE": f"test-up-{run}",
            "DRIFTLINE_WORKER_ID": f"test-up-{run}",
            "DRIFTLINE_SIM_RATE": "50",
            "DRIFTLINE_SNAPSHOT_EVERY_SECONDS": "1",
        }
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "driftline", "up", "--port", str(port), "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = time.monotonic()
    body = None
    try:
        while time.monotonic() - started < 60 and up.poll() is None:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/predict",
                    timeout=2,
                    json={
                        "device_id": "sensor-001",
                        "readings": {"temperature": 21.5, "humidity": 40, "vibration": 0.3, "voltage": 230},
                    },
                )
                if response.status_code == 200:
                    body = response.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert body is not None, f"no prediction within 60 s; up exited with {up.poll()}"
        assert body["version"] >= 1 and isinstance(body["prediction"], float)
        stack = descendants(up.pid)
        assert len(stack) >= 4, "broker, worker, API and simulator should be running"
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "stopped: no process of the stack is left running" in output
    survivors = [pid for pid in stack if alive(pid)]
    assert survivors == [], f"left running: {survivors}\n{output}"
