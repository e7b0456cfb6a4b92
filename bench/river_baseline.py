"""What a user would write instead of driftline: a plain River program that computes driftline's
default features per device with River's own tools, and runs the same default model.

    python -m bench.river_baseline [--events 20000]

Per device (``feature_extraction.Agg`` grouped by ``device_id``) and sensor, named as driftline
names them (``streams/features.py``):

- ``s_{mean,std,min,max}_10``: ``utils.Rolling(stats.Mean / stats.Var(ddof=0), 10)``,
  ``stats.RollingMin(10)``, ``stats.RollingMax(10)``;
- ``s_{mean,std}_300s``: ``utils.TimeRolling(stats.Mean / stats.Var(ddof=0), 300 s)``;
  ``s_{min,max}_300s``: River has no time-rolling min or max (``stats.Min`` cannot revert), so a
  small one (:class:`TimeRollingExtremes`, monotonic deques);
- ``s_ewma_60s``: weights halving every 60 s of event time; ``stats.EWMean`` decays per reading,
  not per second, so a small one (:class:`HalfLifeMean`);
- ``s_lag_1`` and ``s_delta``: ``stats.Shift(1)``; ``s_rate``: the delta over the seconds since the
  previous reading; ``temperature_minus_humidity``; ``tod_*``, ``dow_*`` (UTC).

A missing reading is imputed as driftline's default catalog does (humidity from its 10-reading
mean, the others from their last value; driftline also stops imputing after a sensor's maximum
gap, which this program does not). The readings are not range-checked. The time windows keep every
reading of their 300 s (driftline keeps at most ``max_time_window_points`` = 1,000 per sensor) and an
out-of-order reading is only added to them (driftline ends its windows at the reading's own time).
On in-order events without gaps, the vectors equal driftline's to about 1e-12
(``tests/bench/test_river_baseline.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from river import feature_extraction, metrics, stats, utils

from driftline.models.specs import ModelSpec
from driftline.streams.catalog import DEFAULT_CATALOG

SENSORS = ("temperature", "humidity", "vibration", "voltage")
TARGET = "power"
WINDOW = 10
PERIOD = 300.0
HALF_LIFE = 60.0


class TimeRollingExtremes:
    """Min and max of the readings of the last ``period`` seconds (monotonic deques of
    ``(t, x)``): what ``utils.TimeRolling`` would do for ``stats.Min`` / ``stats.Max`` if they
    could revert."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.lows: deque[tuple[float, float]] = deque()
        self.highs: deque[tuple[float, float]] = deque()

    def update(self, x: float, t: float) -> None:
        while self.lows and self.lows[-1][1] > x:
            self.lows.pop()
        self.lows.append((t, x))
        while self.highs and self.highs[-1][1] < x:
            self.highs.pop()
        self.highs.append((t, x))
        since = t - self.period
        while self.lows[0][0] <= since:
            self.lows.popleft()
        while self.highs[0][0] <= since:
            self.highs.popleft()

    def get(self) -> tuple[float, float]:
        return self.lows[0][1], self.highs[0][1]


class HalfLifeMean:
    """A mean whose weights halve every ``half_life`` seconds of event time."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self.mean: float | None = None
        self.t = 0.0

    def update(self, x: float, t: float) -> None:
        if self.mean is None:
            self.mean, self.t = x, t
            return
        weight = 1 - 0.5 ** (max(t - self.t, 0.0) / self.half_life)
        self.mean += weight * (x - self.mean)
        self.t = max(t, self.t)

    def get(self) -> float:
        assert self.mean is not None
        return self.mean


class SensorFeatures:
    """One sensor's features for every device: River aggregates grouped by ``device_id``."""

    def __init__(self, sensor: str) -> None:
        self.sensor = sensor
        period = timedelta(seconds=PERIOD)
        by = "device_id"
        self.mean = feature_extraction.Agg(sensor, by, utils.Rolling(stats.Mean, window_size=WINDOW))
        self.var = feature_extraction.Agg(sensor, by, utils.Rolling(stats.Var, window_size=WINDOW, ddof=0))
        self.min = feature_extraction.Agg(sensor, by, stats.RollingMin(WINDOW))
        self.max = feature_extraction.Agg(sensor, by, stats.RollingMax(WINDOW))
        self.time_mean = feature_extraction.Agg(sensor, by, utils.TimeRolling(stats.Mean, period=period))
        self.time_var = feature_extraction.Agg(
            sensor, by, utils.TimeRolling(stats.Var, period=period, ddof=0)
        )
        self.previous = feature_extraction.Agg(sensor, by, stats.Shift(1))
        self.extremes: dict[str, TimeRollingExtremes] = {}
        self.ewma: dict[str, HalfLifeMean] = {}
        self.last_at: dict[str, float] = {}
        self.names = {
            key: f"{sensor}_{key}"
            for key in (
                f"mean_{WINDOW}",
                f"std_{WINDOW}",
                f"min_{WINDOW}",
                f"max_{WINDOW}",
                f"mean_{PERIOD:g}s",
                f"std_{PERIOD:g}s",
                f"min_{PERIOD:g}s",
                f"max_{PERIOD:g}s",
                f"ewma_{HALF_LIFE:g}s",
                "delta",
                "rate",
                "lag_1",
            )
        }

    def learn_and_transform(self, x: dict[str, Any], t: datetime, at: float, out: dict[str, float]) -> None:
        """Update the device's statistics with ``x`` (its readings and ``device_id``) and write
        this sensor's features into ``out``."""
        device, value, name = x["device_id"], x[self.sensor], self.names
        for agg in (self.mean, self.var, self.min, self.max, self.previous):
            agg.learn_one(x)
        self.time_mean.learn_one(x, t=t)
        self.time_var.learn_one(x, t=t)
        extremes = self.extremes.get(device) or self.extremes.setdefault(device, TimeRollingExtremes(PERIOD))
        extremes.update(value, at)
        ewma = self.ewma.get(device) or self.ewma.setdefault(device, HalfLifeMean(HALF_LIFE))
        ewma.update(value, at)
        out[self.sensor] = value
        (out[name[f"mean_{WINDOW}"]],) = self.mean.transform_one(x).values()
        (variance,) = self.var.transform_one(x).values()
        out[name[f"std_{WINDOW}"]] = math.sqrt(max(variance, 0.0))
        (out[name[f"min_{WINDOW}"]],) = self.min.transform_one(x).values()
        (out[name[f"max_{WINDOW}"]],) = self.max.transform_one(x).values()
        (out[name[f"mean_{PERIOD:g}s"]],) = self.time_mean.transform_one(x).values()
        (variance,) = self.time_var.transform_one(x).values()
        out[name[f"std_{PERIOD:g}s"]] = math.sqrt(max(variance, 0.0))
        out[name[f"min_{PERIOD:g}s"]], out[name[f"max_{PERIOD:g}s"]] = extremes.get()
        out[name[f"ewma_{HALF_LIFE:g}s"]] = ewma.get()
        (previous,) = self.previous.transform_one(x).values()
        if previous is not None:
            out[name["delta"]] = value - previous
            then = self.last_at[device]
            if at > then:
                out[name["rate"]] = (value - previous) / (at - then)
            out[name["lag_1"]] = previous
        self.last_at[device] = at


