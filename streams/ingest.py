"""The ingest stage's logic: raw message in, feature records or a rejection out. No I/O.

:class:`IngestStage` keeps what must survive between events (per-device state, the last source
offset handled per partition, the counters) and accounts for every message it is given::

    received == accepted + deduplicated + rejected + late

The agent around it moves bytes, and checkpoints :meth:`IngestStage.dirty_states` with
:attr:`IngestStage.offsets` and :attr:`IngestStage.stats` in one Redis transaction.
"""

from __future__ import annotations

import functools
import itertools
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


@dataclass(frozen=True)
class NeedDevices:
    """The message names devices whose state is not in memory (evicted, or held by the store
    since before a restart): fetch them, :meth:`IngestStage.adopt` them, and hand the message
    again. Nothing of the message has been handled yet."""

    device_ids: frozenset[str]


#: Result of handling one message; the list is empty for a replayed offset (not counted again).
Outcome = FeatureRecord | Rejection | Duplicate | NeedDevices

#: The counters every partition keeps; ``rejected:<reason>`` ones are added as reasons occur.
COUNTERS = ("received", "accepted", "deduplicated", "rejected", "late", "imputed", "clipped")

#: Counted (outside the identity above) for each label left out because it did not fit its model.
LABELS_REFUSED = "labels_refused"

#: Reason codes (DLQ ``dl-reason``) and counters of readings left out of an accepted event: a
#: sensor beyond the device's bound, or one the catalog lacks in strict mode.
TOO_MANY_SENSORS = "too_many_sensors"
UNKNOWN_SENSOR = "unknown_sensor"
READINGS_REFUSED = "readings_refused"


