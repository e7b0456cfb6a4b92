"""Per-device feature state and the featurizer that both the stream and the API run.

The ingest agent calls :func:`featurize` for every accepted event and checkpoints the
:class:`DeviceState` to Redis; ``POST /predict`` loads that state and calls the very same
function on the request's reading, so serving sees the features training saw.

Features per sensor ``s`` (missing readings imputed with the device's last value):

- ``s``            the reading
- ``s_mean``       mean of the last ``window`` readings, this one included
- ``s_delta``      change since the previous reading (absent on the device's first)

and ``hour_sin`` / ``hour_cos``, the time of day on a circle.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RECENT_IDS = 1000


@dataclass
class DeviceState:
    """What one device's features depend on, kept between its events.

    Examples
    --------
    >>> s = DeviceState()
    >>> _ = featurize(s, {"t": 1.0}, datetime(2026, 1, 1, 6), window=2)
    >>> DeviceState.from_json(s.to_json()) == s
    True
    """

    events: int = 0
    last: dict[str, float] = field(default_factory=dict)
    windows: dict[str, deque[float]] = field(default_factory=dict)
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    last_ts: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "last": self.last,
            "windows": {name: list(values) for name, values in self.windows.items()},
            "recent_ids": list(self.recent_ids),
            "last_ts": self.last_ts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], window: int | None = None) -> DeviceState:
        return cls(
            events=int(data.get("events", 0)),
            last={k: float(v) for k, v in data.get("last", {}).items()},
            windows={
                k: deque((float(x) for x in v), maxlen=window or len(v) or 1)
                for k, v in data.get("windows", {}).items()
            },
            recent_ids=deque(data.get("recent_ids", []), maxlen=RECENT_IDS),
            last_ts=data.get("last_ts"),
        )


def featurize(
    state: DeviceState, readings: dict[str, float | None], ts: datetime, window: int
) -> dict[str, float]:
    """Update ``state`` with one reading and return its feature vector.

    Examples
    --------
    >>> s = DeviceState()
    >>> f = featurize(s, {"t": 10.0}, datetime(2026, 1, 1, 6), window=2)
    >>> f["t"], f["t_mean"], "t_delta" in f, round(f["hour_sin"], 6)
    (10.0, 10.0, False, 1.0)
    >>> f = featurize(s, {"t": None}, datetime(2026, 1, 1, 6), window=2)  # imputed
    >>> f["t"], f["t_delta"]
    (10.0, 0.0)
    >>> featurize(s, {"t": 16.0}, datetime(2026, 1, 1, 6), window=2)["t_mean"]
    13.0
    """
    features: dict[str, float] = {}
    for name, value in readings.items():
        previous = state.last.get(name)
        if value is None:
            if previous is None:
                continue  # nothing to impute from yet: River models accept a missing feature
            value = previous
        values = state.windows.get(name)
        if values is None or values.maxlen != window:
            values = state.windows[name] = deque(values or (), maxlen=window)
        values.append(value)
        features[name] = value
        features[f"{name}_mean"] = sum(values) / len(values)
        if previous is not None:
            features[f"{name}_delta"] = value - previous
        state.last[name] = value
    hour = ts.hour + ts.minute / 60 + ts.second / 3600
    features["hour_sin"] = math.sin(2 * math.pi * hour / 24)
    features["hour_cos"] = math.cos(2 * math.pi * hour / 24)
    state.events += 1
    state.last_ts = ts.timestamp()
    return features
