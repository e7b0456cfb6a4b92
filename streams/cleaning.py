"""Turning raw message bytes into a valid :class:`~streams.schema.SensorEvent`, or a reason why not.

Pure functions: no broker, no Redis. The ingest agent calls :func:`decode_event` on every message
and sends what it returns as a :class:`Rejection` to the dead-letter topic.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import ValidationError

from streams.schema import SensorEvent

#: Reason codes a rejected event carries in the DLQ (header ``dl-reason``).
TOO_LARGE = "too_large"
NOT_JSON = "not_json"
INVALID = "invalid"
EMPTY = "empty"


class Rejection(NamedTuple):
    """Why an event was refused: a stable code for machines and a message for people."""

    reason: str
    message: str


def decode_event(raw: bytes | None, max_bytes: int) -> SensorEvent | Rejection:
    """Parse and validate one message; never raises.

    Examples
    --------
    >>> decode_event(b"not json", 1000)
    Rejection(reason='not_json', message='not JSON: expected ident at line 1 column 2')
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


def _rejection_from(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] in {"json_invalid", "json_type"}:
        return Rejection(NOT_JSON, f"not JSON: {errors[0]['msg'].removeprefix('Invalid JSON: ')}")
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return Rejection(INVALID, "; ".join(parts) + more)