class RiverFeaturizer:
    """driftline's default features, per device, from River's tools."""

    def __init__(self) -> None:
        self.sensors: dict[str, SensorFeatures] = {}
        self.last: dict[tuple[str, str], float] = {}

    def readings(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event's readings with the missing ones imputed (humidity from its rolling mean,
        the others from their last value), and its ``device_id``."""
        device = event["device_id"]
        x: dict[str, Any] = {"device_id": device}
        for sensor, value in event["readings"].items():
            if sensor == TARGET:
                continue
            if value is None:
                features = self.sensors.get(sensor)
                if DEFAULT_CATALOG.get(sensor) and DEFAULT_CATALOG[sensor].impute == "mean" and features:
                    value = (
                        features.mean._groups[(device,)].get() if (device,) in features.mean._groups else None
                    )
                else:
                    value = self.last.get((device, sensor))
                if value is None:
                    continue
            x[sensor] = float(value)
            self.last[(device, sensor)] = float(value)
        return x

    def features(self, event: dict[str, Any]) -> dict[str, float]:
        aware = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
        at = aware.timestamp()
        t = aware.astimezone(UTC).replace(tzinfo=None)  # utils.TimeRolling compares naive times
        x = self.readings(event)
        out: dict[str, float] = {}
        for sensor in x:
            if sensor == "device_id":
                continue
            features = self.sensors.get(sensor) or self.sensors.setdefault(sensor, SensorFeatures(sensor))
            features.learn_and_transform(x, t, at, out)
        if "temperature" in x and "humidity" in x:
            out["temperature_minus_humidity"] = x["temperature"] - x["humidity"]
        days, second = divmod(int(at // 1), 86400)
        hour = second // 3600 + second % 3600 // 60 / 60 + second % 60 / 3600
        day = (days + 3) % 7 + hour / 24  # 1970-01-01 was a Thursday
        out["tod_sin"] = math.sin(2 * math.pi * hour / 24)
        out["tod_cos"] = math.cos(2 * math.pi * hour / 24)
        out["dow_sin"] = math.sin(2 * math.pi * day / 7)
        out["dow_cos"] = math.cos(2 * math.pi * day / 7)
        return out


def river_program(messages: Iterable[bytes], spec: ModelSpec | None = None) -> int:
    """Decode each message (a JSON array of events), featurize, predict, score, learn: the
    whole program. Returns how many events the model learned."""
    model = (spec or ModelSpec(name="default")).build()
    metric = metrics.MAE()
    featurizer = RiverFeaturizer()
    learned = 0
    for message in messages:
        for event in json.loads(message):
            x = featurizer.features(event)
            y = event.get("target")
            if y is None:
                continue
            y_pred = model.predict_one(x)
            metric.update(y, y_pred)
            model.learn_one(x, y)
            learned += 1
    return learned


def river_program_rate(events: list[dict[str, Any]], batch: int, spec: ModelSpec | None = None) -> float:
    messages = [json.dumps(events[i : i + batch]).encode() for i in range(0, len(events), batch)]
    started = time.perf_counter()
    learned = river_program(messages, spec)
    return learned / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from bench.ingest import make_events

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rate = river_program_rate(make_events(5_000 if args.quick else args.events), args.batch)
    print(f"plain River program (featurize + predict/score/learn): {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
