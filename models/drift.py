"""Drift detection: River's detectors on a model's error, its input features and its scores.

A model's spec says which detectors watch it (:class:`DriftSpec`, in ``DRIFTLINE_MODELS`` under
``"drift"``). :class:`DriftMonitor` keeps one detector per signal — the prequential error
(regression, forecast: absolute error; classification: 0/1 error), each watched feature's value
(label-free: drift shows even when labels come late or never), and an anomaly model's score — and
turns a detection into an :class:`~driftline.core.alerts.Alert`.

The monitor is part of the learner, so it is in every snapshot: detections are a pure function
of the event stream, the same in-process, through the pipeline and after a crash.

One change, one alert: a signal does not alert during its warm-up, nor again within its
cooldown (River's ADWIN can fire twice on one change). On the error and the score, only a change
for the worse alerts by default: River's detectors are two-sided, and half of ADWIN's alarms on a
learning model's error come while the error is *falling*.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from river import drift

from driftline.core.alerts import Alert, Severity

#: Detectors by name: River's class, and whether it reads a 0/1 stream only.
DETECTORS: dict[str, tuple[type, bool]] = {
    "adwin": (drift.ADWIN, False),
    "page_hinkley": (drift.PageHinkley, False),
    "kswin": (drift.KSWIN, False),
    "ddm": (drift.binary.DDM, True),
    "eddm": (drift.binary.EDDM, True),
    "hddm_a": (drift.binary.HDDMA, True),
    "hddm_w": (drift.binary.HDDMW, True),
    "fhddm": (drift.binary.FHDDM, True),
}

#: What the model says of itself when an alert fires: ``{"metric": {...}, "events_learned": n}``
#: (called only then: a metrics report costs more than a detector update).
MetricNow = Callable[[], dict[str, Any]]

#: Values a change is judged on: the recent ones (after) against the ones before them.
RECENT, PREVIOUS = 100, 1000

#: Features made from time alone: never watched by default (a clock always "drifts").
_TIME_FEATURES = {"tod_sin", "tod_cos", "dow_sin", "dow_cos"}


class DetectorSpec(BaseModel):
    """A River drift detector by name, with its parameters.

    >>> DetectorSpec(detector="page_hinkley", params={"threshold": 20}).build().threshold
    20
    >>> DetectorSpec(detector="nope")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for DetectorSpec
      Value error, unknown drift detector 'nope': use one of adwin, page_hinkley, kswin, ddm, ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str = "adwin"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buildable(self) -> DetectorSpec:
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown drift detector {self.detector!r}: use one of {', '.join(DETECTORS)}")
        self.build()
        return self

    @property
    def binary(self) -> bool:
        return DETECTORS[self.detector][1]

    def build(self) -> Any:
        cls = DETECTORS[self.detector][0]
        params = dict(self.params)
        if self.detector == "kswin":
            params.setdefault("seed", 42)  # KSWIN samples at random: fixed, so replays agree
        try:
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad params for drift detector {self.detector!r}: {exc}") from exc


