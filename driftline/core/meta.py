"""What a snapshot says about its model, typed: the metadata signed with every snapshot.

The learner summarizes itself (:class:`LearnerSummary`); the registry adds the version, River's
version, the time and the pickle's size (:class:`SnapshotMeta`), signs it with the model, and
keeps an unsigned copy with the blob's size for listings. Readers (the API, ``driftline
models``, the dashboard) index these keys; mypy checks they exist.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class MetricSummary(TypedDict):
    """The headline metric: ``None`` until an event has been scored ("no data yet")."""

    name: str
    value: float | None
    rolling: float | None


class LabelCounts(TypedDict):
    received: int
    pending: int
    expired: int
    unmatched: int


class LearnerSummary(TypedDict):
    """What :meth:`driftline.models.learner.OnlineLearner.summary` says."""

    model: str
    task: str
    spec: dict[str, Any]
    estimator: str
    events_seen: int
    events_learned: int
    labels: LabelCounts
    metric: MetricSummary
    #: ``{"labelled", "window", "cumulative": {...}, "rolling": {...}, "scores"?: {...}}``
    metrics: dict[str, Any]
    #: features partition (as text) -> last offset handled
    input_offsets: dict[str, int]
    #: source (``events/3``) -> [offset, index] of the last item learned
    source_positions: dict[str, list[int]]
    topic_ids: dict[str, str]
    feature_schema: str
    learn_us_per_event: float
    warnings: list[str]
    #: signal (``error``, ``score``, ``feature:<name>``) -> {detector, seen, alerts}
    drift: dict[str, dict[str, Any]]
    #: the race on, if any: ``{race, reason, alert, events, champion, challengers: [...]}``
    race: NotRequired[dict[str, Any] | None]
    #: challengers promoted so far
    promotions: NotRequired[int]
    #: records the model failed on (dead-lettered as ``learn_failed`` and skipped)
    records_failed: NotRequired[int]


class SignedMeta(LearnerSummary):
    """A snapshot's metadata as signed with the model."""

    version: int
    river_version: str
    created_at: str
    #: the pickled model's size, inside the signed part
    model_bytes: int
    #: where this version comes from: parent, reason, spec and params, positions learned since
    #: the parent, learn time, size, driftline/River versions and git commit
    lineage: NotRequired[dict[str, Any]]


class SnapshotMeta(SignedMeta):
    """A snapshot's metadata as the registry lists it: the signed part, and two figures more."""

    #: the whole blob's size (listing copy only)
    size_bytes: NotRequired[int]
    #: how long pickling and signing took, ms (listing copy only)
    seal_ms: NotRequired[float]
    #: the id of the key that signed it (listing copy only; the blob's header says the same)
    key_id: NotRequired[str]
