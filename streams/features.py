"""Per-device state and the featurizer that both the stream and the API run.

The ingest agent cleans each accepted event (:mod:`streams.cleaning`), then calls
:func:`featurize` and checkpoints the :class:`DeviceState` to Redis; ``POST /predict`` loads that
state and calls the very same functions on the request's reading, so serving sees the features
training saw.

Features per sensor ``s`` (after cleaning, so imputed and clipped values are already in place):

- ``s``            the reading
- ``s_mean``       mean of the last ``window`` readings, this one included
- ``s_delta``      change since the previous reading (absent on the device's first)

and ``hour_sin`` / ``hour_cos``, the time of day on a circle.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Event ids remembered per device for deduplication.
RECENT_IDS = 1000


@dataclass
class DeviceState:
    """What one device's cleaning and features depend on, kept between its events.

    Examples
    --------
    >>> s = DeviceState()
    >>> _ = featurize(s, {"t": 1.0}, datetime(2026, 1, 1, 6), window=2)
    >>> DeviceState.from_json(s.to_json()) == s
    True
    """

    events: int = 0
    #: Last value per sensor (real or imputed): the base of deltas and of "last" imputation.
    last: dict[str, float] = field(default_factory=dict)
    windows: dict[str, deque[float]] = field(default_factory=dict)
    #: Event time (epoch s) of each sensor's last real reading: imputation bridges gaps from it.
    last_seen: dict[str, float] = field(default_factory=dict)
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    #: Highest event time accepted; events older than it minus the allowed lateness are late.
    watermark: float | None = None
    last_ts: float | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "last": self.last,
            "windows": {name: list(values) for name, values in self.windows.items()},
            "last_seen": self.last_seen,
            "recent_ids": list(self.recent_ids),
            "watermark": self.watermark,
            "last_ts": self.last_ts,
            "counts": dict(self.counts),
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
            last_seen={k: float(v) for k, v in data.get("last_seen", {}).items()},
            recent_ids=deque(data.get("recent_ids", []), maxlen=RECENT_IDS),
            watermark=data.get("watermark"),
            last_ts=data.get("last_ts"),
            counts=Counter(data.get("counts", {})),
        )

    def window_mean(self, name: str) -> float | None:
        values = self.windows.get(name)
        return sum(values) / len(values) if values else None


def featurize(
    state: DeviceState, readings: dict[str, float], ts: datetime, window: int
) -> dict[str, float]:
    """Update ``state`` with one clean reading and return its feature vector.

    Examples
    --------
    >>> s = DeviceState()
    >>> f = featurize(s, {"t": 10.0}, datetime(2026, 1, 1, 6), window=2)
    >>> f["t"], f["t_mean"], "t_delta" in f, round(f["hour_sin"], 6)
    (10.0, 10.0, False, 1.0)
    >>> f = featurize(s, {"t": 12.0}, datetime(2026, 1, 1, 6), window=2)
    >>> f["t_mean"], f["t_delta"]
    (11.0, 2.0)
    >>> featurize(s, {"t": 16.0}, datetime(2026, 1, 1, 6), window=2)["t_mean"]
    14.0
    """
    features: dict[str, float] = {}
    for name, value in readings.items():
        previous = state.last.get(name)
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
