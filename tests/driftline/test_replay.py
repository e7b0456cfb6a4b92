"""Replay and MQTT mapping: rows and MQTT messages become valid events, or pass through untouched."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from driftline.errors import DriftlineError
from driftline.mqtt_bridge import mqtt_to_event
from driftline.replay import ColumnMapping, read_rows, row_to_event
from streams.schema import SensorEvent

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_csv_rows_become_valid_events_with_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "plant.csv"
    path.write_text("site,time,kw,temp,hum,note\na,2026-01-01T00:00:00Z,2.5,21,,ok\nb,1767225600,3,22,40,x\n")
    rows, total = read_rows(str(path))
    mapping = ColumnMapping(str(path), device_column="site", time_column="time", target_column="kw")
    events = [row_to_event(row, i, mapping) for i, row in enumerate(rows)]
    assert total == 2
    assert events[0] == {"event_id": "plant-00000000", "device_id": "a", "ts": "2026-01-01T00:00:00+00:00",
                         "readings": {"temp": 21.0, "hum": None}, "target": 2.5}
    assert events[1]["ts"] == "2026-01-01T00:00:00+00:00" and events[1]["readings"] == {"temp": 22.0,
                                                                                         "hum": 40.0}
    for event in events:
        SensorEvent.model_validate(event)


def test_jsonl_and_river_sources(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"v": 1.5, "y": 2}\n\n{"v": "n/a", "y": 3}\n')
    rows, total = read_rows(str(path))
    mapping = ColumnMapping(str(path), target_column="y")
    events = [row_to_event(r, i, mapping) for i, r in enumerate(rows)]
    assert total == 2
    assert [e["readings"] for e in events] == [{"v": 1.5}, {}]
    assert events[1]["ts"] == "2026-01-01T00:00:01+00:00", "rows one second apart without a time column"
    rows, total = read_rows("river:TrumpApproval")
    first = row_to_event(next(rows), 0, ColumnMapping("river:TrumpApproval", target_column="y"))
    assert total == 1001
    assert SensorEvent.model_validate(first).target == pytest.approx(43.75505)


def test_unknown_sources_say_why(tmp_path: Path) -> None:
    with pytest.raises(DriftlineError, match="no such file"):
        read_rows(str(tmp_path / "missing.csv"))
    with pytest.raises(DriftlineError, match="River has no dataset"):
        read_rows("river:NoSuchThing")
    (tmp_path / "a.parquet").write_bytes(b"")
    with pytest.raises(DriftlineError, match="use .csv"):
        read_rows(str(tmp_path / "a.parquet"))


@pytest.mark.parametrize(("topic", "payload", "expected"), [
    ("sensors/d1", b'{"readings": {"t": 1.0}}',
     {"readings": {"t": 1.0}, "device_id": "d1", "ts": AT.isoformat()}),
    ("sensors/d1", b'{"t": 1.0, "h": null}',
     {"readings": {"t": 1.0, "h": None}, "device_id": "d1", "ts": AT.isoformat()}),
    ("sensors/d1/t", b"7", {"readings": {"t": 7}, "device_id": "d1", "ts": AT.isoformat()}),
    ("sensors/d1", b'{"event_id": "e", "device_id": "other", "ts": "2026-01-01T00:00:00Z", "readings": {}}',
     {"event_id": "e", "device_id": "other", "ts": "2026-01-01T00:00:00Z", "readings": {}}),
])
def test_mqtt_payloads_are_completed_into_events(topic: str, payload: bytes, expected: dict) -> None:
    key, value = mqtt_to_event(topic, payload, AT)
    event = json.loads(value)
    assert key == b"d1"
    event_id = event.pop("event_id")
    assert event_id == expected.pop("event_id", event_id)
    assert event_id.startswith("d1-") or event_id == "e"
    assert event == expected
    assert mqtt_to_event(topic, payload, AT) == (key, value), "the same message gets the same id"


@pytest.mark.parametrize(("topic", "payload", "key"), [
    ("sensors/d1", b"\xff not json", b"d1"),
    ("sensors/d1", b"[1, 2]", b"d1"),
    ("sensors/d1", b'{"t": "warm"}', b"d1"),
    ("sensors/d1", b"true", b"d1"),
    ("weather/x", b'{"t": 1}', b"unknown"),
    ("sensors/", b'{"t": 1}', b"unknown"),
])
def test_unreadable_mqtt_payloads_are_forwarded_unchanged(topic: str, payload: bytes, key: bytes) -> None:
    assert mqtt_to_event(topic, payload, AT) == (key, payload)
