"""The ingest stage's logic: raw message in, feature record or rejection out. No I/O.

:class:`IngestStage` keeps what must survive between events (per-device state and the last source
offset handled per partition) and accounts for every message it is given, so that
``received == accepted + deduplicated + rejected`` always holds. The agent around it moves bytes
and checkpoints :meth:`IngestStage.dirty_devices` with :attr:`IngestStage.offsets`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streams.cleaning import Rejection, decode_event
from streams.features import DeviceState, featurize


@dataclass(frozen=True)
class FeatureRecord:
    """What the learn stage receives: one event's features, keyed by the model that learns it."""

    model: str
    device_id: str
    event_id: str
    ts: float
    features: dict[str, float]
    target: float | None
    source_partition: int
    source_offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device_id": self.device_id,
            "event_id": self.event_id,
            "ts": self.ts,
            "features": self.features,
            "target": self.target,
            "src": [self.source_partition, self.source_offset],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureRecord:
        partition, offset = data["src"]
        return cls(
            model=data["model"],
            device_id=data["device_id"],
            event_id=data["event_id"],
            ts=float(data["ts"]),
            features=data["features"],
            target=data.get("target"),
            source_partition=int(partition),
            source_offset=int(offset),
        )


@dataclass(frozen=True)
class Duplicate:
    """The device already sent an event with this id (a retrying device)."""

    event_id: str


#: Result of handling one message. ``None``: a replay of an offset already handled (not counted).
Outcome = FeatureRecord | Rejection | Duplicate | None


@dataclass
class IngestStage:
    """Clean and featurize events, one device's state at a time.

    Examples
    --------
    >>> stage = IngestStage(models=("m",), target="y", window=3, max_message_bytes=10_000)
    >>> raw = b'{"event_id": "a", "device_id": "d", "ts": 0, "readings": {"x": 1}, "target": 2}'
    >>> stage.handle(raw, partition=0, offset=0)[0].features["x"]
    1.0
    >>> stage.handle(raw, partition=0, offset=1)
    [Duplicate(event_id='a')]
    >>> stage.handle(raw, partition=0, offset=1)   # a replay of offset 1: ignored
    []
    >>> dict(stage.counts)
    {'received': 2, 'accepted': 1, 'deduplicated': 1}
    """

    models: tuple[str, ...]
    target: str
    window: int
    max_message_bytes: int
    devices: dict[str, DeviceState] = field(default_factory=dict)
    #: Source partition -> last offset whose effect is in :attr:`devices`.
    offsets: dict[int, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    dirty: set[str] = field(default_factory=set)

    def handle(self, raw: bytes | None, partition: int, offset: int) -> list[Outcome]:
        """Handle one message; a list so that one event can feed several models."""
        if offset <= self.offsets.get(partition, -1):
            return []  # replayed after a restart: its effect is already in the checkpoint
        self.offsets[partition] = offset
        self.counts["received"] += 1
        event = decode_event(raw, self.max_message_bytes)
        if isinstance(event, Rejection):
            self.counts["rejected"] += 1
            self.rejected_by_reason[event.reason] += 1
            return [event]
        state = self.devices.get(event.device_id)
        if state is None:
            state = self.devices[event.device_id] = DeviceState()
        self.dirty.add(event.device_id)
        if event.event_id in state.recent_ids:
            self.counts["deduplicated"] += 1
            return [Duplicate(event.event_id)]
        state.recent_ids.append(event.event_id)
        readings = {k: v for k, v in event.readings.items() if k != self.target}
        target = event.target if event.target is not None else event.readings.get(self.target)
        features = featurize(state, readings, event.ts, self.window)
        self.counts["accepted"] += 1
        ts = event.ts.timestamp()
        return [
            FeatureRecord(model, event.device_id, event.event_id, ts, features, target, partition, offset)
            for model in self.models
        ]

    def take_dirty(self) -> dict[str, DeviceState]:
        """The devices changed since the last call: what the next checkpoint must write."""
        dirty = {device: self.devices[device] for device in self.dirty}
        self.dirty = set()
        return dirty
