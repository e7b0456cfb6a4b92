"""Per-device state and the featurizer that both the stream and the API run.

The ingest agent cleans each accepted event (:mod:`streams.cleaning`), then calls
:func:`featurize` and checkpoints the :class:`DeviceState` to Redis; ``POST /predict`` loads that
state and calls the very same function on the request's reading, so serving sees the features
training saw. What is computed is declared by a :class:`FeatureSpec` (``DRIFTLINE_FEATURES``).

Features per sensor ``s`` (after cleaning, so imputed and clipped values are in place), names
as they appear in the vector:

==========================  =====================================================================
``s``                       the reading
``s_{stat}_{n}``            mean / std / min / max of the last ``n`` readings (this one included)
``s_{stat}_{T}s``           the same over readings of the last ``T`` seconds of event time
``s_ewma_{H}s``             exponentially weighted mean, weights halving every ``H`` s of event time
``s_delta``, ``s_rate``     change since the previous reading, and that change per second
``s_lag_{k}``               the reading ``k`` readings ago
``a_minus_b``, ``a_over_b`` differences and ratios between sensors (declared pairs)
``tod_sin``, ``tod_cos``    time of day on a circle; ``dow_sin``, ``dow_cos`` day of the week
==========================  =====================================================================

Statistics are population statistics (``std`` of one reading is 0). A feature that cannot be
computed yet (no previous reading, too few readings for a lag) is left out: River models treat a
missing feature as unknown.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Event ids remembered per device for deduplication.
RECENT_IDS = 1000

Stat = Literal["mean", "std", "min", "max"]


class SensorPair(BaseModel):
    """A feature from two sensors: ``a - b`` (diff) or ``a / b`` (ratio)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str
    b: str
    op: Literal["diff", "ratio"] = "diff"

    @property
    def name(self) -> str:
        return f"{self.a}_{'minus' if self.op == 'diff' else 'over'}_{self.b}"


class FeatureSpec(BaseModel):
    """Which features to compute: the same spec in the worker and the API gives the same vectors.

    Examples
    --------
    >>> FeatureSpec().schema_hash() == FeatureSpec().schema_hash()
    True
    >>> FeatureSpec(windows=(5,)).schema_hash() == FeatureSpec().schema_hash()
    False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: tuple[int, ...] = Field((10,), description="rolling windows, in readings")
    time_windows: tuple[float, ...] = Field((300.0,), description="rolling windows, in seconds")
    stats: tuple[Stat, ...] = ("mean", "std", "min", "max")
    ewma_half_lives: tuple[float, ...] = Field((60.0,), description="EWMA half-lives, in seconds")
    delta: bool = True
    rate: bool = True
    lags: tuple[int, ...] = (1,)
    time_of_day: bool = True
    day_of_week: bool = True
    pairs: tuple[SensorPair, ...] = (SensorPair(a="temperature", b="humidity", op="diff"),)
    #: Most readings a time window keeps per sensor (bounds memory for fast devices).
    max_time_window_points: int = Field(1000, ge=1)

    def schema_hash(self) -> str:
        """A short fingerprint of this spec: models record it, the API checks it."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def history(self) -> int:
        """Readings per sensor the count windows and lags need."""
        return max((*self.windows, *(k + 1 for k in self.lags), 1))


