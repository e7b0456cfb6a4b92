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

#: Reason code (DLQ header ``dl-reason``) of a label that does not fit the model it is for.
LABEL_TYPE = "label_type"


#: The largest magnitude any reading or numeric label may have, catalogued or not: past it a
#: reading is out of range, whatever its sensor's own range says (clipped to it, or refused, by
#: the sensor's ``out_of_range`` policy; a sensor not in the catalog is clipped), and a label is
#: refused. No instrument reads 1e200; such a value is a fault, and its square would overflow the
#: device's statistics and the model's error metrics.
MAX_MAGNITUDE = 1e12


def label_problem(task: str, label: Any, *, binary: bool = False) -> str | None:
    """What a model of ``task`` expects of a label, when ``label`` is not that; else ``None``.

    Regression and forecast learn a finite number (not a boolean); classification a class: a
    boolean, a whole number or a text; a binary classifier (``binary``, e.g. logistic
    regression) and an anomaly detector's label a boolean or 0/1. A label that passes cannot
    make River fail on its type.

    >>> label_problem("regression", 2.5) is None, label_problem("classification", "open") is None
    (True, True)
    >>> label_problem("regression", "high"), label_problem("regression", 1e200)
    ('a finite number', 'a finite number within ±1e+12')
    >>> label_problem("classification", "True", binary=True)
    'a boolean or 0/1'
    """
    if task in ("regression", "forecast"):
        if type(label) is float and -MAX_MAGNITUDE <= label <= MAX_MAGNITUDE:
            return None  # the usual label, told apart cheaply: this runs for every event
        if not (isinstance(label, int | float) and not isinstance(label, bool) and math.isfinite(label)):
            return "a finite number"
        return None if abs(label) <= MAX_MAGNITUDE else f"a finite number within ±{MAX_MAGNITUDE:g}"
    if task == "classification" and not binary:
        whole = isinstance(label, int | float) and math.isfinite(label) and float(label).is_integer()
        fits = isinstance(label, bool | str) or whole
        return None if fits else "a class: a boolean, a whole number or a text"
    flag = isinstance(label, bool) or (isinstance(label, int | float) and label in (0, 1))
    return None if flag else "a boolean or 0/1"


def describe(value: Any) -> str:
    """A value and its JSON type, for a message: ``text 'high'``.

    >>> describe("high"), describe(True), describe(2.0)
    ("text 'high'", 'boolean True', 'number 2.0')
    """
    kind = (
        "boolean"
        if isinstance(value, bool)
        else "number"
        if isinstance(value, int | float)
        else "text"
        if isinstance(value, str)
        else type(value).__name__
    )
    return f"{kind} {value!r:.64}"


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
