"""The sensor event contract: what a device publishes to ``sensor-events``.

A message is one JSON object::

    {"event_id": "d1-000042", "device_id": "d1", "ts": "2026-11-22T10:00:00Z",
     "readings": {"temperature": 21.5, "humidity": null}, "target": 3.2}

``ts`` is an ISO-8601 time with a zone or a number of seconds since the epoch; a reading may be
null (missing). ``target`` is the ground truth a model learns, when the device knows it: a number,
or a class (text or boolean) for classification and anomaly labels.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION: Final = 1
MAX_READINGS = 64
MAX_NAME_LENGTH = 64

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
SensorName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[A-Za-z0-9_.-]+$")]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]


def _label(value: Any) -> float | bool | str:
    """A target or label: a class stays a class (bool or text), anything numeric is a number."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            if not value or len(value) > 128:
                raise PydanticCustomError("label_text", "a class label is 1 to 128 characters") from None
            return value
    else:
        raise PydanticCustomError("label_type", "Input should be a number, a boolean or a class name")
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return number


#: A number (regression), a class name or a boolean (classification, anomaly flags).
Label = Annotated[float | bool | str, BeforeValidator(_label)]


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
    #: The ground truth: a number (regression), a class (classification) or an anomaly flag.
    target: Label | None = None
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


class LabelEvent(BaseModel):
    """Ground truth for an event, sent after it to ``sensor-labels``.

    Examples
    --------
    >>> LabelEvent.model_validate({"event_id": "e1", "label": True}).label
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier
    label: Label
    #: Only this model learns it; default: every model that learns from labels.
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = None


class Reading(BaseModel):
    """A raw reading to predict from: what ``POST /predict`` takes."""

    model_config = ConfigDict(extra="forbid")

    device_id: Identifier
    readings: dict[SensorName, FiniteFloat | None] = Field(max_length=MAX_READINGS)
    ts: AwareDatetime | None = Field(None, description="event time; default: now")
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = Field(
        None, description="model name; default: the configured model"
    )
    alias: Literal["champion", "challenger", "latest"] | None = Field(
        None, description="which of the model's versions answers; default: the champion"
    )
    version: int | None = Field(None, ge=1, description="a stored version, instead of an alias")

    @model_validator(mode="after")
    def _one_way_to_pick_a_version(self) -> Reading:
        if self.alias is not None and self.version is not None:
            raise ValueError("give alias or version, not both")
        return self
