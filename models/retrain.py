"""Self-healing models: a challenger races the champion in shadow, and the better one serves.

A model's spec says when a race starts (:class:`RetrainSpec`, in ``DRIFTLINE_MODELS`` under
``"retrain"``): on a drift of its error (``on_drift``, the default), every N labelled events
(``periodic``), or ``never``. A spec with a ``search`` also races its candidate parameter sets
from the first event. A race is :class:`Race`: the challengers (one, or one per search candidate)
warm-started on the recent labelled events since the detector's estimated change point, then
scored prequentially on the same events as the champion — each predicts before it learns, and
only the champion is served. :func:`decide` ends it: the best challenger is promoted when its
rolling metric beats the champion's by the margin after at least ``min_events`` scored events,
and the race is retired when none has won within ``max_events``.

The race lives in the learner, so it is in every snapshot: a worker killed mid-race resumes it
and decides at the same event as one that never stopped. One race per model at a time: an error
drift of the champion during a race retires that race (its challengers learned the regime before
the new change) and starts a new one from the new change point. The cooldown between two alerts
of a signal (1,000 values by default) is longer than a race's ``min_events``, so a stream that
keeps changing still lets races finish.

Every spawn, promotion and retirement is a :class:`ModelEvent`, recorded with the snapshot that
follows it (the registry's audit log, the ``model-events`` topic) exactly as alerts are.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from river import utils

#: The most candidates a search may race at once: each costs a model's learning per event.
MAX_CANDIDATES = 16


class ParamRange(BaseModel):
    """Where a random search draws one parameter from: ``[low, high]`` (log-uniform with
    ``log``; integers when both ends are), or one of ``choices``.

    >>> ParamRange(low=1, high=4).draw(random.Random(0))
    4
    >>> 0.001 <= ParamRange(low=0.001, high=0.1, log=True).draw(random.Random(0)) <= 0.1
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @model_validator(mode="after")
    def _one_kind(self) -> ParamRange:
        if self.choices and (self.low is not None or self.high is not None):
            raise ValueError("a parameter range has either choices or low/high, not both")
        if not self.choices:
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError("a parameter range needs low <= high (or choices)")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
        return self

    def draw(self, rng: random.Random) -> Any:
        if self.choices or self.low is None or self.high is None:  # validated: choices, or both ends
            return rng.choice(self.choices)
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return rng.randint(self.low, self.high)
        return rng.uniform(self.low, self.high)


class SearchSpec(BaseModel):
    """Candidate parameter sets: every combination of ``grid``, or ``draws`` random draws from
    ``ranges`` (seeded: the same spec gives the same candidates). Each candidate's parameters go
    over the spec's own ``params``.

    >>> SearchSpec(grid={"l2": [0.0, 0.01], "intercept_lr": [0.01, 0.1]}).candidates()[:2]
    [{'l2': 0.0, 'intercept_lr': 0.01}, {'l2': 0.0, 'intercept_lr': 0.1}]
    >>> len(SearchSpec(ranges={"l2": {"low": 0.0, "high": 0.1}}, draws=3).candidates())
    3
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: dict[str, tuple[Any, ...]] = Field(default_factory=dict)
    ranges: dict[str, ParamRange] = Field(default_factory=dict)
    draws: int = Field(0, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _bounded(self) -> SearchSpec:
        if bool(self.grid) == bool(self.ranges):
            raise ValueError("a search gives a grid or ranges (with draws), one of them")
        if self.ranges and not self.draws:
            raise ValueError("a random search needs draws > 0")
        count = len(self.candidates())
        if not 1 <= count <= MAX_CANDIDATES:
            raise ValueError(f"a search races 1 to {MAX_CANDIDATES} candidates, not {count}")
        return self

    def candidates(self) -> list[dict[str, Any]]:
        if self.grid:
            names = list(self.grid)
            return [
                dict(zip(names, values, strict=True))
                for values in itertools.product(*(self.grid[n] for n in names))
            ]
        rng = random.Random(self.seed)  # noqa: S311  (seeded on purpose: the same spec, the same draws)
        return [{name: r.draw(rng) for name, r in self.ranges.items()} for _ in range(self.draws)]


class RetrainSpec(BaseModel):
    """When a model races challengers, and how a race is judged.

    >>> spec = RetrainSpec()
    >>> spec.policy, spec.start, spec.margin, spec.min_events, spec.max_events
    ('on_drift', 'fresh', 0.02, 500, 5000)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``on_drift``: race when the error drifts; ``periodic``: every ``every`` labelled events;
    #: ``never``.
    policy: Literal["on_drift", "periodic", "never"] = "on_drift"
    every: int = Field(10_000, ge=1)
    #: A challenger starts untrained (``fresh``) or as a copy of the champion (``copy``).
    start: Literal["fresh", "copy"] = "fresh"
    #: Recent labelled events kept to warm-start a challenger (those since the change point).
    buffer: int = Field(1000, ge=0)
    #: A challenger wins when its rolling metric is better than the champion's by this fraction.
    margin: float = Field(0.02, ge=0.0)
    #: Events scored in the race before a challenger may win, and after which the race ends.
    min_events: int = Field(500, ge=1)
    max_events: int = Field(5000, ge=1)
    #: Events in the rolling window the race compares.
    window: int = Field(500, ge=1)
    #: Candidate parameter sets raced from the first event (and on each retraining).
    search: SearchSpec | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RetrainSpec:
        if self.min_events > self.max_events:
            raise ValueError("retrain: min_events must not exceed max_events")
        return self

    @property
    def active(self) -> bool:
        return self.policy != "never" or self.search is not None

    def describe(self) -> str:
        """In words, for the startup log and ``driftline config``.

        >>> RetrainSpec().describe()
        'retrains on drift (a challenger must beat it by 2% over 500 to 5,000 events)'
        >>> RetrainSpec(policy="never").describe()
        'never retrains'
        """
        when = {
            "on_drift": "retrains on drift",
            "periodic": f"retrains every {self.every:,} labelled events",
            "never": "never retrains",
        }[self.policy]
        if self.search is not None:
            when += f", searches {len(self.search.candidates())} parameter sets"
        if not self.active:
            return when
        return (
            f"{when} (a challenger must beat it by {self.margin:.0%} over "
            f"{self.min_events:,} to {self.max_events:,} events)"
        )


