"""``driftline replay`` of a file without a time column into a running worker: every row is accepted.

Replayed rows used to start at 2026-01-01 whatever the clock said: on a machine whose clock was
earlier every one was refused as from the future, and on any machine the times had nothing to do
with now. Now they end now, so none is future and, being in order, none is late.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from driftline.api.main import create_app
from driftline.kafka import ensure_topics
from driftline.settings import Settings

pytestmark = pytest.mark.integration

ROWS = 120


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``python -m driftline`` read exactly ``settings``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}, **settings.as_env()}


def stats(settings: Settings) -> dict[str, Any]:
    with TestClient(create_app(settings)) as client:
        return dict(client.get("/stats").json())


def test_replayed_rows_without_times_are_all_accepted_and_learned(
    make_settings: Any, start_worker: Any, wait_for: Any, tmp_path: Path
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    worker = start_worker(settings)
    path = tmp_path / "meter.csv"
    path.write_text(
        "temperature,humidity,vibration,voltage,power\n"
        + "".join(
            f"{20 + i % 7},{40 + i % 11},{0.2 + (i % 5) / 20:.2f},{229 + i % 3},{1.5 + (i % 13) / 10:.2f}\n"
            for i in range(ROWS)
        )
    )
    before = time.time()
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline",
            "replay",
            str(path),
            "--device",
            "meter-1",
            "--target-column",
            "power",
            "--batch",
            "25",
        ],
        env=settings_env(settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    after = time.time()
    assert replay.returncode == 0, replay.stderr
    assert f"replay: {ROWS} events published" in replay.stderr

    seen = wait_for(
        lambda: (s := stats(settings))["totals"]["received"] >= ROWS and s,
        timeout=60,
        what=f"{ROWS} replayed events counted",
    )
    assert seen["totals"]["accepted"] == ROWS, (seen, worker.log_tail())
    assert seen["rejected_by_reason"] == {} and seen["totals"]["late"] == 0, seen
    with TestClient(create_app(settings)) as client:
        wait_for(
            lambda: (
                client.get(f"/models/{settings.default_model}").status_code == 200
                and max(
                    v["events_learned"]
                    for v in client.get(f"/models/{settings.default_model}").json()["versions"]
                )
                == ROWS
            ),
            timeout=60,
            what=f"{ROWS} events learned",
        )
        device = client.get("/devices/meter-1/stats").json()
    newest = float(device["watermark"])
    assert before - 1 <= newest <= after, f"the last row's time is when the replay started: {device}"
