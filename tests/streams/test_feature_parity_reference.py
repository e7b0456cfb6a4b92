"""The O(1) featurizer against the straightforward one it replaced (``reference_featurizer``):
the same features to 1e-9 on random streams with out-of-order and huge readings; a restored state
computes bit for bit what the uninterrupted one does; a state stored by driftline ef90b99 loads."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.streams.features import DeviceState, FeatureSpec, featurize
from tests.streams.reference_featurizer import ReferenceState, reference_featurize

T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
DATA = Path(__file__).parent / "data"

SPECS = [
    FeatureSpec(),
    FeatureSpec(windows=(1, 3, 7), time_windows=(5.0, 20.0), lags=(1, 4), max_time_window_points=9),
    FeatureSpec(windows=(4,), time_windows=(12.0,), stats=("max", "mean"), ewma_half_lives=(3.0, 30.0)),
]


def close(got: float, want: float, scale: float) -> bool:
    """Equal to 1e-9 of the values' own magnitude (a spread of readings near 1e6 is known to
    about 1e-10 of 1e6 by any float computation, the reference's included)."""
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale)


def assert_same(got: dict[str, float], want: dict[str, float], scale: float, where: str) -> None:
    assert set(got) == set(want), where
    for name, value in want.items():
        assert close(got[name], value, scale), f"{name} at {where}: {got[name]!r} != {value!r}"


# A stream: (seconds since the previous reading, possibly negative: out of order; reading).
normal = st.floats(-1e6, 1e6, allow_nan=False)
huge = st.sampled_from([1e200, -1e200, 1e308, -1e308, 1.7976931348623157e308])
step = st.one_of(st.floats(0.0, 6.0), st.floats(-8.0, 0.0))


@settings(max_examples=150, deadline=None)
@given(
    spec_index=st.integers(0, len(SPECS) - 1),
    stream=st.lists(st.tuples(step, normal, st.booleans()), min_size=1, max_size=120),
    huge_at=st.lists(st.tuples(st.integers(0, 119), huge), max_size=2),
    restore_every=st.integers(0, 40),
)
def test_equals_the_reference_and_survives_restores(
    spec_index: int,
    stream: list[tuple[float, float, bool]],
    huge_at: list[tuple[int, float]],
    restore_every: int,
) -> None:
    spec = SPECS[spec_index]
    huge_values = dict(huge_at)
    state, uninterrupted, reference = DeviceState(), DeviceState(), ReferenceState()
    clock = 0.0
    scale = 1.0
    for i, (dt, x, with_h) in enumerate(stream):
        clock += dt
        value = huge_values.get(i, x)
        readings = {"temperature": value, **({"humidity": x / 3} if with_h else {})}
        ts = T0 + timedelta(seconds=clock)
        if restore_every and i % restore_every == 0:
            state = DeviceState.from_json(json.loads(json.dumps(state.to_json(), allow_nan=False)))
        got = featurize(state, readings, ts, spec)
        straight = featurize(uninterrupted, readings, ts, spec)
        want = reference_featurize(reference, readings, ts, spec)
        assert got == straight, f"restored state differs at event {i}"
        if huge_values:
            # the overflow-safe paths: every value finite, the readings themselves exact
            assert all(math.isfinite(v) for v in got.values())
            assert got["temperature"] == value
            continue
        scale = max(scale, abs(x))
        assert_same(got, want, scale, f"event {i}")


def test_a_long_stream_stays_accurate() -> None:
    # 20,000 readings drifting far from where the sums were first taken: the sums are recomputed
    # as each window turns over, so the error does not grow with the stream.
    spec = FeatureSpec(windows=(10, 50), time_windows=(30.0, 300.0), max_time_window_points=1000)
    state, reference = DeviceState(), ReferenceState()
    for i in range(20_000):
        value = 1e4 + i * 0.37 + math.sin(i) * 3
        ts = T0 + timedelta(seconds=i * 0.5)
        got = featurize(state, {"t": value}, ts, spec)
        want = reference_featurize(reference, {"t": value}, ts, spec)
        if i % 97 == 0 or i > 19_990:
            assert_same(got, want, value, f"event {i}")


def test_a_state_stored_by_driftline_ef90b99_loads_and_featurizes_as_it_did() -> None:
    # Written by the featurizer this one replaced: time windows as [ts, value] lists, no sums.
    stored = json.loads((DATA / "device-state-ef90b99.json").read_text())
    spec = FeatureSpec.model_validate(stored["spec"])
    state = DeviceState.from_json(stored["state"])
    assert len(state.timed["temperature"]) == len(stored["state"]["timed"]["temperature"]) > 100
    assert list(state.windows["humidity"]) == stored["state"]["windows"]["humidity"]
    for event in stored["next"]:
        got = featurize(state, event["readings"], datetime.fromisoformat(event["ts"]), spec)
        assert_same(got, event["features"], 1e3, event["ts"])
    again = DeviceState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state and set(again.to_json()["running"]) == set(state.running)


def test_time_windows_store_two_columns_of_floats() -> None:
    state = DeviceState()
    for i in range(3):
        featurize(state, {"t": float(i)}, T0 + timedelta(seconds=i), FeatureSpec())
    stored = state.to_json()
    assert stored["timed"]["t"] == {"ts": [T0.timestamp() + i for i in range(3)], "values": [0.0, 1.0, 2.0]}
    assert stored["running"]["t"]["timed"]["300s"][4] == 0  # the window starts at the first reading


@pytest.mark.parametrize("spoiled", [None, [], [1.0, 2.0], ["x", 1, 2, 3], [0.0, 1.0, 2.0, -1.0]])
def test_unusable_stored_sums_are_recomputed(spoiled: object) -> None:
    spec = FeatureSpec(windows=(3,), time_windows=())
    state, reference = DeviceState(), ReferenceState()
    for i in range(5):
        featurize(state, {"t": float(i * i)}, T0 + timedelta(seconds=i), spec)
        reference_featurize(reference, {"t": float(i * i)}, T0 + timedelta(seconds=i), spec)
    stored = state.to_json()
    stored["running"]["t"]["count"]["3"] = spoiled
    restored = DeviceState.from_json(stored)
    ts = T0 + timedelta(seconds=9)
    assert_same(
        featurize(restored, {"t": 2.0}, ts, spec), reference_featurize(reference, {"t": 2.0}, ts, spec), 1, ""
    )
