"""A drift alert: what an operator is told when a model's world changes. Pure data, JSON in and out.

The learner raises alerts as it learns (:mod:`driftline.models.drift`); they travel inside the
model's state until the snapshot that contains them is published, which writes them to Redis in
the same transaction (:mod:`driftline.models.registry`): an alert is recorded exactly once, and a
replay after a crash raises the same alert with the same id at the same position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["warning", "drift"]
Status = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Alert:
    """One change detected on one signal of one model.

    Examples
    --------
    >>> alert = Alert.create("m", "error", "adwin", {}, "drift", "events/0", 120, 0, 1.7e9, 900)
    >>> alert.id
    'm:error:events/0:120:0'
    >>> Alert.from_json(alert.to_json()) == alert
    True
    """

    #: ``model:signal:source:offset:index``: the same event stream gives the same id.
    id: str
    model: str
    #: ``error`` (the prequential error), ``score`` (an anomaly model's score), ``feature:<name>``,
    #: or ``snapshot`` (a stored version refused: tampered, unknown key, unreadable).
    signal: str
    detector: str
    params: dict[str, Any]
    severity: Severity
    #: Where the detection happened: the source partition (``events/3``), offset and index.
    source: str
    offset: int
    index: int
    #: Event time of the record whose signal value raised it (epoch seconds).
    event_time: float
    #: The signal's values seen when it fired, and the estimated change point (same count), when
    #: the detector can tell (ADWIN: where its dropped window ended).
    position: int
    change_point: int | None = None
    #: The signal's mean before the change and over the recent values after it.
    before: float | None = None
    after: float | None = None
    #: The model's headline metric (cumulative and rolling) when it fired.
    metric: dict[str, Any] = field(default_factory=dict)
    #: Events the model had learned from when it fired (where it sits on the metric's chart).
    events_learned: int | None = None
    #: ``firing``; ``resolved`` once the signal has been stable for a cooldown after it.
    status: Status = "firing"
    #: Where it was resolved: the signal's count, and the event time.
    resolved_position: int | None = None
    resolved_event_time: float | None = None
    #: The model version whose snapshot recorded it (set by the registry).
    version: int | None = None
    #: What resolved it when the signal did not settle by itself: the race whose promotion
    #: replaced the model (``model:race:source:offset:index``).
    resolved_by: str | None = None
    #: What happened, in words, for an alert no detector raised (``signal`` ``snapshot``: a
    #: stored version refused, and what was done instead).
    message: str | None = None

    @classmethod
    def create(
        cls,
        model: str,
        signal: str,
        detector: str,
        params: dict[str, Any],
        severity: Severity,
        source: str,
        offset: int,
        index: int,
        event_time: float,
        position: int,
        **details: Any,
    ) -> Alert:
        return cls(
            f"{model}:{signal}:{source}:{offset}:{index}",
            model,
            signal,
            detector,
            dict(params),
            severity,
            source,
            offset,
            index,
            event_time,
            position,
            **details,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        return cls(**data)