class DriftSpec(BaseModel):
    """Which signals of a model are watched, by what, and how alerts are paced.

    >>> DriftSpec().error.detector, DriftSpec().warm_up, DriftSpec().cooldown
    ('adwin', 1000, 1000)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: On the prequential error (``None``: not watched).
    error: DetectorSpec | None = DetectorSpec()
    #: On each watched feature's values. A stricter ADWIN (delta 1e-4) than on the error: several
    #: features are watched at once, and at River's default a stationary feature raised about one
    #: false alarm per 100,000 values; at 1e-4 none in 600,000, and a one-sigma shift is still
    #: seen within about 50 values.
    features: DetectorSpec | None = DetectorSpec(params={"delta": 1e-4})
    #: Feature names or shell patterns to watch; empty: the model's raw readings (no derived
    #: feature: a windowed statistic follows every daily cycle).
    watch: tuple[str, ...] = ()
    #: On an anomaly model's scores.
    scores: DetectorSpec | None = DetectorSpec()
    #: Values a signal must have seen before it may alert.
    warm_up: int = Field(1000, ge=0)
    #: Values after an alert during which the same signal does not alert again.
    cooldown: int = Field(1000, ge=0)
    #: Error and score: alert only when the mean got worse.
    increases_only: bool = True


@dataclass
class Watch:
    """One signal under one detector, with what an alert about it reports."""

    signal: str
    spec: DetectorSpec
    detector: Any
    seen: int = 0
    #: No alert before this many values (warm-up, then each cooldown).
    quiet_until: int = 0
    #: The last 100 values, and the mean of the 1,000 before them: what a change is judged by
    #: (after, before). Local on purpose: a mean since the start would hold the model's first,
    #: still learning, errors and make a real change for the worse look like an improvement.
    recent: deque[float] = field(default_factory=deque)
    previous: deque[float] = field(default_factory=deque)
    #: Their sums, kept as values come and go (this runs for every value of every signal).
    recent_sum: float = 0.0
    previous_sum: float = 0.0
    alerts: int = 0
    #: The alert of the change this signal is in, until a cooldown passes without another.
    firing: Alert | None = None
    width_before: int | None = None

    def update(self, value: float) -> bool:
        """Feed one value; ``True`` when the detector saw a change past warm-up and cooldown
        (then :meth:`judge` says whether it alerts)."""
        self.seen += 1
        detector = self.detector
        self.width_before = getattr(detector, "width", None)
        detector.update(value)
        recent = self.recent
        if len(recent) == RECENT:
            leaving = recent.popleft()
            self.recent_sum -= leaving
            previous = self.previous
            if len(previous) == PREVIOUS:
                self.previous_sum -= previous.popleft()
            previous.append(leaving)
            self.previous_sum += leaving
        recent.append(value)
        self.recent_sum += value
        return bool(detector.drift_detected) and self.seen > self.quiet_until

    def judge(self, worse_only: bool) -> tuple[bool, int | None, float | None, float | None]:
        """After a detection: (alert?, estimated change point, mean before and after the change)."""
        before = self.previous_sum / len(self.previous) if self.previous else None
        after = self.recent_sum / len(self.recent)
        if worse_only and before is not None and after <= before:
            return False, None, before, after  # a change for the better: the model is improving
        change = None
        width, new_width = self.width_before, getattr(self.detector, "width", None)
        if width is not None and new_width is not None and new_width < width:
            change = self.seen - int(new_width)  # ADWIN keeps the window since the change
        return True, change, before, after


@dataclass
class DriftMonitor:
    """A model's detectors and the alerts they raised since the last snapshot.

    Examples
    --------
    >>> monitor = DriftMonitor.create("m", "regression", DriftSpec(warm_up=0, cooldown=0, features=None))
    >>> fired = [monitor.on_error(0.1 if i < 500 else 5.0, "events/0", i, 0, float(i), dict)
    ...          for i in range(1000)]
    >>> [a.position for a in fired if a][:1], len(monitor.outbox) >= 1
    ([512], True)
    """

    model: str
    task: str
    spec: DriftSpec
    watches: dict[str, Watch] = field(default_factory=dict)
    #: Alerts raised and not yet in a published snapshot.
    outbox: list[Alert] = field(default_factory=list)
    #: Resolved patterns -> features watched (by record shape).
    _watched: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def create(cls, model: str, task: str, spec: DriftSpec) -> DriftMonitor:
        return cls(model, task, spec)

    def _watch(self, signal: str, spec: DetectorSpec) -> Watch:
        watch = self.watches.get(signal)
        if watch is None:
            watch = self.watches[signal] = Watch(signal, spec, spec.build(), quiet_until=self.spec.warm_up)
        return watch

    def _fire(
        self,
        watch: Watch,
        value: float,
        worse_only: bool,
        severity: Severity,
        source: str,
        offset: int,
        index: int,
        ts: float,
        metric: MetricNow,
    ) -> Alert | None:
        if not watch.update(value):
            if watch.firing is not None and watch.seen >= watch.quiet_until:
                self._resolve(watch, watch.firing, ts)  # stable for a whole cooldown since the change
            return None
        return self._detected(watch, worse_only, severity, source, offset, index, ts, metric)

    def _detected(
        self,
        watch: Watch,
        worse_only: bool,
        severity: Severity,
        source: str,
        offset: int,
        index: int,
        ts: float,
        metric: MetricNow,
    ) -> Alert | None:
        """``watch``'s detector saw a change past warm-up and cooldown: the alert, if it is one."""
        fired, change, before, after = watch.judge(worse_only)
        if not fired:
            if watch.firing is not None and watch.seen >= watch.quiet_until:
                self._resolve(watch, watch.firing, ts)
            return None
        watch.quiet_until = watch.seen + self.spec.cooldown
        watch.alerts += 1
        alert = Alert.create(
            self.model,
            watch.signal,
            watch.spec.detector,
            watch.spec.params,
            severity,
            source,
            offset,
            index,
            ts,
            watch.seen,
            change_point=change,
            before=before,
            after=after,
            **metric(),
        )
        watch.firing = alert
        self.outbox.append(alert)
        return alert

    def on_error(
        self, error: float, source: str, offset: int, index: int, ts: float, metric: MetricNow
    ) -> Alert | None:
        """The prequential error of one scored prediction (0/1 for a classifier)."""
        if self.spec.error is None:
            return None
        return self._fire(
            self._watch("error", self.spec.error),
            error,
            self.spec.increases_only,
            "drift",
            source,
            offset,
            index,
            ts,
            metric,
        )

    def on_score(
        self, score: float, source: str, offset: int, index: int, ts: float, metric: MetricNow
    ) -> Alert | None:
        """An anomaly model's score of one event."""
        if self.spec.scores is None or self.task != "anomaly":
            return None
        return self._fire(
            self._watch("score", self.spec.scores),
            score,
            self.spec.increases_only,
            "drift",
            source,
            offset,
            index,
            ts,
            metric,
        )

    def on_features(
        self, features: dict[str, float], source: str, offset: int, index: int, ts: float, metric: MetricNow
    ) -> list[Alert]:
        """One event's watched feature values (label-free)."""
        if self.spec.features is None:
            return []
        names = tuple(features)
        watched = self._watched.get(names)
        if watched is None:
            if len(self._watched) >= 64:  # shapes are few; this only bounds an odd stream
                self._watched.clear()
            watched = self._watched[names] = tuple(
                (name, f"feature:{name}") for name in watched_features(names, self.spec.watch)
            )
        fired = []
        watches, spec = self.watches, self.spec.features
        for name, signal in watched:
            # _fire's quiet case inline: this runs for every watched feature of every event.
            watch = watches.get(signal) or self._watch(signal, spec)
            if not watch.update(features[name]):
                if watch.firing is not None and watch.seen >= watch.quiet_until:
                    self._resolve(watch, watch.firing, ts)
                continue
            alert = self._detected(watch, False, "warning", source, offset, index, ts, metric)
            if alert is not None:
                fired.append(alert)
        return fired

    def _resolve(self, watch: Watch, firing: Alert, ts: float, resolved_by: str | None = None) -> None:
        """``firing``, the alert of ``watch``, resolved now (into the outbox, for the next snapshot)."""
        self.outbox.append(
            replace(
                firing,
                status="resolved",
                resolved_position=watch.seen,
                resolved_event_time=ts,
                resolved_by=resolved_by,
            )
        )
        watch.firing = None

    def seen(self, signal: str) -> int:
        """Values ``signal`` has seen (0 before its first)."""
        watch = self.watches.get(signal)
        return 0 if watch is None else watch.seen

    def restart(self, signal: str, resolved_by: str, ts: float) -> None:
        """Start ``signal`` over (a fresh detector and warm-up): the model it watched was replaced.
        Its firing alert, if any, is resolved by ``resolved_by``. Its count goes on, so change
        points stay comparable."""
        watch = self.watches.get(signal)
        if watch is None:
            return
        if watch.firing is not None:
            self._resolve(watch, watch.firing, ts, resolved_by)
        self.watches[signal] = Watch(
            signal,
            watch.spec,
            watch.spec.build(),
            seen=watch.seen,
            quiet_until=watch.seen + self.spec.warm_up,
        )

    def take_outbox(self) -> list[Alert]:
        """The alerts to record with the next snapshot (and forget here)."""
        taken, self.outbox = self.outbox, []
        return taken


def watched_features(names: tuple[str, ...], patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The features a monitor watches among ``names``: matching ``patterns``, or the raw readings.

    A raw reading is a feature no other feature's name extends (``temperature``, not
    ``temperature_mean_10``), that is not made from time or from two sensors.

    >>> names = ("temperature", "temperature_mean_10", "humidity", "temperature_minus_humidity",
    ...          "tod_sin", "vibration", "vibration_delta")
    >>> watched_features(names, ())
    ('temperature', 'humidity', 'vibration')
    >>> watched_features(names, ("vib*",))
    ('vibration', 'vibration_delta')
    """
    if patterns:
        return tuple(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    present = set(names)
    return tuple(
        n
        for n in names
        if n not in _TIME_FEATURES
        and not any(n.startswith(f"{other}_") for other in present if other != n)
        and not any(f"_{op}_" in n for op in ("minus", "over"))
    )
