"""The sensor catalog: per sensor its unit, valid range and cleaning policy.

Set it in ``DRIFTLINE_SENSOR_CATALOG`` as JSON, or point ``DRIFTLINE_SENSOR_CATALOG_FILE`` at a JSON
or YAML file. Sensors not in the catalog pass through unchecked and are imputed from their last value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SensorSpec(BaseModel):
    """What a sensor measures, what values are plausible, and how to clean it.

    Examples
    --------
    >>> SensorSpec(unit="°C", min=-40, max=125).clip_or_none(130.0)
    125.0
    >>> SensorSpec(unit="%", min=0, max=100, out_of_range="reject").clip_or_none(101.0) is None
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: str = ""
    min: float | None = None
    max: float | None = None
    #: ``clip``: clamp to the range and count it; ``reject``: the event goes to the DLQ.
    out_of_range: Literal["clip", "reject"] = "clip"
    #: How to fill a missing reading: the device's last value, its rolling mean, or not at all.
    impute: Literal["last", "mean", "none"] = "last"
    #: Longest gap (seconds of event time since the last real reading) imputation may bridge.
    max_gap_seconds: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _range_ordered(self) -> SensorSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def in_range(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def clip_or_none(self, value: float) -> float | None:
        """The value clamped into range, or ``None`` when this sensor rejects out-of-range values."""
        if self.out_of_range == "reject":
            return None
        low = self.min if self.min is not None else value
        high = self.max if self.max is not None else value
        return min(max(value, low), high)


#: The simulator's sensors: what ``driftline up`` runs with unless told otherwise.
DEFAULT_CATALOG: dict[str, SensorSpec] = {
    "temperature": SensorSpec(unit="°C", min=-40, max=125, out_of_range="clip", impute="last"),
    "humidity": SensorSpec(unit="%", min=0, max=100, out_of_range="clip", impute="mean"),
    "vibration": SensorSpec(
        unit="g", min=0, max=16, out_of_range="reject", impute="last", max_gap_seconds=60
    ),
    "voltage": SensorSpec(unit="V", min=0, max=400, out_of_range="reject", impute="last"),
}


#: Catalogs by name (``DRIFTLINE_SENSOR_CATALOG=simulator``). ``none``, like an empty value or
#: ``{}``, means no catalog at all: readings pass unchecked, a missing one takes its last value.
NAMED_CATALOGS: dict[str, dict[str, SensorSpec]] = {"simulator": DEFAULT_CATALOG, "none": {}}


def load_catalog(text: str | None = "simulator", path: Path | None = None) -> dict[str, SensorSpec]:
    """Read a catalog: a file (JSON/YAML) when given, else a name from :data:`NAMED_CATALOGS` or JSON.

    Examples
    --------
    >>> sorted(load_catalog("simulator"))
    ['humidity', 'temperature', 'vibration', 'voltage']
    >>> load_catalog(""), load_catalog("none"), load_catalog("{}")
    ({}, {}, {})
    >>> load_catalog('{"t": {"min": 0}}')["t"].min
    0.0
    """
    name = (text or "").strip() or "none"
    if path is None and name in NAMED_CATALOGS:
        return dict(NAMED_CATALOGS[name])
    if path is not None:
        raw = path.read_text()
        if path.suffix in {".yaml", ".yml"}:
            import yaml  # optional: only needed for YAML catalogs

            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    else:
        try:
            data = json.loads(name)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a catalog name ({', '.join(NAMED_CATALOGS)}) nor JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a sensor catalog is a JSON object: {sensor: {unit, min, max, ...}}")
    return {sensor: SensorSpec.model_validate(spec) for sensor, spec in data.items()}


def describe_catalog(catalog: dict[str, SensorSpec], text: str | None, path: Path | None) -> str:
    """Which catalog is in force, in words, for startup logs.

    >>> describe_catalog({}, "", None)
    'none (readings pass unchecked; a missing one takes its last value)'
    >>> describe_catalog(load_catalog("simulator"), "simulator", None)
    "simulator's: humidity, temperature, vibration, voltage"
    """
    if not catalog:
        return "none (readings pass unchecked; a missing one takes its last value)"
    sensors = ", ".join(sorted(catalog))
    if path is not None:
        return f"from {path}: {sensors}"
    if (text or "").strip() == "simulator":
        return f"simulator's: {sensors}"
    return f"custom: {sensors}"
