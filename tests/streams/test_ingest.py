"""IngestStage: every message accounted for, replays ignored, one feature record per model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.core.records import (
    MAX_RECORDS_PER_MESSAGE,
    MAX_VALUES_PER_MESSAGE,
    FeatureRecord,
    LabelRecord,
    chunks,
    decode,
    encode,
)
from driftline.models.specs import ModelSpec
from driftline.streams.catalog import SensorSpec
from driftline.streams.cleaning import Rejection
from driftline.streams.features import DeviceState, FeatureSpec, RecentIds
from driftline.streams.ingest import (
    COUNTERS,
    READINGS_REFUSED,
    TOO_MANY_SENSORS,
    UNKNOWN_SENSOR,
    Duplicate,
    IngestStage,
    NeedDevices,
    Outcome,
)
from driftline.streams.schema import LABEL_TYPE

NOW_MS = 1_800_000_000_000  # the broker timestamp every message arrives with
NOW = NOW_MS // 1000
SMALL = FeatureSpec(
    windows=(2,),
    time_windows=(),
    stats=("mean",),
    ewma_half_lives=(),
    rate=False,
    lags=(),
    pairs=(),
    time_of_day=False,
    day_of_week=False,
)


def make_stage(**overrides: Any) -> IngestStage:
    values: dict[str, Any] = {
        "models": ("m",),
        "target": "power",
        "max_message_bytes": 10_000,
        "features": SMALL,
    }
    values.update(overrides)
    return IngestStage(**values)


def message(event_id: str = "e1", device_id: str = "d1", ts: float = NOW, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "event_id": event_id,
        "device_id": device_id,
        "ts": ts,
        "readings": {"temperature": 20.0},
    }
    body.update(fields)
    return json.dumps(body).encode()


def records(outcomes: list[Outcome]) -> list[FeatureRecord]:
    assert all(isinstance(o, FeatureRecord) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, FeatureRecord)]


def identity_holds(stage: IngestStage) -> bool:
    t = stage.totals()
    return t["received"] == t["accepted"] + t["deduplicated"] + t["rejected"] + t["late"]


# --- accounting --------------------------------------------------------------------------------


def test_every_message_of_a_mixed_sequence_is_counted_once() -> None:
    stage = make_stage()
    batch = json.dumps([json.loads(message("b1")), {"oops": 1}, json.loads(message("b2"))]).encode()
    sequence = [
        message("e1"),  # accepted
        message("e1"),  # duplicate
        b"\xff not json",  # rejected: not_json
        b"",  # rejected: empty
        message("e2", readings={"temperature": "hot"}),  # rejected: invalid
        message("e3", readings={"vibration": 99.0}),  # rejected: out_of_range
        message("e4", ts=NOW + 3600),  # rejected: future
        message("e5", ts=NOW - 3600),  # late (older than the watermark allows)
        message("e6", device_id="d2"),  # accepted
        batch,  # two accepted, one rejected
        b"x" * 20_000,  # rejected: too_large
    ]
    for offset, raw in enumerate(sequence):
        stage.handle(raw, partition=0, offset=offset, timestamp_ms=NOW_MS)
    totals = stage.totals()
    assert {k: v for k, v in totals.items() if v} == {
        "received": 13,
        "accepted": 4,
        "deduplicated": 1,
        "rejected": 7,
        "late": 1,
        "rejected:not_json": 1,
        "rejected:empty": 1,
        "rejected:invalid": 2,
        "rejected:out_of_range": 1,
        "rejected:future": 1,
        "rejected:too_large": 1,
    }
    assert identity_holds(stage)


def test_totals_name_every_standard_counter_even_at_zero() -> None:
    assert make_stage().totals() == dict.fromkeys(COUNTERS, 0)


def test_the_device_keeps_its_own_counts() -> None:
    stage = make_stage()
    stage.handle(message("e1"), 0, 0, NOW_MS)
    stage.handle(message("e1"), 0, 1, NOW_MS)
    stage.handle(message("e2", readings={"vibration": 99.0}), 0, 2, NOW_MS)
    stage.handle(message("e3", ts=NOW - 3600), 0, 3, NOW_MS)
    assert dict(stage.devices["d1"].counts) == {
        "accepted": 1,
        "imputed": 0,
        "clipped": 0,
        "deduplicated": 1,
        "rejected": 1,
        "rejected:out_of_range": 1,
        "late": 1,
    }


def test_clipped_and_imputed_readings_are_counted() -> None:
    stage = make_stage()
    stage.handle(message("e1", readings={"temperature": 20.0, "humidity": 50.0}), 0, 0, NOW_MS)
    (record,) = stage.handle(message("e2", ts=NOW + 1, readings={"temperature": 500.0}), 0, 1, NOW_MS)
    assert isinstance(record, FeatureRecord)
    assert (record.imputed, record.clipped) == (("humidity",), ("temperature",))
    assert (stage.totals()["imputed"], stage.totals()["clipped"]) == (1, 1)


# --- offsets -----------------------------------------------------------------------------------


def test_a_replayed_offset_is_ignored_and_not_counted() -> None:
    stage = make_stage()
    assert len(stage.handle(message("e1"), 0, 5, NOW_MS)) == 1
    before = stage.totals()
    assert stage.handle(message("e2"), 0, 5, NOW_MS) == []  # the same offset
    assert stage.handle(message("e3"), 0, 2, NOW_MS) == []  # an earlier one
    assert stage.totals() == before
    assert stage.offsets == {0: 5}
    ids = stage.devices["d1"].recent_ids
    assert ("e1" in ids, "e2" in ids, "e3" in ids, len(ids)) == (True, False, False, 1)


def test_offsets_are_tracked_per_partition() -> None:
    stage = make_stage()
    stage.handle(message("e1"), partition=0, offset=10, timestamp_ms=NOW_MS)
    outcomes = stage.handle(message("e2"), partition=1, offset=0, timestamp_ms=NOW_MS)
    assert [r.event_id for r in records(outcomes)] == ["e2"]
    assert stage.offsets == {0: 10, 1: 0}
    assert stage.stats[0]["received"] == 1 and stage.stats[1]["received"] == 1
    assert stage.handle(message("e3"), partition=1, offset=0, timestamp_ms=NOW_MS) == []
    assert len(stage.handle(message("e3"), partition=0, offset=11, timestamp_ms=NOW_MS)) == 1


def test_a_rejected_message_still_advances_the_offset() -> None:
    stage = make_stage()
    (refused,) = stage.handle(b"junk", 0, 0, NOW_MS)
    assert isinstance(refused, Rejection) and refused.reason == "not_json"
    assert stage.handle(b"junk", 0, 0, NOW_MS) == []
    assert stage.totals()["received"] == 1


# --- duplicates --------------------------------------------------------------------------------


def test_a_repeated_event_id_is_a_duplicate_whatever_its_content() -> None:
    stage = make_stage()
    stage.handle(message("e1"), 0, 0, NOW_MS)
    outcomes = stage.handle(message("e1", ts=NOW + 1, readings={"temperature": 30.0}), 0, 1, NOW_MS)
    assert outcomes == [Duplicate("e1")]
    assert stage.devices["d1"].last == {"temperature": 20.0}


def test_event_ids_are_deduplicated_per_device() -> None:
    stage = make_stage()
    stage.handle(message("e1", device_id="d1"), 0, 0, NOW_MS)
    outcomes = stage.handle(message("e1", device_id="d2"), 0, 1, NOW_MS)
    assert [(r.device_id, r.event_id) for r in records(outcomes)] == [("d2", "e1")]


def test_a_rejected_event_can_be_sent_again_and_accepted() -> None:
    stage = make_stage()
    refused = stage.handle(message("e1", readings={"vibration": 99.0}), 0, 0, NOW_MS)
    assert isinstance(refused[0], Rejection)
    assert len(records(stage.handle(message("e1"), 0, 1, NOW_MS))) == 1


def test_duplicates_inside_one_batch_are_caught() -> None:
    stage = make_stage()
    batch = json.dumps([json.loads(message("e1")), json.loads(message("e1"))]).encode()
    outcomes = stage.handle(batch, 0, 0, NOW_MS)
    assert isinstance(outcomes[0], FeatureRecord)
    assert outcomes[1] == Duplicate("e1")


# --- records: target, models, positions ----------------------------------------------------------


def test_the_target_comes_from_the_target_field() -> None:
    (record,) = records(make_stage().handle(message(target=3.5), 0, 0, NOW_MS))
    assert record.target == 3.5
    assert record.features == {"temperature": 20.0, "temperature_mean_2": 20.0}


def test_without_a_target_field_the_target_reading_is_the_target_and_not_a_feature() -> None:
    raw = message(readings={"temperature": 20.0, "power": 7.25})
    (record,) = records(make_stage().handle(raw, 0, 0, NOW_MS))
    assert record.target == 7.25
    assert "power" not in record.features
    assert not any(name.startswith("power") for name in record.features)


def test_the_target_field_wins_over_the_target_reading() -> None:
    raw = message(readings={"temperature": 20.0, "power": 7.25}, target=1.0)
    (record,) = records(make_stage().handle(raw, 0, 0, NOW_MS))
    assert record.target == 1.0
    assert "power" not in record.features


def test_a_models_own_target_takes_the_events_target_field_when_no_reading_has_its_name() -> None:
    # A user's model names its target "y"; a replay put the "y" column in the event's target.
    stage = make_stage(models=(ModelSpec(name="m", target="y"),))
    (record,) = records(stage.handle(message(target=3.5), 0, 0, NOW_MS))
    assert record.target == 3.5


def test_a_models_own_target_reading_is_its_label_and_nobodys_feature() -> None:
    stage = make_stage(models=(ModelSpec(name="y-model", target="y"), ModelSpec(name="other")))
    raw = message(readings={"temperature": 20.0, "y": 4.0}, target=1.0)
    by_model = {r.model: r for r in records(stage.handle(raw, 0, 0, NOW_MS))}
    assert by_model["y-model"].target == 4.0  # its reading, over the event's field
    assert by_model["other"].target == 1.0  # the deployment's target: the event's field
    for record in by_model.values():  # a label's rolling mean would hold the label itself
        assert not any(name == "y" or name.startswith("y_") for name in record.features)


def test_a_forecast_target_stays_a_feature() -> None:
    stage = make_stage(models=(ModelSpec(name="next", task="forecast", target="temperature"),))
    (record,) = records(stage.handle(message(), 0, 0, NOW_MS))
    assert record.target == 20.0 and record.features["temperature"] == 20.0


def test_an_event_without_any_target_has_none() -> None:
    (record,) = records(make_stage().handle(message(), 0, 0, NOW_MS))
    assert record.target is None


def test_one_feature_record_per_configured_model() -> None:
    stage = make_stage(models=("fast", "slow", "tree"))
    outcomes = records(stage.handle(message(target=2.0), partition=3, offset=9, timestamp_ms=NOW_MS))
    assert [r.model for r in outcomes] == ["fast", "slow", "tree"]
    assert all(r.features == outcomes[0].features and r.target == 2.0 for r in outcomes)
    assert stage.totals()["accepted"] == 1


def test_a_record_carries_its_source_position_and_feature_schema() -> None:
    stage = make_stage()
    batch = json.dumps([json.loads(message("a")), json.loads(message("b"))]).encode()
    outcomes = records(stage.handle(batch, partition=2, offset=40, timestamp_ms=NOW_MS))
    positions = [(r.source_partition, r.source_offset, r.source_index) for r in outcomes]
    assert positions == [(2, 40, 0), (2, 40, 1)]
    assert outcomes[0].ts == float(NOW)
    assert outcomes[0].schema == SMALL.schema_hash() == stage.schema


# --- dirty devices ------------------------------------------------------------------------------


def test_dirty_devices_stay_dirty_until_checkpointed() -> None:
    stage = make_stage()
    stage.handle(message("e1", device_id="d1"), 0, 0, NOW_MS)
    stage.handle(message("e2", device_id="d2"), 0, 1, NOW_MS)
    dirty = stage.dirty_states()
    assert set(dirty) == {"d1", "d2"}
    assert dirty["d1"] is stage.devices["d1"]
    assert set(stage.dirty_states()) == {"d1", "d2"}, "a checkpoint that failed loses nothing"
    stage.checkpointed(dirty)
    assert stage.dirty_states() == {}
    stage.handle(message("e3", device_id="d2", ts=NOW + 1), 0, 2, NOW_MS)
    assert set(stage.dirty_states()) == {"d2"}


def test_a_message_that_never_names_a_device_dirties_nothing() -> None:
    stage = make_stage()
    stage.handle(b"junk", 0, 0, NOW_MS)
    assert stage.dirty_states() == {}


# --- bounded state ------------------------------------------------------------------------------


def test_a_store_backed_stage_asks_for_unknown_devices_before_handling_anything() -> None:
    stage = make_stage(store_backed=True, max_devices_in_memory=2)
    raw = message("e1", device_id="d1")
    assert stage.handle(raw, 0, 0, NOW_MS) == [NeedDevices(frozenset({"d1"}))]
    assert stage.offsets == {} and stage.totals()["received"] == 0, "nothing handled yet"
    stored = DeviceState(recent_ids=RecentIds(["e1"]))  # the store already saw e1
    stage.adopt(["d1"], {"d1": stored})
    assert stage.handle(raw, 0, 0, NOW_MS) == [Duplicate("e1")]


def test_only_clean_least_recently_used_states_are_evicted() -> None:
    stage = make_stage(store_backed=True, max_devices_in_memory=2)
    stage.adopt(["d1", "d2", "d3"], {})
    for offset, device in enumerate(["d1", "d2", "d3", "d1"]):
        stage.handle(message(f"e{offset}", device_id=device, ts=NOW + offset), 0, offset, NOW_MS)
    assert stage.evict() == 0, "all dirty: none may go before it is checkpointed"
    stage.checkpointed(stage.dirty_states())
    assert stage.evict() == 1
    assert list(stage.devices) == ["d3", "d1"], "d2 was used least recently"


def test_a_device_has_a_bounded_number_of_sensors() -> None:
    stage = make_stage(max_sensors_per_device=3)
    first = stage.handle(message("e1", readings={"a": 1.0, "b": 2.0}), 0, 0, NOW_MS)
    assert not [o for o in first if isinstance(o, Rejection)]
    flood = {f"s{i}": float(i) for i in range(50)} | {"a": 1.5}
    outcomes = stage.handle(message("e2", readings=flood, ts=NOW + 1), 0, 1, NOW_MS)
    record = next(o for o in outcomes if isinstance(o, FeatureRecord))
    refused = [o for o in outcomes if isinstance(o, Rejection)]
    assert set(stage.devices["d1"].last) == {"a", "b", "s0"}
    assert len(refused) == 49 and {r.reason for r in refused} == {TOO_MANY_SENSORS}
    assert refused[0].message.startswith("sensor 's1' refused: the device already has 3 sensors")
    assert not any(name.startswith("s1") for name in record.features)
    assert stage.totals()[READINGS_REFUSED] == 49 and stage.totals()["accepted"] == 2


def test_a_strict_catalog_learns_only_catalogued_sensors() -> None:
    stage = make_stage(strict_catalog=True, catalog={"a": SensorSpec(min=0, max=10)})
    outcomes = stage.handle(message("e1", readings={"a": 1.0, "rogue": 2.0}), 0, 0, NOW_MS)
    record = next(o for o in outcomes if isinstance(o, FeatureRecord))
    (refused,) = [o for o in outcomes if isinstance(o, Rejection)]
    assert refused.reason == UNKNOWN_SENSOR and "'rogue'" in refused.message
    assert not any(name.startswith("rogue") for name in record.features)


# --- FeatureRecord serialisation -----------------------------------------------------------------


def test_feature_record_round_trips_through_a_features_message() -> None:
    record = FeatureRecord(
        "m",
        "d1",
        "e1",
        1.8e9,
        {"t": 1.5, "t_delta": -0.25},
        3.0,
        source_partition=2,
        source_offset=41,
        source_index=3,
        imputed=("h",),
        clipped=("t",),
        schema="abc",
    )
    assert decode(encode("m", [record])) == [record]


def test_feature_records_keep_class_labels_and_missing_targets() -> None:
    batch = [
        FeatureRecord(
            "m", "d1", f"e{i}", 0.0, {}, target, source_partition=0, source_offset=9, source_index=i
        )
        for i, target in enumerate([None, True, "open", 2.5])
    ]
    assert decode(encode("m", batch)) == batch


def test_labels_round_trip_through_a_features_message() -> None:
    label = LabelRecord("m", "e1", False, source_partition=1, source_offset=70)
    assert decode(encode("m", [label])) == [label]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"model": "m"}',
        b'{"model": "m", "src": ["x", 0, 0]}',
        b'{"model": "m", "src": ["events", 0, 0], "records": [{}]}',
    ],
)
def test_a_message_that_is_not_a_features_message_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a features message"):
        decode(raw)


def test_a_features_message_with_values_missing_or_left_over_is_refused() -> None:
    raw = encode("m", [FeatureRecord("m", "d", "e", 0.0, {"x": 1.0, "y": 2.0}, None, 0, 0)])
    for bad in (raw[:-8], raw + b"\0" * 8, raw[:-3]):
        with pytest.raises(ValueError, match="not a features message"):
            decode(bad)


def test_records_of_different_shapes_share_one_message_exactly() -> None:
    batch = [
        FeatureRecord("m", "d", f"e{i}", 0.0, x, 1.0, 0, 5, source_index=i)
        for i, x in enumerate([{"a": 0.1}, {"a": 1 / 3, "b": -2.5e-300}, {"a": 7.0}, {}])
    ]
    assert decode(encode("m", batch)) == batch


def test_records_of_many_source_messages_of_one_partition_share_one_message() -> None:
    # One features message per batch of source messages: each record keeps its own offset.
    batch = [
        FeatureRecord("m", "d", f"e{i}", float(i), {"a": float(i)}, 1.0, 4, 100 + i // 2, source_index=i % 2)
        for i in range(6)
    ]
    labels = [LabelRecord("m", f"e{i}", 1.0, source_partition=2, source_offset=7 + i) for i in range(3)]
    assert decode(encode("m", batch)) == batch
    assert decode(encode("m", labels)) == labels


def test_a_features_message_never_mixes_source_partitions() -> None:
    mixed = [
        FeatureRecord("m", "d", "e1", 0.0, {}, None, 0, 1),
        FeatureRecord("m", "d", "e2", 0.0, {}, None, 1, 1),
    ]
    with pytest.raises(ValueError, match="one source partition"):
        encode("m", mixed)


def test_chunks_bound_records_and_values_per_message_and_keep_the_order() -> None:
    wide = {f"f{k}": float(k) for k in range(MAX_VALUES_PER_MESSAGE // 3 + 1)}
    batch = [
        FeatureRecord("m", "d", f"e{i}", 0.0, wide if i < 4 else {"x": 1.0}, None, 0, i)
        for i in range(4 + MAX_RECORDS_PER_MESSAGE + 1)
    ]
    pieces = list(chunks(batch))
    assert [len(p) for p in pieces] == [2, MAX_RECORDS_PER_MESSAGE, 3]  # 2 wide; 2 wide + 998; 3
    assert [r for p in pieces for r in p] == batch
    assert all(sum(len(r.features) for r in p) <= MAX_VALUES_PER_MESSAGE for p in pieces)
    assert list(chunks([])) == []


def test_records_from_the_stage_round_trip_through_one_message_per_model() -> None:
    stage = make_stage(models=("a", "b"))
    events = [
        {
            "event_id": f"e{i}",
            "device_id": "d1",
            "ts": NOW - 10 + i,
            "readings": {"temperature": 20.0 + i},
            "target": 2.0,
        }
        for i in range(3)
    ]
    out = records(stage.handle(json.dumps(events).encode(), 0, 0, NOW_MS))
    for model in ("a", "b"):
        mine = [r for r in out if r.model == model]
        assert [r.source_index for r in mine] == [0, 1, 2]
        assert decode(encode(model, mine)) == mine


# --- never raises, never loses count ------------------------------------------------------------

_event = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["e1", "e2", "e3"]),
        "device_id": st.sampled_from(["d1", "d2"]),
        "ts": st.integers(NOW - 1000, NOW + 100) | st.sampled_from([True, "2026-01-01T00:00:00", 1e30]),
        "readings": st.dictionaries(
            st.sampled_from(["temperature", "humidity", "vibration", "power"]),
            st.none() | st.floats(-100, 100) | st.just("NaN"),
            max_size=4,
        ),
    },
    optional={"target": st.none() | st.floats(allow_nan=False, allow_infinity=False)},
)
_messages = st.one_of(
    st.binary(max_size=100),
    _event.map(lambda e: json.dumps(e).encode()),
    st.lists(_event, max_size=3).map(lambda es: json.dumps(es).encode()),
)


@given(st.lists(st.tuples(st.integers(0, 2), _messages), max_size=25))
def test_arbitrary_messages_never_raise_and_keep_the_identity(
    sequence: list[tuple[int, bytes]],
) -> None:
    stage = make_stage(models=("a", "b"))
    next_offset = {0: 0, 1: 0, 2: 0}
    for partition, raw in sequence:
        before = stage.totals()["received"]
        outcomes = stage.handle(raw, partition, next_offset[partition], NOW_MS)
        next_offset[partition] += 1
        assert all(isinstance(o, FeatureRecord | Rejection | Duplicate) for o in outcomes)
        # each event received gives one rejection or duplicate, or one record per model (and a
        # label_type notice per model whose label does not fit: the event is still learned)
        per_event = sum(
            0.5 if isinstance(o, FeatureRecord) else 1
            for o in outcomes
            if not (isinstance(o, Rejection) and o.reason == LABEL_TYPE)
        )
        assert per_event == stage.totals()["received"] - before
        assert identity_holds(stage)
    totals = stage.totals()
    for partition, raw in sequence:  # a replay from the start changes nothing
        assert stage.handle(raw, partition, 0, NOW_MS) == []
    assert stage.totals() == totals
