"""Cleaning: raw bytes to a valid :class:`~driftline.streams.schema.SensorEvent`, then per-device checks.

Pure functions: no broker, no Redis. :class:`~driftline.streams.ingest.IngestStage` calls them in order —
:func:`decode_event`, deduplication, :func:`check_time`, :func:`clean_readings` — and sends every
:class:`Rejection` to the dead-letter topic with its reason code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from driftline.streams import schema
from driftline.streams.catalog import SensorSpec
from driftline.streams.features import DeviceState
from driftline.streams.schema import SensorEvent

#: Reason codes a rejected event carries in the DLQ (header ``dl-reason``).
TOO_LARGE = "too_large"
NOT_JSON = "not_json"
INVALID = "invalid"
EMPTY = "empty"


class Rejection(NamedTuple):
    """Why an event was refused: a stable code for machines and a message for people."""

    reason: str
    message: str
    #: Position of the refused event in a batched message (a JSON array), else None.
    item: int | None = None


def dead_letter_record(
    value: bytes | None, rejection: Rejection, source: str, max_bytes: int
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The DLQ copy of a refused message, for every way in (stream, MQTT bridge): its bytes as
    they came (cut at ``max_bytes``, header ``dl-truncated`` = the original size), why, and from
    where.

    Examples
    --------
    >>> value, headers = dead_letter_record(b"x" * 50, Rejection(TOO_LARGE, "too big"), "ev:0:7", 20)
    >>> len(value), dict(headers)["dl-reason"], dict(headers)["dl-truncated"]
    (20, b'too_large', b'50')
    """
    value = value or b""
    headers = [
        ("dl-reason", rejection.reason.encode()),
        ("dl-message", rejection.message.encode()[:4096]),
        ("dl-source", source.encode()),
    ]
    if rejection.item is not None:
        headers.append(("dl-item", str(rejection.item).encode()))
    if len(value) > max_bytes:
        headers.append(("dl-truncated", str(len(value)).encode()))
        value = value[:max_bytes]
    return value, headers


