"""decode_event: raw bytes to a SensorEvent, or a Rejection with a stable reason code. Never raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.streams.cleaning import EMPTY, INVALID, NOT_JSON, TOO_LARGE, Rejection, decode_event
from driftline.streams.schema import MAX_NAME_LENGTH, MAX_READINGS, SensorEvent

LIMIT = 1_000_000


def event(**overrides: Any) -> dict[str, Any]:
    """A valid event as a dict; ``overrides`` replace fields, a value of ``...`` removes one."""
    values: dict[str, Any] = {
        "event_id": "d1-000042",
        "device_id": "d1",
        "ts": "2026-11-22T10:00:00Z",
        "readings": {"temperature": 21.5, "humidity": None},
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not ...}


def raw(**overrides: Any) -> bytes:
    return json.dumps(event(**overrides)).encode()


def decoded(data: bytes) -> SensorEvent:
    result = decode_event(data, LIMIT)
    assert isinstance(result, SensorEvent), result
    return result


def rejected(data: bytes | None, max_bytes: int = LIMIT) -> Rejection:
    result = decode_event(data, max_bytes)
    assert isinstance(result, Rejection), result
    return result


# --- valid events ------------------------------------------------------------------------------


def test_a_full_event_is_decoded_field_by_field() -> None:
    e = decoded(raw(target=3.2, metadata={"site": "north"}))
    assert e.schema_version == 1
    assert e.event_id == "d1-000042"
    assert e.device_id == "d1"
    assert e.ts == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert e.readings == {"temperature": 21.5, "humidity": None}
    assert e.target == 3.2
    assert e.metadata == {"site": "north"}


def test_an_iso_time_keeps_its_zone_and_its_instant() -> None:
    e = decoded(raw(ts="2026-11-22T12:00:00+02:00"))
    assert e.ts.utcoffset() == timedelta(hours=2)
    assert e.ts == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert e.ts.timestamp() == 1795341600.0


def test_integer_epoch_seconds_are_seconds_not_milliseconds() -> None:
    # pydantic alone would read 1795341600000 as milliseconds; devices send seconds
    assert decoded(raw(ts=1795341600)).ts == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert decoded(raw(ts=0)).ts == datetime(1970, 1, 1, tzinfo=UTC)
    assert decoded(raw(ts=20_000_000_000)).ts == datetime(2603, 10, 11, 11, 33, 20, tzinfo=UTC)


def test_float_epoch_seconds_keep_their_fraction() -> None:
    e = decoded(raw(ts=1795341600.25))
    assert e.ts == datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)
    assert e.ts.utcoffset() == timedelta(0)


def test_target_and_metadata_are_optional() -> None:
    e = decoded(raw())
    assert e.target is None
    assert e.metadata == {}


def test_integer_readings_become_floats() -> None:
    e = decoded(raw(readings={"t": 3}, target=7))
    assert e.readings == {"t": 3.0} and isinstance(e.readings["t"], float)
    assert e.target == 7.0 and isinstance(e.target, float)


def test_exactly_the_maximum_number_of_readings_is_accepted() -> None:
    readings = {f"s{i}": float(i) for i in range(MAX_READINGS)}
    assert len(decoded(raw(readings=readings)).readings) == MAX_READINGS


def test_a_sensor_name_of_the_maximum_length_is_accepted() -> None:
    name = "a" * MAX_NAME_LENGTH
    assert decoded(raw(readings={name: 1.0})).readings == {name: 1.0}


def test_a_message_of_exactly_max_bytes_is_not_too_large() -> None:
    data = raw()
    assert isinstance(decode_event(data, len(data)), SensorEvent)


# --- rejections: size and encoding --------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", None])
def test_an_empty_message_is_rejected_as_empty(data: bytes | None) -> None:
    assert rejected(data) == Rejection(EMPTY, "empty message")


def test_a_message_over_the_limit_is_rejected_unread() -> None:
    data = raw()
    assert rejected(data, len(data) - 1) == Rejection(
        TOO_LARGE, f"message is {len(data)} bytes, the limit is {len(data) - 1}"
    )


def test_size_is_checked_before_parsing() -> None:
    assert rejected(b"\xff" * 2000, 1000).reason == TOO_LARGE


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON: expected ident at line 1 column 2"),
        (b"\x00\x01\x02\xff", "not JSON: expected value at line 1 column 1"),
        (b"\xff\xfe{}", "not JSON: expected value at line 1 column 1"),
        (
            b'{"event_id": "\xff", "device_id": "d", "ts": 0, "readings": {}}',
            "not JSON: invalid unicode code point at line 1 column 15",
        ),
        (b'{"event_id": "e"', "not JSON: EOF while parsing an object at line 1 column 16"),
        (b"   ", "not JSON: EOF while parsing a value at line 1 column 3"),
    ],
    ids=["text", "garbage-bytes", "invalid-utf8-lead", "invalid-utf8-in-string", "cut-short", "blank"],
)
def test_bytes_that_are_not_json_are_rejected_as_not_json(data: bytes, message: str) -> None:
    assert rejected(data) == Rejection(NOT_JSON, message)


@pytest.mark.parametrize(
    "data",
    [b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000],
    ids=["arrays", "objects"],
)
def test_json_nested_ten_thousand_levels_deep_is_rejected_without_recursing(data: bytes) -> None:
    result = rejected(data)
    assert result.reason == NOT_JSON
    assert result.message.startswith("not JSON: recursion limit exceeded at line 1 column ")


# --- rejections: valid JSON, invalid event -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"[]", b"[" + raw() + b"]", b"12", b'"event"', b"null", b"true"],
    ids=["empty-array", "array-of-event", "number", "string", "null", "bool"],
)
def test_json_that_is_not_an_object_is_invalid(data: bytes) -> None:
    assert rejected(data) == Rejection(INVALID, "event: Input should be an object")


@pytest.mark.parametrize("field", ["event_id", "device_id", "ts", "readings"])
def test_each_required_field_missing_is_named(field: str) -> None:
    assert rejected(raw(**{field: ...})) == Rejection(INVALID, f"{field}: Field required")


def test_several_problems_are_reported_together() -> None:
    assert rejected(b'{"event_id": "e"}') == Rejection(
        INVALID, "device_id: Field required; ts: Field required; readings: Field required"
    )


def test_more_than_five_problems_are_summarised() -> None:
    data = json.dumps(
        {"event_id": 1, "device_id": 2, "ts": "x", "readings": {f"s{i}": "x" for i in range(6)}}
    ).encode()
    result = rejected(data)
    assert result.reason == INVALID
    assert result.message.endswith(" (+4 more)")
    assert result.message.count("; ") == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"event_id": 5}, "event_id: Input should be a valid string"),
        ({"device_id": ""}, "device_id: String should have at least 1 character"),
        ({"device_id": "d 1"}, "device_id: String should match pattern '^[A-Za-z0-9_.:@/-]+$'"),
        ({"readings": []}, "readings: Input should be an object"),
        (
            {"readings": {"t": "warm"}},
            "readings.t: Input should be a valid number, unable to parse string as a number",
        ),
        ({"readings": {"t": [1]}}, "readings.t: Input should be a valid number"),
        ({"target": [1]}, "target: Input should be a number, a boolean or a class name"),
        ({"schema_version": 2}, "schema_version: Input should be 1"),
        ({"metadata": {"site": 1}}, "metadata.site: Input should be a valid string"),
    ],
    ids=[
        "int-id",
        "empty-device",
        "space-in-device",
        "readings-list",
        "reading-text",
        "reading-list",
        "target-list",
        "schema-version",
        "metadata-int",
    ],
)
def test_fields_of_the_wrong_type_are_invalid(overrides: dict[str, Any], message: str) -> None:
    assert rejected(raw(**overrides)) == Rejection(INVALID, message)


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity", "inf", "nan"])
def test_non_finite_readings_given_as_strings_are_invalid(word: str) -> None:
    assert rejected(raw(readings={"t": word})) == Rejection(
        INVALID, "readings.t: Input should be a finite number"
    )


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_readings_given_as_bare_json_tokens_are_invalid(token: bytes) -> None:
    data = b'{"event_id": "e", "device_id": "d", "ts": 0, "readings": {"t": ' + token + b"}}"
    assert rejected(data) == Rejection(INVALID, "readings.t: Input should be a finite number")


@pytest.mark.parametrize("token", [b"NaN", b'"NaN"', b"Infinity", b'"-Infinity"'])
def test_a_non_finite_target_is_invalid(token: bytes) -> None:
    data = b'{"event_id": "e", "device_id": "d", "ts": 0, "readings": {}, "target": ' + token + b"}"
    assert rejected(data) == Rejection(INVALID, "target: Input should be a finite number")


@pytest.mark.parametrize(("token", "shown"), [(b"NaN", "nan"), (b"Infinity", "inf"), (b"-Infinity", "-inf")])
def test_a_non_finite_epoch_time_is_invalid(token: bytes, shown: str) -> None:
    data = b'{"event_id": "e", "device_id": "d", "ts": ' + token + b', "readings": {}}'
    assert rejected(data) == Rejection(
        INVALID, f"ts: Value error, ts {shown} is not a representable epoch time"
    )


def test_a_time_without_a_zone_is_invalid() -> None:
    assert rejected(raw(ts="2026-11-22T10:00:00")) == Rejection(
        INVALID, "ts: Input should have timezone info"
    )


@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_time_is_invalid_not_epoch_one_or_zero(value: bool) -> None:
    assert rejected(raw(ts=value)) == Rejection(INVALID, "ts: Value error, ts must be a time, not a boolean")


@pytest.mark.parametrize(
    ("value", "shown"),
    [(10**20, "100000000000000000000"), (1e20, "1e+20"), (1e308, "1e+308"), (-1e15, "-1000000000000000.0")],
)
def test_an_epoch_time_beyond_the_calendar_is_invalid(value: float, shown: str) -> None:
    assert rejected(raw(ts=value)) == Rejection(
        INVALID, f"ts: Value error, ts {shown} is not a representable epoch time"
    )


def test_a_time_that_is_not_a_time_is_invalid() -> None:
    assert rejected(raw(ts="yesterday")).reason == INVALID
    assert rejected(raw(ts=None)).reason == INVALID


def test_more_than_the_maximum_number_of_readings_is_invalid() -> None:
    readings = {f"s{i}": 1.0 for i in range(MAX_READINGS + 1)}
    assert rejected(raw(readings=readings)) == Rejection(
        INVALID, "readings: Dictionary should have at most 64 items after validation, not more"
    )


def test_an_unknown_field_is_invalid() -> None:
    assert rejected(raw(colour="red")) == Rejection(INVALID, "colour: Extra inputs are not permitted")


def test_a_sensor_name_longer_than_allowed_is_invalid() -> None:
    name = "a" * (MAX_NAME_LENGTH + 1)
    assert rejected(raw(readings={name: 1.0})) == Rejection(
        INVALID, f"readings.{name}.[key]: String should have at most 64 characters"
    )


def test_a_sensor_name_with_a_space_is_invalid() -> None:
    result = rejected(raw(readings={"air temp": 1.0}))
    assert result.reason == INVALID
    assert result.message.startswith("readings.air temp.[key]: String should match pattern")


# --- never raises --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)

event_shaped = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=12) | json_values,
        "device_id": st.sampled_from(["d1", "d2"]) | json_values,
        "ts": st.integers()
        | st.floats()
        | st.booleans()
        | st.text(max_size=30)
        | json_values
        | st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat),
        "readings": st.dictionaries(st.text(max_size=70), json_values, max_size=70) | json_values,
    },
    optional={
        "target": json_values,
        "metadata": json_values,
        "schema_version": json_values,
        "extra": json_values,
    },
)


def to_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity as bare tokens


@given(st.binary(max_size=600))
def test_decode_event_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert isinstance(decode_event(data, 500), SensorEvent | Rejection)


@given(json_values)
def test_decode_event_never_raises_on_arbitrary_json(value: Any) -> None:
    result = decode_event(to_bytes(value), LIMIT)
    assert isinstance(result, SensorEvent | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in {INVALID, NOT_JSON}


@given(event_shaped)
def test_decode_event_never_raises_on_event_shaped_json(value: dict[str, Any]) -> None:
    result = decode_event(to_bytes(value), LIMIT)
    assert isinstance(result, SensorEvent | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in {INVALID, NOT_JSON, EMPTY, TOO_LARGE}
