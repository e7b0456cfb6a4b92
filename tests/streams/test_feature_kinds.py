"""Every feature kind on a small hand-computed series: first event, a gap, an out-of-order reading."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.streams.features import DeviceState, FeatureSpec, SensorPair, featurize

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # a Monday, 06:00
SPEC = FeatureSpec(
    windows=(3,),
    time_windows=(25.0,),
    ewma_half_lives=(10.0,),
    lags=(1, 2),
    pairs=(),
    time_of_day=False,
    day_of_week=False,
)

# (seconds after T0, reading) and the features each must produce
SERIES = [
    (
        0,
        1.0,
        {
            "t": 1,
            "t_mean_3": 1,
            "t_std_3": 0,
            "t_min_3": 1,
            "t_max_3": 1,
            "t_mean_25s": 1,
            "t_std_25s": 0,
            "t_min_25s": 1,
            "t_max_25s": 1,
            "t_ewma_10s": 1,
        },
    ),
    (
        10,
        3.0,
        {
            "t": 3,
            "t_mean_3": 2,
            "t_std_3": 1,
            "t_min_3": 1,
            "t_max_3": 3,
            "t_mean_25s": 2,
            "t_std_25s": 1,
            "t_min_25s": 1,
            "t_max_25s": 3,
            "t_ewma_10s": 2,
            "t_delta": 2,
            "t_rate": 0.2,
            "t_lag_1": 1,
        },
    ),
    (
        20,
        2.0,
        {
            "t": 2,
            "t_mean_3": 2,
            "t_std_3": math.sqrt(2 / 3),
            "t_min_3": 1,
            "t_max_3": 3,
            "t_mean_25s": 2,
            "t_std_25s": math.sqrt(2 / 3),
            "t_min_25s": 1,
            "t_max_25s": 3,
            "t_ewma_10s": 2,
            "t_delta": -1,
            "t_rate": -0.1,
            "t_lag_1": 3,
            "t_lag_2": 1,
        },
    ),
    # a 20 s gap: the time window drops what is older than 25 s, the EWMA decays two half-lives
    (
        40,
        6.0,
        {
            "t": 6,
            "t_mean_3": 11 / 3,
            "t_std_3": math.sqrt(78 / 27),
            "t_min_3": 2,
            "t_max_3": 6,
            "t_mean_25s": 4,
            "t_std_25s": 2,
            "t_min_25s": 2,
            "t_max_25s": 6,
            "t_ewma_10s": 5,
            "t_delta": 4,
            "t_rate": 0.2,
            "t_lag_1": 2,
            "t_lag_2": 3,
        },
    ),
    # out of order (10 s before the newest): its time window ends at its own time, the EWMA does
    # not move (no time passed), and there is no rate backwards in time
    (
        30,
        0.0,
        {
            "t": 0,
            "t_mean_3": 8 / 3,
            "t_std_3": math.sqrt(((2 - 8 / 3) ** 2 + (6 - 8 / 3) ** 2 + (8 / 3) ** 2) / 3),
            "t_min_3": 0,
            "t_max_3": 6,
            "t_mean_25s": 1,
            "t_std_25s": 1,
            "t_min_25s": 0,
            "t_max_25s": 2,
            "t_ewma_10s": 5,
            "t_delta": -6,
            "t_lag_1": 6,
            "t_lag_2": 2,
        },
    ),
]


def test_every_per_sensor_feature_on_a_hand_computed_series() -> None:
    state = DeviceState()
    for seconds, value, expected in SERIES:
        features = featurize(state, {"t": value}, T0 + timedelta(seconds=seconds), SPEC)
        assert set(features) == set(expected), f"at {seconds}s"
        for name, want in expected.items():
            assert features[name] == pytest.approx(want, abs=1e-12), f"{name} at {seconds}s"


def test_the_state_survives_a_json_round_trip_mid_series() -> None:
    straight, restored = DeviceState(), DeviceState()
    for i, (seconds, value, _) in enumerate(SERIES):
        ts = T0 + timedelta(seconds=seconds)
        expected = featurize(straight, {"t": value}, ts, SPEC)
        restored = DeviceState.from_json(json.loads(json.dumps(restored.to_json())))
        assert featurize(restored, {"t": value}, ts, SPEC) == expected, f"event {i}"


def test_pairs_and_cyclic_time() -> None:
    spec = FeatureSpec(
        windows=(),
        time_windows=(),
        ewma_half_lives=(),
        lags=(),
        delta=False,
        rate=False,
        pairs=(SensorPair(a="a", b="b", op="diff"), SensorPair(a="a", b="b", op="ratio")),
    )
    features = featurize(DeviceState(), {"a": 6.0, "b": 4.0}, T0, spec)
    assert features["a_minus_b"] == 2.0 and features["a_over_b"] == 1.5
    assert features["tod_sin"] == pytest.approx(1.0) and features["tod_cos"] == pytest.approx(0.0, abs=1e-12)
    assert features["dow_sin"] == pytest.approx(math.sin(2 * math.pi * 0.25 / 7))
    assert features["dow_cos"] == pytest.approx(math.cos(2 * math.pi * 0.25 / 7))
    no_ratio = featurize(DeviceState(), {"a": 6.0, "b": 0.0}, T0, spec)
    assert "a_over_b" not in no_ratio and no_ratio["a_minus_b"] == 6.0
    missing = featurize(DeviceState(), {"a": 6.0}, T0, spec)
    assert "a_minus_b" not in missing


def test_state_is_bounded() -> None:
    spec = FeatureSpec(windows=(5,), time_windows=(1e9,), lags=(7,), max_time_window_points=50)
    state = DeviceState()
    for i in range(500):
        featurize(state, {"t": float(i)}, T0 + timedelta(seconds=i), spec)
    assert len(state.windows["t"]) == 8  # the longest of window 5 and lag 7 + 1
    assert len(state.timed["t"]) == 50
    assert len(json.dumps(state.to_json())) < 10_000


def test_the_schema_hash_changes_with_the_spec_only() -> None:
    assert (
        FeatureSpec().schema_hash()
        == FeatureSpec.model_validate_json(FeatureSpec().model_dump_json()).schema_hash()
    )
    assert FeatureSpec(lags=(1, 2)).schema_hash() != FeatureSpec().schema_hash()


def test_time_features_do_not_depend_on_the_zone_the_device_wrote() -> None:
    spec = FeatureSpec()
    utc = featurize(DeviceState(), {"t": 1.0}, datetime(2026, 1, 5, 10, tzinfo=UTC), spec)
    plus2 = datetime.fromisoformat("2026-01-05T12:00:00+02:00")
    assert featurize(DeviceState(), {"t": 1.0}, plus2, spec) == utc


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
    )
)
def test_time_features_from_epoch_seconds_equal_the_calendar_s(moment: datetime) -> None:
    # featurize derives time of day and weekday from epoch seconds (cheaper than converting the
    # datetime); the calendar in UTC, to the second, is the definition.
    spec = FeatureSpec(windows=(), time_windows=(), ewma_half_lives=(), pairs=())
    features = featurize(DeviceState(), {"t": 1.0}, moment, spec)
    utc = moment.astimezone(UTC)
    hour = utc.hour + utc.minute / 60 + utc.second / 3600
    day = utc.weekday() + hour / 24
    assert features["tod_sin"] == math.sin(2 * math.pi * hour / 24)
    assert features["tod_cos"] == math.cos(2 * math.pi * hour / 24)
    assert features["dow_sin"] == math.sin(2 * math.pi * day / 7)
    assert features["dow_cos"] == math.cos(2 * math.pi * day / 7)


def test_a_reading_as_late_as_the_longest_time_window_still_has_its_own_window() -> None:
    # Allowed lateness may equal (or exceed) the longest window: such a reading is evicted from
    # the window state at once, yet its own window is itself, never an empty one.
    spec = FeatureSpec(
        windows=(),
        time_windows=(25.0,),
        ewma_half_lives=(),
        pairs=(),
        lags=(),
        time_of_day=False,
        day_of_week=False,
        delta=False,
        rate=False,
    )
    state = DeviceState()
    featurize(state, {"t": 5.0}, T0 + timedelta(seconds=100), spec)
    late = featurize(state, {"t": 1.0}, T0 + timedelta(seconds=75), spec)
    assert late == {"t": 1.0, "t_mean_25s": 1.0, "t_std_25s": 0.0, "t_min_25s": 1.0, "t_max_25s": 1.0}
    assert state.timed["t"].points() == [[(T0 + timedelta(seconds=100)).timestamp(), 5.0]]