@dataclass
class DeviceState:
    """What one device's cleaning and features depend on, kept between its events.

    Examples
    --------
    >>> s = DeviceState()
    >>> _ = featurize(s, {"t": 1.0}, datetime(2026, 1, 1, 6), FeatureSpec())
    >>> DeviceState.from_json(s.to_json()) == s
    True
    """

    events: int = 0
    #: Last value per sensor (real or imputed): the base of deltas and of "last" imputation.
    last: dict[str, float] = field(default_factory=dict)
    #: Event time of each sensor's last value, for rates.
    last_at: dict[str, float] = field(default_factory=dict)
    #: The last readings per sensor, newest last (count windows and lags).
    windows: dict[str, deque[float]] = field(default_factory=dict)
    #: ``[ts, value]`` per sensor, sorted by event time (time windows).
    timed: dict[str, list[list[float]]] = field(default_factory=dict)
    #: Per sensor, per half-life: ``[ewma, ts]``.
    ewma: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: Event time (epoch s) of each sensor's last real reading: imputation bridges gaps from it.
    last_seen: dict[str, float] = field(default_factory=dict)
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    #: Highest event time accepted; events older than it minus the allowed lateness are late.
    watermark: float | None = None
    last_ts: float | None = None
    counts: Counter[str] = field(default_factory=Counter)
    #: The feature vector of the device's last event: ``GET /devices/{id}/features``.
    features: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "last": self.last,
            "last_at": self.last_at,
            "windows": {name: list(values) for name, values in self.windows.items()},
            "timed": self.timed,
            "ewma": self.ewma,
            "last_seen": self.last_seen,
            "recent_ids": list(self.recent_ids),
            "watermark": self.watermark,
            "last_ts": self.last_ts,
            "counts": dict(self.counts),
            "features": self.features,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceState:
        return cls(
            events=int(data.get("events", 0)),
            last={k: float(v) for k, v in data.get("last", {}).items()},
            last_at={k: float(v) for k, v in data.get("last_at", {}).items()},
            windows={k: deque((float(x) for x in v), maxlen=max(len(v), 1))
                     for k, v in data.get("windows", {}).items()},
            timed={k: [[float(t), float(x)] for t, x in v] for k, v in data.get("timed", {}).items()},
            ewma={k: {h: [float(e), float(t)] for h, (e, t) in v.items()}
                  for k, v in data.get("ewma", {}).items()},
            last_seen={k: float(v) for k, v in data.get("last_seen", {}).items()},
            recent_ids=deque(data.get("recent_ids", []), maxlen=RECENT_IDS),
            watermark=data.get("watermark"),
            last_ts=data.get("last_ts"),
            counts=Counter(data.get("counts", {})),
            features={k: float(v) for k, v in data.get("features", {}).items()},
        )

    def window_mean(self, name: str) -> float | None:
        values = self.windows.get(name)
        return sum(values) / len(values) if values else None


def _put_stats(features: dict[str, float], names: tuple[str, ...], values: list[float],
               wanted: tuple[Stat, ...]) -> None:
    """``features[name] = stat(values)`` for each wanted stat and its feature name."""
    n = len(values)
    mean = sum(values) / n
    for stat, name in zip(wanted, names, strict=True):
        if stat == "mean":
            features[name] = mean
        elif stat == "std":
            features[name] = math.sqrt(max(sum([(x - mean) ** 2 for x in values]) / n, 0.0))
        elif stat == "min":
            features[name] = min(values)
        else:
            features[name] = max(values)


