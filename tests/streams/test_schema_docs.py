"""The published event schema (docs/event.schema.json, GET /schema/event) is the one the code enforces."""

from __future__ import annotations

import json
from pathlib import Path

from driftline.streams.schema import MAX_READINGS, SensorEvent

DOC = Path(__file__).resolve().parents[2] / "docs" / "event.schema.json"


def test_the_documented_schema_is_the_enforced_one() -> None:
    assert json.loads(DOC.read_text()) == SensorEvent.model_json_schema(), (
        "regenerate docs/event.schema.json from driftline.streams.schema.SensorEvent"
    )


def test_the_schema_states_its_bounds() -> None:
    schema = SensorEvent.model_json_schema()
    assert schema["properties"]["readings"]["maxProperties"] == MAX_READINGS
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"event_id", "device_id", "ts", "readings"}
