"""Per-device cleaning: the catalog's policies, lateness and clocks, on hand-computed cases."""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import pytest
from pydantic import ValidationError

from driftline.streams.catalog import DEFAULT_CATALOG, SensorSpec, load_catalog
from driftline.streams.cleaning import CleanReadings, Rejection, TimePolicy, check_time, clean_readings
from driftline.streams.features import DeviceState
from driftline.streams.ingest import FeatureRecord, IngestStage

CATALOG = {
    "t": SensorSpec(unit="C", min=-10, max=50, impute="last", max_gap_seconds=60),
    "h": SensorSpec(unit="%", min=0, max=100, impute="mean", max_gap_seconds=60),
    "v": SensorSpec(min=0, max=1, out_of_range="reject", impute="none"),
}


def device_with_history() -> DeviceState:
    state = DeviceState(last={"t": 20.0, "h": 40.0, "v": 0.5}, last_seen={"t": 100.0, "h": 100.0, "v": 100.0})
    state.windows["h"] = deque([30.0, 40.0, 50.0, 40.0], maxlen=10)
    return state


def test_missing_readings_are_imputed_by_each_sensors_policy() -> None:
    result = clean_readings({"t": None, "h": None, "v": None}, 130.0, device_with_history(), CATALOG)
    assert result == CleanReadings({"t": 20.0, "h": 40.0}, ("t", "h"), ())


def test_sensors_left_out_are_imputed_like_nulls() -> None:
    result = clean_readings({"v": 0.2}, 130.0, device_with_history(), CATALOG)
    assert result == CleanReadings({"v": 0.2, "t": 20.0, "h": 40.0}, ("t", "h"), ())


def test_imputation_does_not_bridge_a_gap_longer_than_allowed() -> None:
    result = clean_readings({"t": None, "h": None}, 161.0, device_with_history(), CATALOG)
    assert result == CleanReadings({}, (), ())


def test_out_of_range_values_are_clipped_or_refused_by_policy() -> None:
    state = device_with_history()
    result = clean_readings({"t": -40.0, "h": 130.0, "v": 0.1}, 100.0, state, CATALOG)
    assert result == CleanReadings({"t": -10.0, "h": 100.0, "v": 0.1}, (), ("t", "h"))
    refused = clean_readings({"t": 20.0, "v": 1.5}, 100.0, state, CATALOG)
    assert isinstance(refused, Rejection) and refused.reason == "out_of_range"
    assert refused.message == "v=1.5 is outside [0.0, 1.0]"


def test_a_device_first_event_has_nothing_to_impute() -> None:
    assert clean_readings({"t": None, "x": 3.0}, 0.0, DeviceState(), CATALOG) == CleanReadings(
        {"x": 3.0}, (), ()
    )


@pytest.mark.parametrize(
    ("ts", "watermark", "now", "reason"),
    [
        (1000.0, 1000.0, 1000.0, None),
        (941.0, 1000.0, 1000.0, None),  # out of order, within the 60 s lateness
        (939.0, 1000.0, 1000.0, "late"),
        (1010.0, None, 1000.0, None),  # 10 s ahead: a clock a little fast is fine
        (1011.0, None, 1000.0, "future"),
    ],
)
def test_time_checks(ts: float, watermark: float | None, now: float, reason: str | None) -> None:
    result = check_time(ts, watermark, now, TimePolicy(allowed_lateness=60, max_future=10))
    assert (result.reason if result else None) == reason


def raw(event_id: str, ts: int, **readings: float | None) -> bytes:
    return json.dumps(
        {"event_id": event_id, "device_id": "d", "ts": ts, "readings": readings, "target": 1.0}
    ).encode()


def test_stage_accounts_for_late_and_out_of_order_events_per_device() -> None:
    stage = IngestStage(
        models=("m",),
        target="y",
        max_message_bytes=10_000,
        catalog=CATALOG,
        time_policy=TimePolicy(allowed_lateness=60, max_future=10),
    )
    now_ms = 10_000_000
    outcomes = [
        stage.handle(raw(f"e{i}", ts, t=20.0 + i), 0, i, now_ms)[0]
        for i, ts in enumerate([1000, 1100, 1050, 1000, 1101])
    ]
    assert [type(o).__name__ for o in outcomes] == [
        "FeatureRecord",
        "FeatureRecord",
        "FeatureRecord",
        "Rejection",
        "FeatureRecord",
    ]
    assert isinstance(outcomes[3], Rejection) and outcomes[3].reason == "late"
    assert stage.devices["d"].watermark == 1101
    assert dict(stage.devices["d"].counts) == {"accepted": 4, "imputed": 0, "clipped": 0, "late": 1}
    totals = stage.totals()
    assert (totals["received"], totals["accepted"], totals["late"], totals["rejected"]) == (5, 4, 1, 0)


