"""MQTT mapping: a message becomes a valid event, or a rejection with its reason; event ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from driftline.mqtt_bridge import Forward, event_id_for, mqtt_to_event
from driftline.streams.cleaning import Rejection, dead_letter_record
from driftline.streams.schema import SensorEvent

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)
LIMIT = 1_000_000


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (
            "sensors/d1",
            b'{"readings": {"t": 1.0}}',
            {"readings": {"t": 1.0}, "device_id": "d1", "ts": AT.isoformat()},
        ),
        (
            "sensors/d1",
            b'{"t": 1.0, "h": null}',
            {"readings": {"t": 1.0, "h": None}, "device_id": "d1", "ts": AT.isoformat()},
        ),
        (
            "sensors/d1",
            b'{"t": 1.0, "ts": "2026-01-01T00:00:00Z", "target": 3}',
            {"readings": {"t": 1.0}, "device_id": "d1", "ts": "2026-01-01T00:00:00Z", "target": 3},
        ),
        ("sensors/d1/t", b"7", {"readings": {"t": 7}, "device_id": "d1", "ts": AT.isoformat()}),
        (
            "sensors/d1",
            b'{"event_id": "e", "device_id": "d1", "ts": "2026-01-01T00:00:00Z", "readings": {}}',
            {"event_id": "e", "device_id": "d1", "ts": "2026-01-01T00:00:00Z", "readings": {}},
        ),
        (
            "plant/line-3",
            b'{"device_id": "d1", "readings": {"t": 2}}',
            {"device_id": "d1", "readings": {"t": 2}, "ts": AT.isoformat()},
        ),
    ],
)
def test_mqtt_payloads_are_completed_into_valid_events(topic: str, payload: bytes, expected: dict) -> None:
    outcome = mqtt_to_event(topic, payload, AT, LIMIT)
    assert isinstance(outcome, Forward) and outcome.key == b"d1"
    event = json.loads(outcome.value)
    SensorEvent.model_validate(event)
    event_id = event.pop("event_id")
    assert event_id == expected.pop("event_id", event_id)
    assert event_id.startswith("d1-") or event_id == "e"
    assert event == expected
    assert mqtt_to_event(topic, payload, AT, LIMIT) == outcome, "the same message gets the same id"


def test_a_json_array_is_a_batch_the_stream_validates_item_by_item() -> None:
    assert mqtt_to_event("sensors/d1", b"[1, 2]", AT, LIMIT) == Forward(b"d1", b"[1, 2]")


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "says"),
    [
        ("sensors/d1", b"", "empty", "empty message"),
        ("sensors/d1", b"\x00 definitely not json", "not_json", "not JSON"),
        ("sensors/d1", b'"\xff\xfe"', "not_json", "not JSON"),
        ("sensors/d1", b'{"t": NaN}', "not_json", "not JSON"),
        ("sensors/d1", b"[" * 100_000 + b"]" * 100_000, "not_json", "recursion limit"),
        ("sensors/d1", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "not_json", "recursion limit"),
        ("sensors/d1", b"1" * (LIMIT + 1), "too_large", f"is {LIMIT + 1} bytes, the limit is {LIMIT}"),
        (
            "sensors/d1",
            b'{"t": "warm"}',
            "invalid",
            "reading 't': expected a number or null, got text 'warm'",
        ),
        ("sensors/d1", b"true", "invalid", "got boolean True"),
        ("sensors/d1", b"21.5", "invalid", "a number on sensors/<device>/<sensor>"),
        ("sensors/d1", b"{}", "invalid", "no readings"),
        ("weather/x", b'{"t": 1}', "invalid", "no device id"),
        ("sensors/", b'{"t": 1}', "invalid", "no device id"),
    ],
)
def test_what_cannot_become_an_event_is_refused_with_its_reason(
    topic: str, payload: bytes, reason: str, says: str
) -> None:
    outcome = mqtt_to_event(topic, payload, AT, LIMIT)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason == reason and says in outcome.message


def test_an_event_grown_past_the_limit_by_what_the_bridge_adds_is_refused() -> None:
    payload = json.dumps({"readings": {"t": 1}, "metadata": {"note": "x" * 200}}).encode()
    limit = len(payload) + 10  # the payload fits; with device id, ts and event id it does not
    outcome = mqtt_to_event("sensors/d1", payload, AT, limit)
    assert isinstance(outcome, Rejection) and outcome.reason == "too_large"


def test_equal_readings_at_different_times_get_different_ids() -> None:
    # No ts: each arrival is stamped with its own time, and the id covers it.
    first = mqtt_to_event("sensors/d1/t", b"21.5", AT, LIMIT)
    later = mqtt_to_event("sensors/d1/t", b"21.5", AT + timedelta(seconds=10), LIMIT)
    assert isinstance(first, Forward) and isinstance(later, Forward)
    assert json.loads(first.value)["event_id"] != json.loads(later.value)["event_id"]
    # With the device's own ts: different times, different ids.
    at_ten = mqtt_to_event("sensors/d1", b'{"t": 21.5, "ts": 1767225610}', AT, LIMIT)
    at_zero = mqtt_to_event("sensors/d1", b'{"t": 21.5, "ts": 1767225600}', AT, LIMIT)
    assert isinstance(at_ten, Forward) and isinstance(at_zero, Forward)
    assert json.loads(at_ten.value)["event_id"] != json.loads(at_zero.value)["event_id"]


def test_a_redelivered_reading_with_its_own_time_keeps_its_id() -> None:
    # Redelivered after a bridge restart: it arrives later, but it is the same reading.
    payload = b'{"t": 21.5, "ts": "2026-03-01T11:59:59Z"}'
    first = mqtt_to_event("sensors/d1", payload, AT, LIMIT)
    again = mqtt_to_event("sensors/d1", payload, AT + timedelta(minutes=5), LIMIT)
    assert first == again


def test_event_ids_differ_by_topic_and_content() -> None:
    event = {"device_id": "d1", "ts": "2026-01-01T00:00:00Z", "readings": {"t": 1.0}}
    ids = {
        event_id_for("sensors/d1", event),
        event_id_for("sensors/d1/t", event),
        event_id_for("sensors/d1", {**event, "readings": {"t": 1.5}}),
        event_id_for("sensors/d1", {**event, "target": 2}),
    }
    assert len(ids) == 4
    assert event_id_for("sensors/d1", {**event, "event_id": "ignored"}) == event_id_for("sensors/d1", event)
    assert all(SensorEvent.model_validate({**event, "event_id": i}) for i in ids)


def test_a_dead_letter_keeps_the_bytes_cut_at_the_limit_with_the_original_size() -> None:
    value, headers = dead_letter_record(b"x" * 5000, Rejection("too_large", "big"), "mqtt:sensors/d1", 1024)
    assert value == b"x" * 1024
    assert dict(headers) == {
        "dl-reason": b"too_large",
        "dl-message": b"big",
        "dl-source": b"mqtt:sensors/d1",
        "dl-truncated": b"5000",
    }