def decode_event(raw: bytes | None, max_bytes: int) -> SensorEvent | Rejection:
    """Parse and validate one message; never raises.

    Examples
    --------
    >>> decode_event(b"not json", 1000)
    Rejection(reason='not_json', message='not JSON: expected ident at line 1 column 2', item=None)
    >>> decode_event(b'{"event_id": "e", "device_id": "d", "ts": 0, "readings": {}}', 1000).device_id
    'd'
    >>> decode_event(b"x" * 2000, 1000).reason
    'too_large'
    """
    if not raw:
        return Rejection(EMPTY, "empty message")
    if len(raw) > max_bytes:
        return Rejection(TOO_LARGE, f"message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        return SensorEvent.model_validate_json(raw)
    except ValidationError as exc:
        return _rejection_from(exc)


TOO_MANY = "too_many"

_EVENTS = TypeAdapter(list[SensorEvent])


def decode_message(raw: bytes | None, max_bytes: int, max_items: int) -> list[SensorEvent | Rejection]:
    """One message as its events: a JSON object is one event, a JSON array a batch of them.

    Each event of a batch is validated on its own, so one bad reading does not sink its
    neighbours; a rejection names the item it refers to. Never raises.

    Examples
    --------
    >>> ok = b'{"event_id": "e", "device_id": "d", "ts": 0, "readings": {}}'
    >>> [type(x).__name__ for x in decode_message(b"[" + ok + b", 7]", 10_000, 10)]
    ['SensorEvent', 'Rejection']
    >>> decode_message(b"[" + ok + b", 7]", 10_000, 10)[1].message
    'item 1: event: Input should be a valid dictionary or instance of SensorEvent'
    >>> decode_message(b"[1, 2, 3]", 10_000, 2)[0].reason
    'too_many'
    """
    if not raw or raw[:1] != b"[" and raw.lstrip()[:1] != b"[":
        return [decode_event(raw, max_bytes)]
    if len(raw) > max_bytes:
        return [Rejection(TOO_LARGE, f"message is {len(raw)} bytes, the limit is {max_bytes}")]
    try:
        # The common case, a batch of valid events, in one call into pydantic-core: parsing and
        # validating straight from the bytes costs less than a dict per event validated one by one.
        events: list[SensorEvent | Rejection] = list(_EVENTS.validate_json(raw))
    except ValidationError:
        pass  # some item is not an event (or the whole is not JSON): item by item, below
    else:
        if not events:
            return [Rejection(EMPTY, "empty batch: the message holds no events")]
        if len(events) > max_items:
            return [Rejection(TOO_MANY, f"{len(events)} events in one message; the limit is {max_items}")]
        return events
    try:
        items = from_json(raw)
    except ValueError as exc:
        return [Rejection(NOT_JSON, f"not JSON: {exc}")]
    if not isinstance(items, list):  # pragma: no cover - a leading "[" parses to a list or fails
        return [Rejection(INVALID, "expected a JSON array of events")]
    if not items:
        return [Rejection(EMPTY, "empty batch: the message holds no events")]
    if len(items) > max_items:
        return [Rejection(TOO_MANY, f"{len(items)} events in one message; the limit is {max_items}")]
    results: list[SensorEvent | Rejection] = []
    for index, item in enumerate(items):
        try:
            results.append(SensorEvent.model_validate(item))
        except ValidationError as exc:
            reason, message, _ = _rejection_from(exc)
            results.append(Rejection(reason, f"item {index}: {message}", index))
    return results


def _rejection_from(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] in {"json_invalid", "json_type"}:
        return Rejection(NOT_JSON, f"not JSON: {errors[0]['msg'].removeprefix('Invalid JSON: ')}")
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return Rejection(INVALID, "; ".join(parts) + more)


# --- per-device cleaning ---------------------------------------------------------------------

DUPLICATE = "duplicate"
LATE = "late"
FUTURE = "future"
TOO_OLD = "too_old"
OUT_OF_RANGE = "out_of_range"
INTERNAL = "internal"

#: The largest magnitude any reading may have (see driftline.streams.schema.MAX_MAGNITUDE).
MAX_MAGNITUDE = schema.MAX_MAGNITUDE


class CleanReadings(NamedTuple):
    """An event's readings after range checks and imputation: what the featurizer gets."""

    readings: dict[str, float]
    imputed: tuple[str, ...]
    clipped: tuple[str, ...]


def check_time(ts: float, watermark: float | None, now: float, policy: TimePolicy) -> Rejection | None:
    """Refuse an event from too far in the future, or older than the device's watermark allows.

    ``now`` is the message's broker/producer timestamp, not the wall clock, so a replay decides the
    same way.

    Examples
    --------
    >>> policy = TimePolicy(allowed_lateness=60, max_future=10)
    >>> check_time(1000, watermark=1030, now=1000, policy=policy) is None   # 30 s late: fine
    True
    >>> check_time(900, watermark=1030, now=1000, policy=policy).reason
    'late'
    >>> check_time(1020, watermark=None, now=1000, policy=policy).reason
    'future'
    >>> check_time(5, watermark=None, now=1000, policy=policy._replace(earliest=946684800)).reason
    'too_old'
    """
    if ts > now + policy.max_future:
        return Rejection(
            FUTURE,
            f"event time is {ts - now:.0f} s ahead of its arrival "
            f"(limit {policy.max_future:.0f} s): check the device clock",
        )
    if policy.earliest is not None and ts < policy.earliest:
        return Rejection(
            TOO_OLD,
            f"event time {ts:.0f} is before {policy.earliest:.0f} (DRIFTLINE_EARLIEST_EVENT_TIME): "
            "check the device clock",
        )
    if policy.max_past and ts < now - policy.max_past:
        return Rejection(
            TOO_OLD,
            f"event time is {now - ts:.0f} s before its arrival "
            f"(limit {policy.max_past:.0f} s, DRIFTLINE_MAX_PAST_SECONDS)",
        )
    if watermark is not None and ts < watermark - policy.allowed_lateness:
        return Rejection(
            LATE,
            f"event is {watermark - ts:.0f} s older than the device's newest "
            f"(allowed lateness {policy.allowed_lateness:.0f} s)",
        )
    return None


class TimePolicy(NamedTuple):
    allowed_lateness: float
    max_future: float
    #: Event times before this (epoch s) are refused: a device whose clock was never set sends
    #: 1970. An absolute floor, not one relative to arrival, so historical data still replays.
    earliest: float | None = None
    #: Optionally, event times older than their arrival by more than this are refused too.
    max_past: float | None = None


def clean_readings(
    readings: dict[str, float | None],
    ts: float,
    state: DeviceState,
    catalog: dict[str, SensorSpec],
) -> CleanReadings | Rejection:
    """Range-check and impute one event's readings against the catalog and the device's history.

    Sensors the device reported before but left out (or sent as null) are imputed by the sensor's
    policy, when the gap since its last real reading is short enough. Sensors missing from the
    catalog are imputed from their last value and range-checked only against
    :data:`MAX_MAGNITUDE`, which bounds every reading (clipped to it and counted).

    Examples
    --------
    >>> from driftline.streams.catalog import SensorSpec
    >>> catalog = {"t": SensorSpec(min=0, max=50), "v": SensorSpec(min=0, max=1, out_of_range="reject")}
    >>> state = DeviceState(last={"t": 20.0}, last_seen={"t": 100.0})
    >>> clean_readings({"t": None, "v": 0.5}, 130.0, state, catalog)
    CleanReadings(readings={'t': 20.0, 'v': 0.5}, imputed=('t',), clipped=())
    >>> clean_readings({"t": 70.0}, 130.0, state, catalog)
    CleanReadings(readings={'t': 50.0}, imputed=(), clipped=('t',))
    >>> clean_readings({"v": 3.0}, 130.0, state, catalog).reason
    'out_of_range'
    >>> clean_readings({"t": 20.0, "x": -1e200}, 130.0, state, catalog)
    CleanReadings(readings={'t': 20.0, 'x': -1000000000000.0}, imputed=(), clipped=('x',))
    """
    clean: dict[str, float] = {}
    imputed: list[str] = []
    clipped: list[str] = []
    # The sensors the device has sent before but not now come after this event's own; usually
    # there are none, and the event's names are all there is to go through.
    last = state.last
    names: Iterable[str] = readings
    if not last.keys() <= readings.keys():
        names = (*readings, *(n for n in last if n not in readings))
    for name in names:
        spec = catalog.get(name, _UNCATALOGUED)
        value = readings.get(name)
        if value is None:
            fill = _impute(name, ts, state, spec)
            if fill is not None:
                clean[name] = fill
                imputed.append(name)
            continue
        low, high = spec.min, spec.max
        if (  # not SensorSpec.in_range, inline (per reading of every event), or beyond any bound
            (low is not None and not value >= low)
            or (high is not None and not value <= high)
            or abs(value) > MAX_MAGNITUDE
        ):
            fixed = spec.clip_or_none(value)
            if fixed is None:
                if spec.in_range(value):
                    return Rejection(
                        OUT_OF_RANGE,
                        f"{name}={value:g} is beyond ±{MAX_MAGNITUDE:g}, the bound on any reading",
                    )
                return Rejection(
                    OUT_OF_RANGE,
                    f"{name}={value:g} is outside [{spec.min}, {spec.max}]"
                    f"{' ' + spec.unit if spec.unit else ''}",
                )
            value = min(max(fixed, -MAX_MAGNITUDE), MAX_MAGNITUDE)
            clipped.append(name)
        clean[name] = value
    return CleanReadings(clean, tuple(imputed), tuple(clipped))


def _impute(name: str, ts: float, state: DeviceState, spec: SensorSpec) -> float | None:
    seen = state.last_seen.get(name)
    if spec.impute == "none" or seen is None or ts - seen > spec.max_gap_seconds:
        return None
    return state.last.get(name) if spec.impute == "last" else state.window_mean(name)


_UNCATALOGUED = SensorSpec()
