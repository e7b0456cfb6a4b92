"""The featurizer as it was before the O(1) rewrite (commit ef90b99), kept as the reference the
parity tests compare against: every statistic recomputed from the window's values on every event,
the time windows as sorted ``[ts, value]`` lists. Straightforward, slow, and trusted."""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from driftline.streams.features import FeatureSpec


@dataclass
class ReferenceState:
    last: dict[str, float] = field(default_factory=dict)
    last_at: dict[str, float] = field(default_factory=dict)
    windows: dict[str, deque[float]] = field(default_factory=dict)
    timed: dict[str, list[list[float]]] = field(default_factory=dict)
    ewma: dict[str, dict[float, list[float]]] = field(default_factory=dict)
    non_finite: int = 0


def _mean(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    if math.isfinite(mean):
        return mean
    return sum([x / n for x in values])


def _std(values: list[float], mean: float) -> float:
    n = len(values)
    try:
        variance = sum([(x - mean) ** 2 for x in values]) / n
    except OverflowError:
        variance = math.inf
    if math.isfinite(variance):
        return math.sqrt(max(variance, 0.0))
    scale = max(abs(x) for x in (*values, mean))
    return scale * math.sqrt(sum([(x / scale - mean / scale) ** 2 for x in values]) / n)


def _put_stats(
    features: dict[str, float], prefix: str, suffix: str, values: list[float], spec: FeatureSpec
) -> None:
    mean = _mean(values)
    for stat in spec.stats:
        if stat == "mean":
            value = mean
        elif stat == "std":
            value = _std(values, mean)
        elif stat == "min":
            value = min(values)
        else:
            value = max(values)
        features[f"{prefix}_{stat}_{suffix}"] = value


def reference_featurize(
    state: ReferenceState, readings: dict[str, float], ts: datetime, spec: FeatureSpec
) -> dict[str, float]:
    at = ts.timestamp()
    longest = max(spec.time_windows, default=0.0)
    features: dict[str, float] = {}
    for name, value in readings.items():
        if not math.isfinite(value):
            state.non_finite += 1
            continue
        features[name] = value
        values = state.windows.setdefault(name, deque(maxlen=spec.history))
        values.append(value)
        recent = list(values)
        for n in spec.windows:
            _put_stats(features, name, str(n), recent[-n:], spec)
        if spec.time_windows:
            points = state.timed.setdefault(name, [])
            in_order = not points or at > points[-1][0]
            if in_order:
                points.append([at, value])
            else:
                # after the readings of the same time: the old code ordered those by value too, so
                # which of them the point cap dropped depended on their values, not on arrival
                bisect.insort(points, [at, value], key=lambda point: point[0])
            horizon = points[-1][0] - longest
            while points and (points[0][0] <= horizon or len(points) > spec.max_time_window_points):
                points.pop(0)
            for seconds in spec.time_windows:
                window = [x for t, x in points if at - seconds < t <= at]
                _put_stats(features, name, f"{seconds:g}s", window or [value], spec)
        for half_life in spec.ewma_half_lives:
            slot = state.ewma.setdefault(name, {})
            if half_life not in slot:
                slot[half_life] = [value, at]
            else:
                mean, then = slot[half_life]
                weight = 1 - 0.5 ** (max(at - then, 0.0) / half_life)
                moved = mean + weight * (value - mean)
                if not math.isfinite(moved):
                    moved = (1 - weight) * mean + weight * value
                slot[half_life] = [moved, max(at, then)]
            features[f"{name}_ewma_{half_life:g}s"] = slot[half_life][0]
        previous, previous_at = state.last.get(name), state.last_at.get(name)
        if previous is not None:
            if spec.delta:
                features[f"{name}_delta"] = value - previous
            if spec.rate and previous_at is not None and at > previous_at:
                features[f"{name}_rate"] = (value - previous) / (at - previous_at)
        for k in spec.lags:
            if len(recent) > k:
                features[f"{name}_lag_{k}"] = recent[-1 - k]
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
        days, second = divmod(int(at // 1), 86400)
        weekday = (days + 3) % 7
        hour = second // 3600 + second % 3600 // 60 / 60 + second % 60 / 3600
        if spec.time_of_day:
            features["tod_sin"] = math.sin(2 * math.pi * hour / 24)
            features["tod_cos"] = math.cos(2 * math.pi * hour / 24)
        if spec.day_of_week:
            day = weekday + hour / 24
            features["dow_sin"] = math.sin(2 * math.pi * day / 7)
            features["dow_cos"] = math.cos(2 * math.pi * day / 7)
    for name in [n for n, v in features.items() if not math.isfinite(v)]:
        del features[name]
        state.non_finite += 1
    return features