def admit_sensors(
    readings: dict[str, float | None],
    known: Mapping[str, object],
    labels: frozenset[str],
    catalog: Mapping[str, object],
    max_sensors: int,
    strict: bool,
) -> tuple[dict[str, float | None], list[Rejection]]:
    """The readings a device may add to its state, and why the others were left out.

    A device has at most ``max_sensors`` sensors (``known``: those it has a state of); a sensor
    beyond that is refused, so one device cannot grow its state and the model's feature space
    without bound. In ``strict`` mode, a sensor the catalog does not list is refused as well.
    Labels are never features and pass untouched.

    >>> kept, refused = admit_sensors({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.0}, frozenset(), {}, 2, False)
    >>> kept, [(r.reason, r.message) for r in refused]  # doctest: +NORMALIZE_WHITESPACE
    ({'a': 1.0, 'b': 2.0}, [('too_many_sensors',
      "sensor 'c' refused: the device already has 2 sensors (DRIFTLINE_MAX_SENSORS_PER_DEVICE)")])
    >>> admit_sensors({"t": 1.0, "zz": 2.0, "y": 5.0}, {}, frozenset({"y"}), {"t": 0}, 64, True)[0]
    {'t': 1.0, 'y': 5.0}
    """
    kept: dict[str, float | None] = {}
    refused: list[Rejection] = []
    count = len(known)
    for name, value in readings.items():
        if name in labels or name in known:
            kept[name] = value
        elif strict and name not in catalog:
            refused.append(
                Rejection(UNKNOWN_SENSOR, f"sensor {name!r} refused: not in the catalog (strict catalog)")
            )
        elif count >= max_sensors:
            refused.append(
                Rejection(
                    TOO_MANY_SENSORS,
                    f"sensor {name!r} refused: the device already has {max_sensors} sensors "
                    "(DRIFTLINE_MAX_SENSORS_PER_DEVICE)",
                )
            )
        else:
            kept[name] = value
            count += 1
    return kept, refused


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
    at: float | None = None,
) -> tuple[CleanReadings, dict[str, float]] | Rejection:
    """One reading's feature vector, as the stream computes it and ``POST /predict`` serves it.

    The labels are left out, the rest is cleaned against the catalog (range, imputation), then
    featurized with the device's ``state``, which is updated (``/predict`` passes a copy). One
    function for both: no training/serving skew. ``at`` is ``ts.timestamp()``, if the caller
    has it already.

    >>> from datetime import UTC
    >>> state = DeviceState()
    >>> _, features = featurize_reading({"t": 20.0, "y": 1.0}, datetime(2026, 1, 1, tzinfo=UTC), state,
    ...                                 labels=frozenset({"y"}), catalog={}, spec=FeatureSpec(preset="raw"))
    >>> features
    {'t': 20.0}
    """
    if at is None:
        at = ts.timestamp()
    kept = {name: value for name, value in readings.items() if name not in labels}
    cleaned = clean_readings(kept, at, state, catalog)
    if isinstance(cleaned, Rejection):
        return cleaned
    return cleaned, featurize(state, cleaned.readings, ts, spec, at=at)


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
    #: At most this many sensors per device (:func:`admit_sensors`).
    max_sensors_per_device: int = 64
    #: Refuse readings of sensors the catalog does not list.
    strict_catalog: bool = False
    #: Device states beyond memory live in a store (Redis): a device not in :attr:`devices` must
    #: be fetched before its event is handled (:class:`NeedDevices`), and :meth:`evict` may drop
    #: checkpointed states. Without a store every device stays in memory.
    store_backed: bool = False
    #: The most device states kept in memory when :attr:`store_backed`.
    max_devices_in_memory: int = 10_000
    #: Device states by id, least recently used first (the eviction order).
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
        try:
            decoded = decode_message(raw, self.max_message_bytes, self.max_batch_events)
        except Exception as exc:
            decoded = [Rejection(INTERNAL, f"{type(exc).__name__}: {exc}")]
        if self.store_backed:
            missing = frozenset(
                e.device_id for e in decoded if isinstance(e, SensorEvent) and e.device_id not in self.devices
            )
            if missing:
                return [NeedDevices(missing)]
        self.offsets[partition] = offset
        counts = self.stats.setdefault(partition, Counter())
        outcomes: list[Outcome] = []
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
        # Popped and put back: the dict's order is the order of last use (the eviction order).
        state = self.devices.pop(event.device_id, None)
        if state is None:
            state = DeviceState()
        self.devices[event.device_id] = state
        self.dirty.add(event.device_id)
        digest = state.recent_ids.digest_if_new(event.event_id)
        if digest is None:
            counts["deduplicated"] += 1
            state.counts["deduplicated"] += 1
            return [Duplicate(event.event_id)]
        ts = event.ts.timestamp()
        untimely = check_time(ts, state.watermark, now, self.time_policy)
        if untimely is not None:
            return [self._reject(counts, state, untimely._replace(item=index))]
        readings, refused = admit_sensors(
            event.readings,
            state.last,
            self.labels,
            self.catalog,
            self.max_sensors_per_device,
            self.strict_catalog,
        )
        featurized = featurize_reading(
            readings, event.ts, state, labels=self.labels, catalog=self.catalog, spec=self.features, at=ts
        )
        if isinstance(featurized, Rejection):
            return [self._reject(counts, state, featurized._replace(item=index))]
        cleaned, features = featurized
        state.recent_ids.push_new(digest)
        state.watermark = ts if state.watermark is None else max(state.watermark, ts)
        for name, value in readings.items():
            if value is not None and name not in self.labels:
                state.last_seen[name] = ts
        for counter in (counts, state.counts):
            counter["accepted"] += 1
            counter["imputed"] += len(cleaned.imputed)
            counter["clipped"] += len(cleaned.clipped)
        outcomes: list[Outcome] = []
        # Left out, not lost: each refused reading goes to the DLQ with its reason.
        unfit: list[Outcome] = [why._replace(item=index) for why in refused]
        if refused:
            for counter in (counts, state.counts):
                counter[READINGS_REFUSED] += len(refused)
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

    def dirty_states(self) -> dict[str, DeviceState]:
        """The devices changed since the last checkpoint: what the next one must write. They
        stay dirty until :meth:`checkpointed` says they are written: a failed write loses none."""
        return {device: self.devices[device] for device in self.dirty}

    def checkpointed(self, written: Iterable[str]) -> None:
        """``written`` are in the store now: clean, and evictable."""
        self.dirty.difference_update(written)

    def adopt(self, wanted: Iterable[str], stored: Mapping[str, DeviceState]) -> None:
        """Take the states fetched for ``wanted`` devices; a device the store has none of is new."""
        for device_id in wanted:
            if device_id not in self.devices:
                self.devices[device_id] = stored.get(device_id) or DeviceState()

    def evict(self) -> int:
        """Drop least recently used clean states beyond :attr:`max_devices_in_memory` (they are in
        the store, and are fetched again when their device comes back); return how many."""
        excess = len(self.devices) - self.max_devices_in_memory
        if not self.store_backed or excess <= 0:
            return 0
        victims = list(itertools.islice((d for d in self.devices if d not in self.dirty), excess))
        for device_id in victims:
            del self.devices[device_id]
        return len(victims)