def _label(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class _SensorNames:
    """Every feature name one sensor gets under one spec, formatted once, not per event."""

    count: tuple[tuple[int, tuple[str, ...]], ...]
    timed: tuple[tuple[float, tuple[str, ...]], ...]
    ewma: tuple[tuple[float, str, str], ...]
    delta: str
    rate: str
    lags: tuple[tuple[int, str], ...]


@lru_cache(maxsize=4096)
def _names(sensor: str, spec: FeatureSpec) -> _SensorNames:
    return _SensorNames(
        count=tuple((n, tuple(f"{sensor}_{stat}_{n}" for stat in spec.stats)) for n in spec.windows),
        timed=tuple((sec, tuple(f"{sensor}_{stat}_{_label(sec)}" for stat in spec.stats))
                    for sec in spec.time_windows),
        ewma=tuple((h, _label(h), f"{sensor}_ewma_{_label(h)}") for h in spec.ewma_half_lives),
        delta=f"{sensor}_delta", rate=f"{sensor}_rate",
        lags=tuple((k, f"{sensor}_lag_{k}") for k in spec.lags),
    )


def featurize(
    state: DeviceState, readings: dict[str, float], ts: datetime, spec: FeatureSpec
) -> dict[str, float]:
    """Update ``state`` with one clean reading and return its feature vector.

    Examples
    --------
    >>> spec = FeatureSpec(windows=(2,), time_windows=(), ewma_half_lives=(), pairs=(), stats=("mean",),
    ...                    time_of_day=False, day_of_week=False)
    >>> s = DeviceState()
    >>> featurize(s, {"t": 10.0}, datetime(2026, 1, 1, 6, 0, 0), spec)
    {'t': 10.0, 't_mean_2': 10.0}
    >>> featurize(s, {"t": 12.0}, datetime(2026, 1, 1, 6, 0, 4), spec)
    {'t': 12.0, 't_mean_2': 11.0, 't_delta': 2.0, 't_rate': 0.5, 't_lag_1': 10.0}
    """
    at = ts.timestamp()
    history = spec.history
    features: dict[str, float] = {}
    stats = spec.stats
    for name, value in readings.items():
        features[name] = value
        names = _names(name, spec)
        # rolling windows by count, and lags
        values = state.windows.get(name)
        if values is None or values.maxlen != history:
            values = state.windows[name] = deque(values or (), maxlen=history)
        values.append(value)
        recent = list(values)
        for n, window_names in names.count:
            _put_stats(features, window_names, recent[-n:], stats)
        # rolling windows by event time; an out-of-order reading sees only what came before it
        if spec.time_windows:
            points = state.timed.setdefault(name, [])
            bisect.insort(points, [at, value])
            horizon = points[-1][0] - max(spec.time_windows)
            while points and (points[0][0] <= horizon or len(points) > spec.max_time_window_points):
                points.pop(0)
            for seconds, window_names in names.timed:
                since = at - seconds
                _put_stats(features, window_names, [x for t, x in points if since < t <= at], stats)
        # exponentially weighted means, decaying with event time
        for half_life, key, feature in names.ewma:
            slot = state.ewma.setdefault(name, {})
            if key not in slot:
                slot[key] = [value, at]
            else:
                mean, then = slot[key]
                weight = 1 - 0.5 ** (max(at - then, 0.0) / half_life)
                slot[key] = [mean + weight * (value - mean), max(at, then)]
            features[feature] = slot[key][0]
        previous, previous_at = state.last.get(name), state.last_at.get(name)
        if previous is not None:
            if spec.delta:
                features[names.delta] = value - previous
            if spec.rate and previous_at is not None and at > previous_at:
                features[names.rate] = (value - previous) / (at - previous_at)
        for k, lag_name in names.lags:
            if len(recent) > k:
                features[lag_name] = recent[-1 - k]
        state.last[name] = value
        state.last_at[name] = at
    for pair in spec.pairs:
        a, b = readings.get(pair.a), readings.get(pair.b)
        if a is not None and b is not None:
            if pair.op == "diff":
                features[pair.name] = a - b
            elif b != 0:
                features[pair.name] = a / b
    if spec.time_of_day or spec.day_of_week:
        # UTC: the same moment gives the same features whatever zone the device wrote it in
        ts = ts.astimezone(UTC) if ts.tzinfo else ts
        hour = ts.hour + ts.minute / 60 + ts.second / 3600
        if spec.time_of_day:
            features["tod_sin"] = math.sin(2 * math.pi * hour / 24)
            features["tod_cos"] = math.cos(2 * math.pi * hour / 24)
        if spec.day_of_week:
            day = ts.weekday() + hour / 24
            features["dow_sin"] = math.sin(2 * math.pi * day / 7)
            features["dow_cos"] = math.cos(2 * math.pi * day / 7)
    state.events += 1
    state.last_ts = at
    state.features = features
    return features