@dataclass
class Contender:
    """One challenger in a race: its model and its rolling metric over the race's events."""

    label: str
    params: dict[str, Any]
    model: Any
    metric: Any
    scored: int = 0

    def value(self) -> float | None:
        return _value(self.metric, self.scored)


@dataclass
class Race:
    """Challengers against the champion on the same events (see the module's docstring)."""

    id: str
    #: ``drift``, ``periodic`` or ``search``.
    reason: str
    #: The drift alert that started it, if one did.
    alert: str | None
    #: Where it started: source, offset, index, event time, and the champion's events learned.
    started: dict[str, Any]
    champion: Any
    contenders: list[Contender]
    warm_started: int = 0
    #: Events scored since it started (the champion's count).
    events: int = 0

    def champion_value(self) -> float | None:
        return _value(self.champion, self.events)

    def standings(self) -> dict[str, Any]:
        """Plain numbers: the champion's and each challenger's rolling metric so far."""
        return {
            "race": self.id,
            "reason": self.reason,
            "alert": self.alert,
            "events": self.events,
            "warm_started": self.warm_started,
            "champion": self.champion_value(),
            "challengers": [
                {"label": c.label, "params": c.params, "metric": c.value(), "events": c.scored}
                for c in self.contenders
            ],
        }


@dataclass(frozen=True)
class ModelEvent:
    """A spawn, promotion or retirement, as the audit log and the ``model-events`` topic carry it."""

    action: Literal["spawn", "promote", "retire"]
    model: str
    race: str
    reason: str
    #: Where in the stream it happened, and the event's time.
    source: str
    offset: int
    index: int
    event_time: float
    #: The race's standings: both models' (or every candidate's) metrics.
    standings: dict[str, Any] = field(default_factory=dict)
    #: In words, for people.
    why: str = ""
    alert: str | None = None
    #: promote: which challenger won.
    winner: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def rolling_metric(make: Any, kwargs: dict[str, Any], window: int) -> Any:
    return utils.Rolling(make(**kwargs), window_size=window)


def _value(metric: Any, scored: int) -> float | None:
    if not scored:
        return None
    value = float(metric.get())
    return value if math.isfinite(value) else None


def improvement(challenger: float, champion: float, bigger_is_better: bool) -> float:
    """How much better ``challenger`` is, as a fraction of the champion's value.

    >>> round(improvement(0.9, 0.8, True), 3), round(improvement(0.5, 1.0, False), 3)
    (0.125, 0.5)
    """
    gain = challenger - champion if bigger_is_better else champion - challenger
    return gain / max(abs(champion), 1e-12)


def decide(race: Race, spec: RetrainSpec, bigger_is_better: bool) -> tuple[str, Contender | None] | None:
    """``("promote", winner)``, ``("retire", None)`` or ``None`` (the race goes on).

    >>> from river import metrics
    >>> champ, chal = metrics.Accuracy(), metrics.Accuracy()
    >>> for y, a, b in [(1, 1, 1), (1, 0, 1), (0, 0, 0), (1, 0, 1)]:
    ...     _ = champ.update(y, a), chal.update(y, b)
    >>> race = Race("r", "drift", None, {}, champ, [Contender("challenger", {}, None, chal, 4)], events=4)
    >>> decide(race, RetrainSpec(min_events=4, max_events=10), True)[0]
    'promote'
    >>> decide(race, RetrainSpec(min_events=5, max_events=10), True) is None
    True
    """
    if race.events < spec.min_events:
        return None
    champion = race.champion_value()
    scored = [(c, c.value()) for c in race.contenders]
    ranked = sorted(
        ((c, v) for c, v in scored if v is not None),
        key=lambda cv: cv[1],
        reverse=bigger_is_better,
    )
    if ranked and champion is not None:
        best, value = ranked[0]
        gain = improvement(value, champion, bigger_is_better)
        if gain > 0 and gain >= spec.margin:  # strictly better: a tie never replaces the champion
            return "promote", best
    if race.events >= spec.max_events:
        return "retire", None
    return None


def warm_start_events(
    history: Iterable[tuple[int, dict[str, float], Any]], change_point: int | None
) -> list[tuple[dict[str, float], Any]]:
    """The buffered labelled events after the estimated change point (all when it is unknown).

    >>> warm_start_events([(1, {"x": 1.0}, 0), (2, {"x": 2.0}, 1)], change_point=1)
    [({'x': 2.0}, 1)]
    """
    return [(x, y) for seen, x, y in history if change_point is None or seen > change_point]
