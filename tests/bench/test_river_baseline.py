"""The River baseline of ``bench.stages`` computes driftline's features, named as driftline names
them: on the same events (in order, no missing readings) its vectors equal the ingest stage's."""

from __future__ import annotations

import json
import math

from bench.river_baseline import RiverFeaturizer, river_program
from driftline.core.records import FeatureRecord
from driftline.simulator import SensorSimulator
from driftline.streams.ingest import IngestStage


def test_the_river_program_computes_driftlines_default_features() -> None:
    events = list(SensorSimulator(devices=4, seed=8, missing_rate=0.0).events(600))
    stage = IngestStage(models=("default",), target="power", max_message_bytes=100_000)
    river = RiverFeaturizer()
    compared = 0
    for offset, event in enumerate(events):
        (record,) = stage.handle(json.dumps(event).encode(), 0, offset, timestamp_ms=0)
        assert isinstance(record, FeatureRecord), record
        assert not record.imputed and not record.clipped
        got = river.features(event)
        assert set(got) == set(record.features), event["event_id"]
        for name, want in record.features.items():
            assert math.isclose(got[name], want, rel_tol=1e-9, abs_tol=1e-9), (name, got[name], want)
        compared += 1
    assert compared == 600 and len(got) == 4 * 13 + 5


def test_the_river_program_learns_every_labelled_event() -> None:
    events = list(SensorSimulator(devices=3, seed=2, missing_rate=0.05).events(300))
    messages = [json.dumps(events[i : i + 50]).encode() for i in range(0, 300, 50)]
    assert river_program(messages) == sum(1 for e in events if e.get("target") is not None) > 250
