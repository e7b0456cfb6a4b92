"""featurize and DeviceState on small series whose features are computed by hand."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from driftline.streams.catalog import SensorSpec
from driftline.streams.features import RECENT_IDS, DeviceState, FeatureSpec, RecentIds, featurize
from driftline.streams.ingest import FeatureRecord, IngestStage

T0 = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday, midnight

#: Only what a test looks at: a 3-reading mean and the delta.
MEAN_AND_DELTA = FeatureSpec(
    windows=(3,),
    time_windows=(),
    stats=("mean",),
    ewma_half_lives=(),
    rate=False,
    lags=(),
    pairs=(),
    time_of_day=False,
    day_of_week=False,
)


def spec(**overrides: object) -> FeatureSpec:
    """A spec computing nothing but what ``overrides`` switch on."""
    values: dict[str, object] = {
        "windows": (),
        "time_windows": (),
        "ewma_half_lives": (),
        "delta": False,
        "rate": False,
        "lags": (),
        "pairs": (),
        "time_of_day": False,
        "day_of_week": False,
    }
    values.update(overrides)
    return FeatureSpec.model_validate(values)


def run(values: list[float], feature_spec: FeatureSpec = MEAN_AND_DELTA) -> list[dict[str, float]]:
    state = DeviceState()
    return [
        featurize(state, {"t": v}, T0 + timedelta(seconds=10 * i), feature_spec) for i, v in enumerate(values)
    ]


def test_a_first_event_has_its_reading_and_a_one_point_window_but_no_delta() -> None:
    assert run([2.0]) == [{"t": 2.0, "t_mean_3": 2.0}]


def test_the_rolling_mean_covers_the_last_n_readings_only() -> None:
    means = [f["t_mean_3"] for f in run([2.0, 4.0, 9.0, 1.0, 5.0])]
    # running sums: equal to the last bit or so (the parity tests hold them to 1e-9 of a reference)
    assert means == pytest.approx([2.0, 3.0, 5.0, 14 / 3, 5.0], rel=1e-15)


def test_the_delta_is_the_change_since_the_previous_reading() -> None:
    features = run([2.0, 4.0, 9.0, 1.0])
    assert ["t_delta" in f for f in features] == [False, True, True, True]
    assert [f["t_delta"] for f in features[1:]] == [2.0, 5.0, -8.0]


def test_a_whole_vector_on_a_hand_computed_series() -> None:
    assert run([2.0, 4.0, 9.0]) == [
        {"t": 2.0, "t_mean_3": 2.0},
        {"t": 4.0, "t_mean_3": 3.0, "t_delta": 2.0},
        {"t": 9.0, "t_mean_3": 5.0, "t_delta": 5.0},
    ]


def test_std_min_max_lag_and_rate_on_two_readings() -> None:
    full = spec(windows=(2,), stats=("mean", "std", "min", "max"), delta=True, rate=True, lags=(1,))
    assert run([1.0, 3.0], full)[1] == {
        "t": 3.0,
        "t_mean_2": 2.0,
        "t_std_2": 1.0,
        "t_min_2": 1.0,
        "t_max_2": 3.0,
        "t_delta": 2.0,
        "t_rate": 0.2,
        "t_lag_1": 1.0,
    }


def test_each_sensor_keeps_its_own_history() -> None:
    state = DeviceState()
    featurize(state, {"a": 1.0, "b": 10.0}, T0, MEAN_AND_DELTA)
    second = featurize(state, {"a": 3.0}, T0 + timedelta(seconds=1), MEAN_AND_DELTA)
    assert second == {"a": 3.0, "a_mean_3": 2.0, "a_delta": 2.0}
    third = featurize(state, {"b": 20.0}, T0 + timedelta(seconds=2), MEAN_AND_DELTA)
    assert third == {"b": 20.0, "b_mean_3": 15.0, "b_delta": 10.0}


def test_the_state_records_what_the_next_event_needs() -> None:
    state = DeviceState()
    featurize(state, {"t": 2.0}, T0, MEAN_AND_DELTA)
    features = featurize(state, {"t": 4.0}, T0 + timedelta(seconds=10), MEAN_AND_DELTA)
    assert state.events == 2
    assert state.last == {"t": 4.0}
    assert state.last_at == {"t": T0.timestamp() + 10}
    assert state.last_ts == T0.timestamp() + 10
    assert list(state.windows["t"]) == [2.0, 4.0]
    assert state.features == features


# --- imputation, through the ingest stage (cleaning then features, as the stream runs them) -----

CATALOG = {"t": SensorSpec(impute="last", max_gap_seconds=60), "h": SensorSpec(impute="last")}


def ingest(stage: IngestStage, offset: int, ts: int, readings: dict[str, float | None]) -> FeatureRecord:
    message = {"event_id": f"e{offset}", "device_id": "d1", "ts": ts, "readings": readings, "target": 1.0}
    (record,) = stage.handle(json.dumps(message).encode(), 0, offset, timestamp_ms=ts * 1000)
    assert isinstance(record, FeatureRecord), record
    return record


def new_stage() -> IngestStage:
    return IngestStage(
        models=("m",), target="y", max_message_bytes=10_000, features=MEAN_AND_DELTA, catalog=dict(CATALOG)
    )


def test_a_missing_reading_is_imputed_from_the_last_value() -> None:
    stage = new_stage()
    ingest(stage, 0, 1000, {"t": 4.0, "h": 50.0})
    ingest(stage, 1, 1010, {"t": 8.0, "h": 60.0})
    record = ingest(stage, 2, 1020, {"t": None, "h": 70.0})
    assert record.imputed == ("t",)
    assert record.features == {
        "t": 8.0,
        "t_mean_3": pytest.approx(20 / 3, rel=1e-15),
        "t_delta": 0.0,
        "h": 70.0,
        "h_mean_3": 60.0,
        "h_delta": 10.0,
    }


def test_a_reading_left_out_is_imputed_like_a_null() -> None:
    stage = new_stage()
    ingest(stage, 0, 1000, {"t": 4.0, "h": 50.0})
    record = ingest(stage, 1, 1010, {"h": 60.0})
    assert record.imputed == ("t",)
    assert record.features["t"] == 4.0
    assert record.features["t_delta"] == 0.0


def test_a_sensor_missing_on_the_first_event_has_no_features() -> None:
    record = ingest(new_stage(), 0, 1000, {"t": 4.0, "h": None})
    assert record.imputed == ()
    assert record.features == {"t": 4.0, "t_mean_3": 4.0}


def test_imputation_stops_when_the_gap_is_longer_than_allowed() -> None:
    stage = new_stage()
    ingest(stage, 0, 1000, {"t": 4.0, "h": 50.0})
    record = ingest(stage, 1, 1061, {"h": 60.0})  # t's max gap is 60 s
    assert record.imputed == ()
    assert set(record.features) == {"h", "h_mean_3", "h_delta"}


# --- time of day -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "sin", "cos"),
    [(0, 0.0, 1.0), (6, 1.0, 0.0), (12, 0.0, -1.0), (18, -1.0, 0.0)],
)
def test_time_of_day_is_a_point_on_the_unit_circle(hour: int, sin: float, cos: float) -> None:
    state = DeviceState()
    features = featurize(state, {}, T0.replace(hour=hour), spec(time_of_day=True))
    assert set(features) == {"tod_sin", "tod_cos"}
    # sin(pi) and cos(pi/2) are 1e-16, not 0, in floating point
    assert features["tod_sin"] == pytest.approx(sin, abs=1e-15)
    assert features["tod_cos"] == pytest.approx(cos, abs=1e-15)


def test_time_of_day_at_3h_is_45_degrees() -> None:
    features = featurize(DeviceState(), {}, T0.replace(hour=3), spec(time_of_day=True))
    assert features["tod_sin"] == pytest.approx(math.sqrt(0.5), abs=1e-15)
    assert features["tod_cos"] == pytest.approx(math.sqrt(0.5), abs=1e-15)


def test_the_day_of_week_turns_once_a_week() -> None:
    # Monday 00:00 is weekday 0; Thursday 12:00 is half way round (3.5 days)
    monday = featurize(DeviceState(), {}, T0, spec(day_of_week=True))
    assert monday == {"dow_sin": 0.0, "dow_cos": 1.0}
    thursday_noon = featurize(DeviceState(), {}, T0 + timedelta(days=3, hours=12), spec(day_of_week=True))
    assert thursday_noon["dow_sin"] == pytest.approx(0.0, abs=1e-15)
    assert thursday_noon["dow_cos"] == -1.0


# --- DeviceState persistence ------------------------------------------------------------------


def busy_state() -> DeviceState:
    """A state every part of which is filled: all feature kinds, ids, counts, watermark."""
    state = DeviceState()
    full = FeatureSpec(windows=(3,), time_windows=(25.0,), lags=(1, 2))
    for i, (t, h) in enumerate([(20.0, 40.0), (21.0, 42.5), (19.5, 41.0), (22.0, 39.0)]):
        featurize(state, {"temperature": t, "humidity": h}, T0 + timedelta(seconds=7 * i), full)
        state.recent_ids.append(f"e{i}")
        state.last_seen["temperature"] = T0.timestamp() + 7 * i
    state.watermark = T0.timestamp() + 21
    state.counts.update({"accepted": 4, "imputed": 1})
    return state


def test_device_state_round_trips_through_to_json_and_from_json() -> None:
    state = busy_state()
    assert DeviceState.from_json(state.to_json()) == state


def test_device_state_round_trips_through_json_text() -> None:
    state = busy_state()
    restored = DeviceState.from_json(json.loads(json.dumps(state.to_json())))
    assert restored == state
    assert restored.to_json() == state.to_json()


def test_a_restored_state_featurizes_the_next_event_as_the_original_would() -> None:
    full = FeatureSpec(windows=(3,), time_windows=(25.0,), lags=(1, 2))
    original = busy_state()
    restored = DeviceState.from_json(json.loads(json.dumps(original.to_json())))
    ts = T0 + timedelta(seconds=30)
    readings = {"temperature": 23.0, "humidity": 38.0}
    assert featurize(restored, readings, ts, full) == featurize(original, readings, ts, full)


def test_an_empty_dict_restores_a_fresh_state() -> None:
    assert DeviceState.from_json({}) == DeviceState()


def test_recent_ids_keep_only_the_newest_thousand() -> None:
    state = DeviceState()
    for i in range(RECENT_IDS + 500):
        state.recent_ids.append(f"e{i}")
    assert RECENT_IDS == 1000
    assert len(state.recent_ids) == 1000
    assert "e499" not in state.recent_ids
    assert all(f"e{i}" in state.recent_ids for i in range(500, 1500))
    assert len(state.to_json()["recent_ids"]) <= 4 * 8 * 1000 // 3 + 4, "8 bytes a digest, base64"


def test_recent_ids_find_only_whole_digests() -> None:
    ids = RecentIds(maxlen=10)
    ids.append("a")
    ids.append("b")
    # the bytes across the boundary of the two digests, as if they were one
    straddling = bytes(ids._ring[4:12])
    assert not ids._holds(straddling)
    assert ids._holds(RecentIds.digest("b"))


def test_recent_ids_stay_bounded_when_restored_from_a_longer_list() -> None:
    # a state stored before the digests: the ids themselves
    restored = DeviceState.from_json({"recent_ids": [f"e{i}" for i in range(1500)]})
    assert len(restored.recent_ids) == 1000
    assert "e499" not in restored.recent_ids and "e500" in restored.recent_ids
    restored.recent_ids.append("next")
    assert len(restored.recent_ids) == 1000
    assert (
        "e500" not in restored.recent_ids and "e501" in restored.recent_ids and "next" in restored.recent_ids
    )
    # digests stored by a larger window are cut to this one's newest
    cut = RecentIds.from_json(restored.recent_ids.to_json(), maxlen=10)
    assert len(cut) == 10 and "next" in cut and "e1491" in cut and "e1490" not in cut


# --- huge values: finite features, a state that heals (hardening finding 6) ---------------------


@pytest.mark.parametrize("huge", [1e200, -1e308, 1e308, 1.7976931348623157e308])
def test_a_huge_reading_overflows_no_statistic_and_leaves_the_device_state_finite(huge: float) -> None:
    # featurize is given the value as it is (cleaning would bound it first): the statistics
    # themselves must not overflow, whatever finite value they are given.
    state = DeviceState()
    feature_spec = FeatureSpec(
        pairs=({"a": "x", "b": "y", "op": "diff"}, {"a": "x", "b": "y", "op": "ratio"})
    )
    for i in range(3):
        featurize(state, {"x": 1.0, "y": -1e308}, T0 + timedelta(seconds=i), feature_spec)

    odd = featurize(state, {"x": huge, "y": -1e308}, T0 + timedelta(seconds=3), feature_spec)
    later = [
        featurize(state, {"x": 1.0, "y": 2.0}, T0 + timedelta(seconds=s), feature_spec) for s in (4, 5, 400)
    ]

    for features in (odd, *later):
        assert features and all(math.isfinite(v) for v in features.values()), features
    assert odd["x"] == huge
    assert later[-1]["x_mean_10"] == pytest.approx((huge + 6.0) / 7, rel=1e-9)  # still in the window
    json.dumps(state.to_json(), allow_nan=False)  # nothing non-finite is kept


def test_a_feature_that_comes_out_non_finite_is_left_out_and_counted() -> None:
    ratio = spec(pairs=({"a": "a", "b": "b", "op": "ratio"},))
    state = DeviceState()

    features = featurize(state, {"a": 6.0, "b": 1e-320}, T0, ratio)  # 6 / 1e-320 is beyond a float

    assert features == {"a": 6.0, "b": 1e-320}
    assert state.counts["non_finite_features"] == 1


def test_a_stored_state_holding_non_finite_values_is_read_without_them() -> None:
    # A state checkpointed before the statistics were overflow-safe may hold Infinity or NaN.
    stored = json.loads(
        '{"last": {"x": Infinity, "y": 1.0}, "windows": {"x": [1.0, NaN, 2.0]},'
        ' "timed": {"x": [[1.0, 1.0], [2.0, -Infinity]]},'
        ' "ewma": {"x": {"60s": [NaN, 5.0]}, "y": {"60s": [1.0, 5.0]}},'
        ' "features": {"x": Infinity, "y": 1.0}}'
    )

    state = DeviceState.from_json(stored)

    assert state.last == {"y": 1.0} and state.features == {"y": 1.0}
    assert list(state.windows["x"]) == [1.0, 2.0] and state.timed["x"].points() == [[1.0, 1.0]]
    assert state.ewma == {"x": {}, "y": {"60s": [1.0, 5.0]}}
    json.dumps(state.to_json(), allow_nan=False)
