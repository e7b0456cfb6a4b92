"""The learn stage's logic: prequential online learning with the offsets it reflects. No I/O.

For every feature record: predict, score the prediction against the target, then learn
(River's progressive validation). The learner also remembers which messages it has learned from,
so that a replay after a crash changes nothing:

- ``input_offsets``: per ``sensor-features`` partition, the last offset handled;
- ``source_offsets``: per ``sensor-events`` partition, the last source offset learned. The ingest
  stage may re-emit events after its own crash; they carry the same source offsets and are dropped.

The whole learner is what a snapshot pickles, so a restarted worker resumes exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from models.specs import SPECS, ModelSpec
from streams.ingest import FeatureRecord


@dataclass
class OnlineLearner:
    """One named model learning from a stream of feature records.

    Examples
    --------
    >>> learner = OnlineLearner.create("m", "linear_regression")
    >>> rec = FeatureRecord("m", "d", "e1", 0.0, {"x": 1.0}, 2.0, source_partition=0, source_offset=5)
    >>> learner.learn(rec, input_partition=0, input_offset=0)
    True
    >>> learner.learn(rec, input_partition=0, input_offset=0)   # the same message again
    False
    >>> learner.events_learned
    1
    """

    name: str
    spec_name: str
    model: Any
    metric: Any
    events_learned: int = 0
    events_unlabelled: int = 0
    input_offsets: dict[int, int] = field(default_factory=dict)
    #: Source partition -> (offset, index in a batched message) of the last event learned.
    source_offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Topic ids the offsets refer to; a recreated topic (new id) restarts offset bookkeeping.
    topic_ids: dict[str, str] = field(default_factory=dict)
    learn_seconds: float = 0.0
    #: Hash of the feature spec of the records learned last (see streams.features.FeatureSpec).
    feature_schema: str = ""

    @classmethod
    def create(cls, name: str, spec_name: str) -> OnlineLearner:
        spec = SPECS[spec_name]
        return cls(name=name, spec_name=spec_name, model=spec.build(), metric=spec.metric())

    @property
    def spec(self) -> ModelSpec:
        return SPECS[self.spec_name]

    def predict(self, features: dict[str, float]) -> Any:
        return self.model.predict_one(features)

    def learn(self, record: FeatureRecord, input_partition: int, input_offset: int) -> bool:
        """Predict, score, learn; ``False`` when the message was already learned from."""
        if input_offset <= self.input_offsets.get(input_partition, -1):
            return False
        self.input_offsets[input_partition] = input_offset
        position = (record.source_offset, record.source_index)
        if position <= self.source_offsets.get(record.source_partition, (-1, -1)):
            return False  # re-emitted by a restarted ingest stage
        self.source_offsets[record.source_partition] = position
        self.feature_schema = record.schema or self.feature_schema
        if record.target is None:
            self.events_unlabelled += 1
            return False
        started = time.perf_counter()
        prediction = self.model.predict_one(record.features)
        if prediction is not None:
            self.metric.update(record.target, prediction)
        self.model.learn_one(record.features, record.target)
        self.learn_seconds += time.perf_counter() - started
        self.events_learned += 1
        return True

    def align_topics(self, topic_ids: dict[str, str]) -> None:
        """Forget offsets that refer to topics since deleted and recreated (new topic ids)."""
        if self.topic_ids and self.topic_ids != topic_ids:
            self.input_offsets.clear()
            self.source_offsets.clear()
        self.topic_ids = dict(topic_ids)

    def summary(self) -> dict[str, Any]:
        """Metadata for a snapshot: what a person or the API wants to know without unpickling."""
        return {
            "model": self.name,
            "spec": self.spec_name,
            "task": self.spec.task,
            "events_learned": self.events_learned,
            "events_unlabelled": self.events_unlabelled,
            "metric": {"name": type(self.metric).__name__, "value": self.metric.get()},
            "input_offsets": {str(k): v for k, v in self.input_offsets.items()},
            "source_offsets": {str(k): list(v) for k, v in self.source_offsets.items()},
            "topic_ids": self.topic_ids,
            "feature_schema": self.feature_schema,
            "learn_us_per_event": 1e6 * self.learn_seconds / max(self.events_learned, 1),
        }
