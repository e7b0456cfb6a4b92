"""The sensor event contract: what a device publishes to ``sensor-events``.

A message is one JSON object::

    {"event_id": "d1-000042", "device_id": "d1", "ts": "2026-11-22T10:00:00Z",
     "readings": {"temperature": 21.5, "humidity": null}, "target": 3.2}

``ts`` is an ISO-8601 time with a zone or a number of seconds since the epoch; a reading may be
null (missing). ``target`` is the ground truth a model learns, when the device knows it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
MAX_READINGS = 64
MAX_NAME_LENGTH = 64

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
SensorName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[A-Za-z0-9_.-]+$")]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]


class SensorEvent(BaseModel):
    """One reading of one device.

    Examples
    --------
    >>> e = SensorEvent.model_validate({"event_id": "e1", "device_id": "d1", "ts": 0,
    ...                                 "readings": {"temperature": 20.5, "humidity": None}})
    >>> e.ts.isoformat(), e.readings["humidity"]
    ('1970-01-01T00:00:00+00:00', None)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Identifier
    device_id: Identifier
    ts: AwareDatetime
    readings: dict[SensorName, FiniteFloat | None] = Field(max_length=MAX_READINGS)
    target: FiniteFloat | None = None
    metadata: dict[SensorName, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=16
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _epoch_seconds(cls, value: Any) -> Any:
        # Pydantic reads large numbers as milliseconds; devices send seconds, say so plainly.
        if isinstance(value, bool):
            raise ValueError("ts must be a time, not a boolean")
        if isinstance(value, int | float):
            try:
                return datetime.fromtimestamp(value, tz=UTC)
            except (OverflowError, OSError, ValueError) as exc:
                raise ValueError(f"ts {value!r} is not a representable epoch time") from exc
        return value


class Reading(BaseModel):
    """A raw reading to predict from: what ``POST /predict`` takes."""

    model_config = ConfigDict(extra="forbid")

    device_id: Identifier
    readings: dict[SensorName, FiniteFloat | None] = Field(max_length=MAX_READINGS)
    ts: AwareDatetime | None = Field(None, description="event time; default: now")
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = Field(
        None, description="model name; default: the configured model"
    )