def test_the_target_is_never_a_feature() -> None:
    stage = IngestStage(models=("m",), target="power", max_message_bytes=10_000)
    event = {"event_id": "a", "device_id": "d", "ts": 0, "readings": {"temperature": 20.0, "power": 3.0}}
    record = stage.handle(json.dumps(event).encode(), 0, 0, 1000)[0]
    assert isinstance(record, FeatureRecord)
    assert record.target == 3.0
    assert not any(name.startswith("power") for name in record.features)


def test_catalog_from_json_text_and_yaml_file(tmp_path: Path) -> None:
    text = '{"t": {"unit": "C", "min": 0, "max": 10, "out_of_range": "reject", "impute": "none"}}'
    assert load_catalog(text)["t"] == SensorSpec(
        unit="C", min=0, max=10, out_of_range="reject", impute="none"
    )
    path = tmp_path / "catalog.yaml"
    path.write_text("t:\n  unit: C\n  min: 0\n  max: 10\n  max_gap_seconds: 5\n")
    assert load_catalog(path=path)["t"].max_gap_seconds == 5
    assert load_catalog() == DEFAULT_CATALOG
    with pytest.raises(ValidationError, match="min 5.0 is above max 1.0"):
        load_catalog('{"t": {"min": 5, "max": 1}}')
    with pytest.raises(ValidationError):
        load_catalog('{"t": {"impute": "guess"}}')


# --- a bound on any reading's magnitude (hardening finding 6) ----------------------------------


def test_a_reading_beyond_the_magnitude_bound_is_out_of_range_even_without_a_catalog_range() -> None:
    from driftline.streams.cleaning import MAX_MAGNITUDE

    catalog = {"r": SensorSpec(out_of_range="reject"), "c": SensorSpec(min=0.0)}

    uncatalogued = clean_readings({"x": 1e200, "y": -1e308}, 130.0, DeviceState(), catalog)
    open_above = clean_readings({"c": 1e300}, 130.0, DeviceState(), catalog)
    refused = clean_readings({"r": -1e200}, 130.0, DeviceState(), catalog)
    at_the_bound = clean_readings({"x": MAX_MAGNITUDE, "r": -MAX_MAGNITUDE}, 130.0, DeviceState(), catalog)

    assert uncatalogued == CleanReadings({"x": MAX_MAGNITUDE, "y": -MAX_MAGNITUDE}, (), ("x", "y"))
    assert open_above == CleanReadings({"c": MAX_MAGNITUDE}, (), ("c",))
    assert isinstance(refused, Rejection) and refused.reason == "out_of_range"
    assert refused.message == "r=-1e+200 is beyond ±1e+12, the bound on any reading"
    assert at_the_bound == CleanReadings({"x": MAX_MAGNITUDE, "r": -MAX_MAGNITUDE}, (), ())


def test_a_huge_uncatalogued_reading_is_clipped_and_counted_and_the_device_carries_on() -> None:
    stage = IngestStage(models=("m",), target="y", max_message_bytes=10_000, catalog={})

    def event(i: int, x: float) -> bytes:
        return json.dumps({"event_id": f"e{i}", "device_id": "d", "ts": i, "readings": {"x": x}}).encode()

    outcomes = [stage.handle(event(i, x), 0, i, 1000)[0] for i, x in enumerate([1.0, 1e200, 2.0, 3.0])]

    assert all(isinstance(o, FeatureRecord) for o in outcomes), outcomes
    records = [o for o in outcomes if isinstance(o, FeatureRecord)]
    assert records[1].clipped == ("x",) and records[1].features["x"] == 1e12
    assert all(math.isfinite(v) for r in records for v in r.features.values())
    assert stage.totals()["clipped"] == 1 and stage.totals()["accepted"] == 4
    json.dumps(stage.devices["d"].to_json(), allow_nan=False)
