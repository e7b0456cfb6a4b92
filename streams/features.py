"""Per-device state and the featurizer that both the stream and the API run.

The ingest agent cleans each accepted event (:mod:`driftline.streams.cleaning`), then calls
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

Every value is finite. Cleaning bounds each reading's magnitude
(:data:`~driftline.streams.cleaning.MAX_MAGNITUDE`), and the statistics cannot overflow on any
finite input anyway (a square of 1e200 is beyond a float: the spread is computed on scaled
values). A feature that still comes out infinite (a ratio over a denominator near 0, a
difference of two values near the float limit) is left out of that event's vector and counted
in the device's ``non_finite_features``; a non-finite reading never enters the device state, and
a stored state is read without any (:meth:`DeviceState.from_json`). No model and no response
ever sees NaN or infinity.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Event ids remembered per device for deduplication.
RECENT_IDS = 1000

#: The device counter of features left out of a vector because they came out infinite or NaN.
NON_FINITE_FEATURES = "non_finite_features"

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

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        """A preset's name, or ``{"preset": name, ...}``: the preset with some keys changed."""
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and "preset" in data:
            overrides = {k: v for k, v in data.items() if k != "preset"}
            name = data["preset"]
            if name not in PRESETS:
                raise ValueError(
                    f"unknown features preset {name!r}: use one of {', '.join(PRESETS)}, "
                    "or give the keys themselves"
                )
            return {**PRESETS[name], **overrides}
        return data

    def describe(self) -> str:
        """The preset this spec is, by name, or ``custom``; for startup logs.

        >>> FeatureSpec(preset="raw").describe(), FeatureSpec().describe()
        ('raw (the readings only)', 'default (windows, EWMA, delta, rate, lag, pair, time of day)')
        >>> FeatureSpec.model_validate({"preset": "raw", "lags": [1]}).describe()
        'custom'
        """
        for name, values in PRESETS.items():
            if self == FeatureSpec.model_validate(values):
                return f"{name} ({PRESET_NOTES[name]})"
        return "custom"

    def schema_hash(self) -> str:
        """A short fingerprint of this spec: models record it, the API checks it."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def history(self) -> int:
        """Readings per sensor the count windows and lags need."""
        return max((*self.windows, *(k + 1 for k in self.lags), 1))


#: Named feature specs (``DRIFTLINE_FEATURES=raw``); a preset's keys can still be changed one by
#: one (``{"preset": "raw", "lags": [1, 2]}``).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "raw": {
        "windows": (),
        "time_windows": (),
        "ewma_half_lives": (),
        "delta": False,
        "rate": False,
        "lags": (),
        "time_of_day": False,
        "day_of_week": False,
        "pairs": (),
    },
}
PRESET_NOTES = {"default": "windows, EWMA, delta, rate, lag, pair, time of day", "raw": "the readings only"}


class RecentIds:
    """The newest ``maxlen`` event ids of a device, oldest first, with O(1) membership.

    Checked for every event (deduplication): a bare ``deque`` made that a scan of a thousand ids.

    Examples
    --------
    >>> ids = RecentIds(["a", "b"], maxlen=2)
    >>> ids.append("c")
    >>> "a" in ids, list(ids)
    (False, ['b', 'c'])
    """

    def __init__(self, ids: Iterable[str] = (), maxlen: int = RECENT_IDS) -> None:
        self._order: deque[str] = deque(maxlen=maxlen)
        self._members: set[str] = set()
        for event_id in ids:
            self.append(event_id)

    def append(self, event_id: str) -> None:
        if event_id in self._members:
            return
        if len(self._order) == self._order.maxlen:
            self._members.discard(self._order[0])  # about to fall off the deque
        self._order.append(event_id)
        self._members.add(event_id)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> str:
        return self._order[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecentIds) and self._order == other._order

    def __repr__(self) -> str:
        return f"RecentIds({list(self._order)!r}, maxlen={self._order.maxlen})"


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
    recent_ids: RecentIds = field(default_factory=RecentIds)
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
        """The state :meth:`to_json` wrote. Any non-finite value in it (a state checkpointed
        before the statistics were overflow-safe may hold ``Infinity`` or ``NaN``) is left out,
        so a poisoned device heals on its next reading instead of carrying it for good."""
        return cls(
            events=int(data.get("events", 0)),
            last=_finite_values(data.get("last", {})),
            last_at=_finite_values(data.get("last_at", {})),
            windows={
                k: deque(_finite_list(v), maxlen=max(len(v), 1)) for k, v in data.get("windows", {}).items()
            },
            timed={
                k: [p for p in map(_finite_list, v) if len(p) == 2] for k, v in data.get("timed", {}).items()
            },
            ewma={
                k: {h: p for h, p in ((h, _finite_list(p)) for h, p in v.items()) if len(p) == 2}
                for k, v in data.get("ewma", {}).items()
            },
            last_seen=_finite_values(data.get("last_seen", {})),
            recent_ids=RecentIds(data.get("recent_ids", [])),
            watermark=data.get("watermark"),
            last_ts=data.get("last_ts"),
            counts=Counter(data.get("counts", {})),
            features=_finite_values(data.get("features", {})),
        )

    def window_mean(self, name: str) -> float | None:
        values = self.windows.get(name)
        return sum(values) / len(values) if values else None


def _finite_values(values: dict[str, Any]) -> dict[str, float]:
    """``values`` as floats, without the non-finite ones."""
    return {k: x for k, x in ((k, float(v)) for k, v in values.items()) if math.isfinite(x)}


def _finite_list(values: Iterable[Any]) -> list[float]:
    """``values`` as floats, without the non-finite ones (a ``[ts, value]`` pair missing one is
    then shorter than two, and left out whole)."""
    return [x for x in map(float, values) if math.isfinite(x)]


ALL_STATS: tuple[Stat, ...] = ("mean", "std", "min", "max")


def _mean(values: list[float]) -> float:
    """The mean, finite for any finite values (their plain sum may not be: 2 x 1e308)."""
    n = len(values)
    mean = sum(values) / n
    if math.isfinite(mean):
        return mean
    return sum([x / n for x in values])  # each term is at most max|x| / n: no overflow


def _std(values: list[float], mean: float) -> float:
    """The population standard deviation, without overflowing where the result is a float.

    The usual sum of squares overflows once a deviation passes ~1e154 (a square of 1e200 is
    beyond a float, and ``** 2`` raises): then it is computed on deviations scaled by the
    largest one, and scaled back. Only a spread itself beyond the float range is infinite.
    """
    n = len(values)
    try:
        variance = sum([(x - mean) ** 2 for x in values]) / n
    except OverflowError:
        variance = math.inf
    if math.isfinite(variance):
        return math.sqrt(max(variance, 0.0))
    # x - mean may itself overflow (1e308 - -1e308): scale each term before subtracting
    scale = max(abs(x) for x in (*values, mean))
    return scale * math.sqrt(sum([(x / scale - mean / scale) ** 2 for x in values]) / n)


def _put_stats(
    features: dict[str, float], names: tuple[str, ...], values: list[float], wanted: tuple[Stat, ...]
) -> None:
    """``features[name] = stat(values)`` for each wanted stat and its feature name."""
    if wanted == ALL_STATS:  # the default, spelled out: this runs per sensor per window per event
        n = len(values)
        mean = sum(values) / n
        try:
            variance = sum([(x - mean) ** 2 for x in values]) / n
        except OverflowError:
            variance = math.inf
        if math.isfinite(mean + variance):
            std = math.sqrt(max(variance, 0.0))
        else:  # a huge value: the overflow-safe way, off the common path
            mean = _mean(values)
            std = _std(values, mean)
        features[names[0]] = mean
        features[names[1]] = std
        features[names[2]] = min(values)
        features[names[3]] = max(values)
        return
    mean = _mean(values)
    for stat, name in zip(wanted, names, strict=True):
        if stat == "mean":
            features[name] = mean
        elif stat == "std":
            features[name] = _std(values, mean)
        elif stat == "min":
            features[name] = min(values)
        else:
            features[name] = max(values)


def _first_after(points: list[list[float]], since: float) -> int:
    """Index of the first ``[ts, value]`` with ``ts > since`` in time-sorted ``points``."""
    return bisect.bisect_right(points, since, key=_ts)


def _ts(point: list[float]) -> float:
    return point[0]


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


@dataclass
class _Plan:
    """What :func:`featurize` derives from a spec, worked out once per spec, not per event."""

    history: int
    longest_window: float
    #: sensor -> its feature names, filled as sensors appear
    names: dict[str, _SensorNames] = field(default_factory=dict)


#: Per spec, by identity (hashing a pydantic model per event was a visible cost): the spec
#: itself, kept so that its id is not reused, and its plan.
_PLANS: dict[int, tuple[FeatureSpec, _Plan]] = {}


def _plan_for(spec: FeatureSpec) -> _Plan:
    found = _PLANS.get(id(spec))
    if found is None or found[0] is not spec:
        if len(_PLANS) >= 64:  # specs are few and long-lived; this only bounds a pathological caller
            _PLANS.clear()
        found = _PLANS[id(spec)] = (spec, _Plan(spec.history, max(spec.time_windows, default=0.0)))
    return found[1]


def _names(sensor: str, spec: FeatureSpec) -> _SensorNames:
    return _SensorNames(
        count=tuple((n, tuple(f"{sensor}_{stat}_{n}" for stat in spec.stats)) for n in spec.windows),
        timed=tuple(
            (sec, tuple(f"{sensor}_{stat}_{_label(sec)}" for stat in spec.stats)) for sec in spec.time_windows
        ),
        ewma=tuple((h, _label(h), f"{sensor}_ewma_{_label(h)}") for h in spec.ewma_half_lives),
        delta=f"{sensor}_delta",
        rate=f"{sensor}_rate",
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

    A reading that is not finite is left out (it never enters ``state``), as is a feature that
    comes out infinite; each is counted in ``state.counts["non_finite_features"]``:

    >>> featurize(s, {"t": 1e308, "u": float("nan")}, datetime(2026, 1, 1, 6, 0, 5), spec)["t_mean_2"]
    5e+307
    >>> s.counts["non_finite_features"]   # u
    1
    """
    at = ts.timestamp()
    plan = _plan_for(spec)
    history, longest_window, sensor_names = plan.history, plan.longest_window, plan.names
    features: dict[str, float] = {}
    stats = spec.stats
    max_points = spec.max_time_window_points
    dropped = 0
    for name, value in readings.items():
        if not math.isfinite(value):  # cleaning lets none through; a direct caller might
            dropped += 1
            continue
        features[name] = value
        names = sensor_names.get(name)
        if names is None:
            if len(sensor_names) >= 4096:  # bounded even if devices invent sensor names
                sensor_names.clear()
            names = sensor_names[name] = _names(name, spec)
        # rolling windows by count, and lags
        values = state.windows.get(name)
        if values is None or values.maxlen != history:
            values = state.windows[name] = deque(values or (), maxlen=history)
        values.append(value)
        recent = list(values)
        for n, window_names in names.count:
            _put_stats(features, window_names, recent if n >= len(recent) else recent[-n:], stats)
        # rolling windows by event time; an out-of-order reading sees only what came before it
        if spec.time_windows:
            points = state.timed.get(name)
            if points is None:
                points = state.timed[name] = []
            in_order = not points or at > points[-1][0]
            if in_order:
                points.append([at, value])
            else:
                bisect.insort(points, [at, value])
            horizon = points[-1][0] - longest_window
            while points and (points[0][0] <= horizon or len(points) > max_points):
                points.pop(0)
            for seconds, window_names in names.timed:
                since = at - seconds
                if in_order:  # every point is at or before this one: the window is a tail
                    window = [x for _, x in points[_first_after(points, since) :]]
                else:
                    window = [x for t, x in points if since < t <= at]
                # A reading as late as the longest window is evicted at once; it still belongs
                # to its own window.
                _put_stats(features, window_names, window or [value], stats)
        # exponentially weighted means, decaying with event time
        for half_life, key, feature in names.ewma:
            slot = state.ewma.setdefault(name, {})
            if key not in slot:
                slot[key] = [value, at]
            else:
                mean, then = slot[key]
                weight = 1 - 0.5 ** (max(at - then, 0.0) / half_life)
                moved = mean + weight * (value - mean)
                if not math.isfinite(moved):  # value - mean overflowed: the same mean, as a blend
                    moved = (1 - weight) * mean + weight * value
                slot[key] = [moved, max(at, then)]
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
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            if pair.op == "diff":
                features[pair.name] = a - b
            elif b != 0:
                features[pair.name] = a / b
    if spec.time_of_day or spec.day_of_week:
        # UTC: the same moment gives the same features whatever zone the device wrote it in.
        # From the epoch seconds when the zone is known: converting the datetime costs more.
        if ts.tzinfo is not None:
            days, second = divmod(int(at // 1), 86400)
            weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
            hour = second // 3600 + second % 3600 // 60 / 60 + second % 60 / 3600
        else:
            weekday = ts.weekday()
            hour = ts.hour + ts.minute / 60 + ts.second / 3600
        if spec.time_of_day:
            features["tod_sin"] = math.sin(2 * math.pi * hour / 24)
            features["tod_cos"] = math.cos(2 * math.pi * hour / 24)
        if spec.day_of_week:
            day = weekday + hour / 24
            features["dow_sin"] = math.sin(2 * math.pi * day / 7)
            features["dow_cos"] = math.cos(2 * math.pi * day / 7)
    # The last guard: a difference, ratio or rate of finite values can still be beyond a float.
    # One sum tells whether every value is finite (NaN and infinity carry through it); only then
    # are they looked at one by one (a sum of finite values may overflow on its own).
    non_finite = []
    if not math.isfinite(sum(features.values())):
        non_finite = [name for name, value in features.items() if not math.isfinite(value)]
        for name in non_finite:
            del features[name]
    if dropped or non_finite:
        state.counts[NON_FINITE_FEATURES] += dropped + len(non_finite)
    state.events += 1
    state.last_ts = at
    state.features = features
    return features
