"""Snapshots written before driftline took one root import name still load, and predict the same.

The fixtures in ``data/`` were sealed by earlier code: ``snapshot-4994b9b-*`` by the release
before this layout (its pickles name ``models.learner``, ``models.evaluation``, ...), and
``snapshot-0.1.0-*`` by the code just before the move. ``snapshots.json`` records, for each, the
prediction it gave then on one feature vector.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from driftline.models.learner import OnlineLearner
from driftline.models.snapshot import open_snapshot

DATA = Path(__file__).parent / "data"
FIXTURES: dict[str, Any] = json.loads((DATA / "snapshots.json").read_text())


@pytest.mark.parametrize("name", sorted(FIXTURES["snapshots"]))
def test_a_snapshot_written_by_earlier_code_loads_and_predicts_the_same(name: str) -> None:
    fixture = FIXTURES["snapshots"][name]
    blob = (DATA / fixture["file"]).read_bytes()
    # pickled by the old path: SHORT_BINUNICODE "models.learner", not "driftline.models.learner"
    assert b"\x8c\x0emodels.learner" in blob
    learner, meta = open_snapshot(blob, FIXTURES["secret"].encode())
    assert isinstance(learner, OnlineLearner)
    assert type(learner).__module__ == "driftline.models.learner"
    assert learner.events_learned == fixture["events_learned"] == meta["events_learned"]
    features = fixture.get("features", FIXTURES["features"])
    assert learner.predict(features).value == fixture["prediction"]


def test_the_sealing_module_imports_neither_settings_nor_river_nor_the_stream_code() -> None:
    probe = (
        "import sys, driftline.models.snapshot; "
        "print(sorted(m for m in sys.modules if m.startswith(('driftline', 'river', 'faust'))))"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.replace("'", '"')
    )
    assert loaded == [
        "driftline",
        "driftline.core",
        "driftline.core.errors",
        "driftline.core.urls",
        "driftline.models",
        "driftline.models.snapshot",
    ]


def test_a_learner_from_before_drift_detection_resumes_with_its_spec_and_a_monitor() -> None:
    from driftline.core.records import FeatureRecord
    from driftline.models.specs import ModelSpec

    fixture = FIXTURES["snapshots"]["default-4994b9b"]
    learner, _ = open_snapshot((DATA / fixture["file"]).read_bytes(), FIXTURES["secret"].encode())
    # equal to the configured spec, so a restarted worker resumes it instead of starting afresh
    assert learner.spec == ModelSpec(name="default")
    before = learner.events_learned
    record = FeatureRecord("default", "d", "new", 1.8e9, fixture["features"], 2.0, 9, 0)
    assert learner.learn(record, 9, 0) and learner.events_learned == before + 1
    assert set(learner.drift.watches) >= {"error"}
