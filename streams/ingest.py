"""The ingest stage's logic: raw message in, feature records or a rejection out. No I/O.

:class:`IngestStage` keeps what must survive between events (per-device state, the last source
offset handled per partition, the counters) and accounts for every message it is given::

    received == accepted + deduplicated + rejected + late

The agent around it moves bytes, and checkpoints :meth:`IngestStage.take_dirty` with
:attr:`IngestStage.offsets` and :attr:`IngestStage.stats` in one Redis transaction.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from driftline.core.records import FeatureRecord
from driftline.models.specs import ModelSpec
from driftline.streams.catalog import DEFAULT_CATALOG, SensorSpec
from driftline.streams.cleaning import (
    INTERNAL,
    LATE,
    CleanReadings,
    Rejection,
    TimePolicy,
    check_time,
    clean_readings,
    decode_message,
)
from driftline.streams.features import DeviceState, FeatureSpec, featurize
from driftline.streams.schema import LABEL_TYPE, SensorEvent, describe, label_problem


@dataclass(frozen=True)
class Duplicate:
    """The device already sent an event with this id (a retrying device)."""

    event_id: str


#: Result of handling one message; the list is empty for a replayed offset (not counted again).
Outcome = FeatureRecord | Rejection | Duplicate

#: The counters every partition keeps; ``rejected:<reason>`` ones are added as reasons occur.
COUNTERS = ("received", "accepted", "deduplicated", "rejected", "late", "imputed", "clipped")

#: Counted (outside the identity above) for each label left out because it did not fit its model.
LABELS_REFUSED = "labels_refused"


def label_readings(specs: Iterable[ModelSpec], target: str) -> frozenset[str]:
    """The readings that are ground truth for some model, so never a feature of any.

    The deployment's target, and each model's own target except a forecast's (a forecast
    predicts a sensor's next value from its current one, which is a feature). A label's rolling
    mean or delta would include the label itself, so a label reading is left out of featurizing
    altogether, for every model.

    >>> sorted(label_readings([ModelSpec(name="a", target="y"),
    ...                        ModelSpec(name="b", task="forecast", target="temperature")], "power"))
    ['power', 'y']
    """
    return frozenset({target} | {s.target for s in specs if s.target and s.task != "forecast"})


def binary_classifiers(specs: Iterable[ModelSpec]) -> frozenset[str]:
    """The classification models whose estimator tells two classes apart only (River's
    ``_multiclass`` is false, e.g. logistic regression): their labels are booleans or 0/1.

    >>> lr = ModelSpec(name="lr", task="classification", estimator="logistic_regression")
    >>> tree = ModelSpec(name="tree", task="classification", estimator="hoeffding_tree_classifier")
    >>> sorted(binary_classifiers([lr, tree]))
    ['lr']
    """
    return frozenset(
        spec.name
        for spec in specs
        if spec.task == "classification" and not getattr(spec.build(), "_multiclass", True)
    )


def label_refusal(spec: ModelSpec, label: Any, binary: frozenset[str]) -> str | None:
    """Why ``spec``'s model cannot learn ``label``, in words; ``None`` when it can.

    Checked before a label reaches the learner, which would otherwise fail inside River
    (``int('True')``, a text minus a number). An anomaly model that names no target of its own
    gets the deployment's target (a number meant for other models): its labels are not checked.

    >>> label_refusal(ModelSpec(name="m"), "high", frozenset())
    "model 'm' (regression) learns a finite number, got text 'high'"
    >>> label_refusal(ModelSpec(name="m"), 2.5, frozenset()) is None
    True
    """
    if spec.task == "anomaly" and not spec.target:
        return None
    expected = label_problem(spec.task, label, binary=spec.name in binary)
    if expected is None:
        return None
    return f"model {spec.name!r} ({spec.task}) learns {expected}, got {describe(label)}"


def featurize_reading(
    readings: Mapping[str, float | None],
    ts: datetime,
    state: DeviceState,
    *,
    labels: frozenset[str],
    catalog: dict[str, SensorSpec],
    spec: FeatureSpec,
) -> tuple[CleanReadings, dict[str, float]] | Rejection:
    """One reading's feature vector, as the stream computes it and ``POST /predict`` serves it.

    The labels are left out, the rest is cleaned against the catalog (range, imputation), then
    featurized with the device's ``state``, which is updated (``/predict`` passes a copy). One
    function for both: no training/serving skew.

    >>> from datetime import UTC
    >>> state = DeviceState()
    >>> _, features = featurize_reading({"t": 20.0, "y": 1.0}, datetime(2026, 1, 1, tzinfo=UTC), state,
    ...                                 labels=frozenset({"y"}), catalog={}, spec=FeatureSpec(preset="raw"))
    >>> features
    {'t': 20.0}
    """
    kept = {name: value for name, value in readings.items() if name not in labels}
    cleaned = clean_readings(kept, ts.timestamp(), state, catalog)
    if isinstance(cleaned, Rejection):
        return cleaned
    return cleaned, featurize(state, cleaned.readings, ts, spec)


@dataclass
class IngestStage:
    """Clean and featurize events, one device's state at a time.

    Examples
    --------
    >>> stage = IngestStage(models=("m",), target="y", max_message_bytes=10_000)
    >>> raw = b'{"event_id": "a", "device_id": "d", "ts": 0, "readings": {"x": 1}, "target": 2}'
    >>> stage.handle(raw, partition=0, offset=0, timestamp_ms=0)[0].features["x"]
    1.0
    >>> stage.handle(raw, partition=0, offset=1, timestamp_ms=0)
    [Duplicate(event_id='a')]
    >>> stage.handle(raw, partition=0, offset=1, timestamp_ms=0)   # a replay of offset 1: ignored
    []
    >>> {k: v for k, v in stage.totals().items() if v}
    {'received': 2, 'accepted': 1, 'deduplicated': 1}
    """

    #: The models fed, by spec (or by name: a default spec with that name).
    models: tuple[ModelSpec | str, ...]
    #: The reading that is the ground truth, never a feature (``DRIFTLINE_TARGET``).
    target: str
    max_message_bytes: int
    features: FeatureSpec = field(default_factory=FeatureSpec)
    max_batch_events: int = 1000
    catalog: dict[str, SensorSpec] = field(default_factory=lambda: dict(DEFAULT_CATALOG))
    time_policy: TimePolicy = TimePolicy(allowed_lateness=300.0, max_future=60.0)
    devices: dict[str, DeviceState] = field(default_factory=dict)
    #: Source partition -> last offset whose effect is in :attr:`devices`.
    offsets: dict[int, int] = field(default_factory=dict)
    #: Source partition -> its counters (checkpointed with the offsets, so they survive a crash).
    stats: dict[int, Counter[str]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    #: :attr:`models` as specs.
    specs: tuple[ModelSpec, ...] = field(init=False)

    #: Readings that are some model's ground truth: never features, never cleaned (see
    #: :func:`label_readings`).
    labels: frozenset[str] = field(init=False)
    #: Models that learn booleans or 0/1 only (see :func:`binary_classifiers`).
    binary: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.specs = tuple(ModelSpec(name=m) if isinstance(m, str) else m for m in self.models)
        self.labels = label_readings(self.specs, self.target)
        self.binary = binary_classifiers(self.specs)

    def handle(
        self, raw: bytes | None, partition: int, offset: int, timestamp_ms: int | None = None
    ) -> list[Outcome]:
        """Handle one message (one event, or a JSON array of them). Never raises."""
        if offset <= self.offsets.get(partition, -1):
            return []  # replayed after a restart: its effect is already in the checkpoint
        self.offsets[partition] = offset
        counts = self.stats.setdefault(partition, Counter())
        outcomes: list[Outcome] = []
        try:
            decoded = decode_message(raw, self.max_message_bytes, self.max_batch_events)
        except Exception as exc:
            decoded = [Rejection(INTERNAL, f"{type(exc).__name__}: {exc}")]
        now = timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else time.time()
        for index, event in enumerate(decoded):
            counts["received"] += 1
            if isinstance(event, Rejection):
                outcomes.append(self._reject(counts, None, event))
                continue
            try:
                outcomes += self._handle_event(event, partition, offset, index, now, counts)
            except Exception as exc:
                outcomes.append(
                    self._reject(counts, None, Rejection(INTERNAL, f"{type(exc).__name__}: {exc}", index))
                )
        return outcomes

    def _handle_event(
        self,
        event: SensorEvent,
        partition: int,
        offset: int,
        index: int,
        now: float,
        counts: Counter[str],
    ) -> list[Outcome]:
        state = self.devices.get(event.device_id)
        if state is None:
            state = self.devices[event.device_id] = DeviceState()
        self.dirty.add(event.device_id)
        if event.event_id in state.recent_ids:
            counts["deduplicated"] += 1
            state.counts["deduplicated"] += 1
            return [Duplicate(event.event_id)]
        ts = event.ts.timestamp()
        refused = check_time(ts, state.watermark, now, self.time_policy)
        if refused is not None:
            return [self._reject(counts, state, refused._replace(item=index))]
        featurized = featurize_reading(
            event.readings, event.ts, state, labels=self.labels, catalog=self.catalog, spec=self.features
        )
        if isinstance(featurized, Rejection):
            return [self._reject(counts, state, featurized._replace(item=index))]
        cleaned, features = featurized
        state.recent_ids.append(event.event_id)
        state.watermark = ts if state.watermark is None else max(state.watermark, ts)
        for name, value in event.readings.items():
            if value is not None and name not in self.labels:
                state.last_seen[name] = ts
        for counter in (counts, state.counts):
            counter["accepted"] += 1
            counter["imputed"] += len(cleaned.imputed)
            counter["clipped"] += len(cleaned.clipped)
        outcomes: list[Outcome] = []
        unfit: list[Outcome] = []
        for spec in self.specs:
            target = self._target(event, cleaned.readings, spec)
            why = None if target is None else label_refusal(spec, target, self.binary)
            if why is not None:
                # Per model: the event still feeds the others (and this one, unlabelled: its
                # label may yet come on the labels topic); what was left out goes to the DLQ.
                target = None
                unfit.append(Rejection(LABEL_TYPE, f"{why}: learned without it", index))
                for counter in (counts, state.counts):
                    counter[LABELS_REFUSED] += 1
            outcomes.append(
                FeatureRecord(
                    spec.name,
                    event.device_id,
                    event.event_id,
                    ts,
                    spec.select(features),
                    target,
                    partition,
                    offset,
                    index,
                    cleaned.imputed,
                    cleaned.clipped,
                    self.schema,
                )
            )
        return outcomes + unfit

    def _target(self, event: SensorEvent, cleaned: dict[str, float], spec: ModelSpec) -> Any:
        """The event's label for ``spec``: the reading its target names, else the event's ``target``.

        The event's ``target`` field is the ground truth the device sends with the event: it is
        the label of a model learning the deployment's target even when a reading has the same
        name, and of any other model whose target the event carries no reading of (a model
        named ``target: "y"`` learns from replayed rows whose ``y`` column became ``target``).
        A forecast's label is what the device's *next* event says; its record carries this
        event's (cleaned) value of the forecast sensor, which the learner pairs with the last one.
        """
        name = spec.target or self.target
        if spec.task == "forecast":
            return cleaned.get(name)
        value = event.readings.get(name)
        if event.target is not None and (value is None or name == self.target):
            return event.target
        return value

    @staticmethod
    def _reject(counts: Counter[str], state: DeviceState | None, rejection: Rejection) -> Rejection:
        kind = "late" if rejection.reason == LATE else "rejected"
        for counter in (counts, state.counts if state else None):
            if counter is not None:
                counter[kind] += 1
                if kind == "rejected":
                    counter[f"rejected:{rejection.reason}"] += 1
        return rejection

    def totals(self) -> Counter[str]:
        """All partitions' counters added up (every standard counter present, zero or not)."""
        total: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        for counts in self.stats.values():
            total.update(counts)
        return total

    @functools.cached_property
    def schema(self) -> str:
        # Hashing the spec costs a JSON dump: once per stage, not once per event.
        return self.features.schema_hash()

    def take_dirty(self) -> dict[str, DeviceState]:
        """The devices changed since the last call: what the next checkpoint must write."""
        dirty = {device: self.devices[device] for device in self.dirty}
        self.dirty = set()
        return dirty
