"""The README's configuration cases run as they stand: the blocks are read from README.md.

Each block is what a user types: exports, ``driftline up --no-simulator &``, a replay, and a look
at the model. The test runs the block in bash from an empty folder, with the session's broker and
Redis in the environment (as a user's own Kafka and Redis would be), and re-runs its last command
until the model has learned every row, as a user would look again a few seconds later.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from river import datasets, evaluate, metrics

from driftline.models.specs import ModelSpec
from driftline.settings import Settings

from .conftest import settings_env

# `driftline up` takes the usual ports when free: one such test at a time (pytest-xdist).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("driftline-up")]

README = Path(__file__).resolve().parents[2] / "README.md"
CASE = re.compile(r"<!-- readme-case: (?P<name>[\w-]+) -->\n```sh\n(?P<body>.*?)```", re.S)


def readme_case(name: str) -> list[str]:
    cases = {m["name"]: m["body"] for m in CASE.finditer(README.read_text())}
    assert name in cases, f"README.md has no block marked readme-case: {name} (has {sorted(cases)})"
    return [line for line in cases[name].strip().splitlines() if line.strip()]


def run_case(name: str, settings: Settings, cwd: Path, done: str, timeout: float = 90) -> str:
    """Run README block ``name``; its last command again until its output has ``done``."""
    *body, last = readme_case(name)
    look = re.sub(r"\s+#.*$", "", last)  # its comment would swallow the $( ) below
    tries = int(timeout // 2)
    script = "\n".join(
        [
            "set -euo pipefail",
            "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",  # stop the stack `up` started
            *body,
            f"for _ in $(seq {tries}); do",
            f"  out=$({look} 2>&1) || true",
            f'  if grep -qF -- {shlex.quote(done)} <<<"$out"; then printf \'%s\\n\' "$out"; exit 0; fi',
            "  sleep 2",
            "done",
            "printf 'never saw it; last output:\\n%s\\n' \"$out\"; exit 1",
        ]
    )
    env = {**settings_env(settings), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    del env["DRIFTLINE_DATA_DIR"]  # as for a user: the default, .driftline in the current folder
    finished = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout + 90
    )
    assert finished.returncode == 0, (
        f"README case {name}:\n{finished.stdout[-4000:]}\n{finished.stderr[-4000:]}"
    )
    return finished.stdout


def newest_version(settings: Settings, model: str) -> dict[str, Any]:
    shown = subprocess.run(
        [sys.executable, "-m", "driftline", "models", "show", model, "--json"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout)["versions"][-1])


def test_my_own_model_on_a_csv_file_with_a_target_column(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    # plant.csv as the README describes it: site, t, kw, and the sensors.
    start = datetime.now(UTC) - timedelta(days=2)
    with (tmp_path / "plant.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["site", "t", "kw", "temp", "vibration"])
        for i in range(200):
            temp, vibration = 15 + (i * 7) % 13, 0.1 + (i % 9) / 20
            writer.writerow(
                [
                    "a" if i % 2 else "b",
                    (start + timedelta(minutes=i)).isoformat(),
                    round(0.8 + 0.05 * temp + 1.5 * vibration, 4),
                    temp,
                    vibration,
                ]
            )
    out = run_case("csv", make_settings(), tmp_path, done="200 events learned")
    assert "model kw: champion follows latest; newest v" in out
    meta = newest_version(make_settings(), "kw")
    assert meta["events_learned"] == meta["events_seen"] == 200 and meta["warnings"] == []
    assert meta["metric"]["value"] is not None and meta["feature_schema"]
    # runtime files went to the one data directory, nothing else into the user's folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [".driftline", "plant.csv"]


def test_a_river_dataset_raw_readings_only_gives_rivers_own_score(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    out = run_case("river", settings, tmp_path, done="1001 events learned")
    assert "model approval: champion follows latest" in out
    meta = newest_version(settings, "approval")
    # Raw readings, no catalog: the model saw exactly River's rows, in order, so its prequential
    # MAE is River's own evaluator's on the same pipeline.
    spec = ModelSpec.model_validate(meta["spec"])
    expected = evaluate.progressive_val_score(datasets.TrumpApproval(), spec.build(), metrics.MAE())
    assert meta["events_learned"] == 1001
    assert meta["metric"]["value"] == pytest.approx(expected.get(), rel=1e-12)
