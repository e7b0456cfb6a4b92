"""The learn stage's logic: prequential online learning, delayed labels, exact replay. No I/O.

For every event a model sees: predict, then (once its label is known) score the prediction, then
learn — River's progressive validation. Labels come with the event (its ``target``), later on
``sensor-labels`` (matched by ``event_id``), or, for a forecast, from the device's next event.
Events waiting for a label are held, bounded in number and in event time; those whose label never
comes are counted as expired, labels that never meet their event as unmatched.

The learner remembers the last position it learned from per source partition (``events/3`` →
(offset, index in a batched message)). Anything at or before it is a replay and is dropped, so an
event re-emitted after a crash is learned once. The whole learner is what a snapshot pickles; a
restarted worker resumes exactly where the snapshot left off.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from driftline.core.meta import LearnerSummary
from driftline.core.records import FeatureRecord, Label, LabelRecord, Record
from driftline.models.drift import DriftMonitor, DriftSpec
from driftline.models.evaluation import Evaluation, Prediction, headline_metric, score_prediction
from driftline.models.retrain import Contender, ModelEvent, Race, decide, rolling_metric, warm_start_events
from driftline.models.specs import ModelSpec


def prediction_error(task: str, label: Label, prediction: Prediction) -> float | None:
    """The error signal drift detectors watch: absolute error, or 0/1 for a classifier.

    >>> prediction_error("regression", 3.0, Prediction(2.5))
    0.5
    >>> prediction_error("classification", "a", Prediction("b"))
    1.0
    """
    value = prediction.value
    if type(value) is float and type(label) is float and task in ("regression", "forecast"):
        return abs(label - value)  # the usual case, without the checks below (per scored event)
    if task == "classification":
        return None if value is None else float(value != label)
    numeric = isinstance(prediction.value, int | float) and isinstance(label, int | float)
    if task in ("regression", "forecast") and numeric and not isinstance(label, bool):
        return abs(float(label) - float(prediction.value))
    return None  # anomaly models are watched on their scores


#: Events a model may see without learning from any before it is reported as not learning.
NOT_LEARNING_AFTER = 100

#: Before any position: every real one is after it.
_NO_POSITION = (-1, -1)

_UNPUBLISHED: dict[str, Any] = {"version": None, "positions": {}, "events_learned": 0, "learn_seconds": 0.0}


@dataclass
class Pending:
    """An event whose label is not known yet: what the model said, and what it saw."""

    ts: float
    features: dict[str, float] | None
    prediction: Prediction
    #: During a race: the race's id and each challenger's prediction, made at the same moment.
    shadow: tuple[str, list[Prediction]] | None = None


@dataclass
class OnlineLearner:
    """One named model learning from a stream of feature records and labels.

    Examples
    --------
    >>> learner = OnlineLearner.create(ModelSpec(name="m"))
    >>> rec = FeatureRecord("m", "d", "e1", 0.0, {"x": 1.0}, 2.0, source_partition=0, source_offset=5)
    >>> learner.learn(rec, input_partition=0, input_offset=0)
    True
    >>> learner.learn(rec, input_partition=0, input_offset=1)   # re-emitted: same source position
    False
    >>> learner.events_learned, learner.evaluation.get("MAE")
    (1, 2.0)
    """

    spec: ModelSpec
    model: Any
    evaluation: Evaluation
    #: Feature records handled (each once) and events learned from (labelled; anomaly: all).
    events_seen: int = 0
    events_learned: int = 0
    labels_received: int = 0
    #: Events dropped because their label did not come in time (or too many waited).
    labels_expired: int = 0
    #: Labels dropped because their event never came (or was already labelled).
    labels_unmatched: int = 0
    #: Records the model failed on (handed to ``learn_message``'s ``on_error``), each once.
    records_failed: int = 0
    #: ``sensor-features`` partition -> last offset handled.
    input_offsets: dict[int, int] = field(default_factory=dict)
    #: Source (``events/3``, ``labels/0``) -> (offset, index) of the last item learned from.
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Topic ids the offsets refer to; a recreated topic (new id) restarts offset bookkeeping.
    topic_ids: dict[str, str] = field(default_factory=dict)
    learn_seconds: float = 0.0
    #: Hash of the feature spec of the records learned last (see streams.features.FeatureSpec).
    feature_schema: str = ""
    #: The newest event time seen: the clock label expiry runs on (replays expire the same way).
    stream_time: float = -math.inf
    pending: OrderedDict[str, Pending] = field(default_factory=OrderedDict)
    orphan_labels: OrderedDict[str, tuple[float, Label]] = field(default_factory=OrderedDict)
    #: forecast: each device's last event, waiting for the next one to say what came.
    last_by_device: OrderedDict[str, Pending] = field(default_factory=OrderedDict)
    #: The drift detectors on this model's signals, and the alerts not yet in a snapshot.
    drift: DriftMonitor = field(default_factory=lambda: DriftMonitor.create("", "regression", DriftSpec()))
    #: The challengers racing the champion, if a race is on (see driftline.models.retrain).
    race: Race | None = None
    #: Recent labelled events (error count when scored, features, label): a challenger's warm start.
    history: deque[tuple[int, dict[str, float], Label]] = field(default_factory=deque)
    #: Spawns, promotions and retirements not yet in a published snapshot.
    model_events: list[ModelEvent] = field(default_factory=list)
    #: Promotions so far, and how this model came to be what it is now (for the lineage).
    promotions: int = 0
    origin: dict[str, Any] = field(default_factory=lambda: {"reason": "created from its spec"})
    #: The version it was last published as, and its counts then: what a version learned since
    #: its parent (see :meth:`lineage_since`).
    published: dict[str, Any] = field(default_factory=lambda: dict(_UNPUBLISHED))
    #: Where the record being learned came from: (source, offset, index, event time).
    _at: tuple[str, int, int, float] = ("", -1, -1, 0.0)

    @classmethod
    def create(cls, spec: ModelSpec) -> OnlineLearner:
        learner = cls(
            spec=spec,
            model=spec.build(),
            evaluation=Evaluation.create(spec.task, spec.rolling_window, spec.positive_label),
            drift=DriftMonitor.create(spec.name, spec.task, spec.drift),
            history=deque(maxlen=spec.retrain.buffer),
        )
        if spec.retrain.search is not None and learner._races:
            learner._start_race("search", None, None)  # the candidates race from the first event
        return learner

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A learner pickled before drift detection or retraining existed: its spec gains the new
        # fields' defaults (so it equals the configured spec and resumes), and the new parts.
        spec = state["spec"]
        if "drift" not in spec.__dict__ or "retrain" not in spec.__dict__:
            state["spec"] = spec = ModelSpec.model_validate(dict(spec.__dict__))
        if state.get("drift") is None:
            state["drift"] = DriftMonitor.create(spec.name, spec.task, spec.drift)
        state.setdefault("race", None)
        state.setdefault("history", deque(maxlen=spec.retrain.buffer))
        state.setdefault("model_events", [])
        state.setdefault("promotions", 0)
        state.setdefault("origin", {"reason": "created from its spec"})
        state.setdefault("published", dict(_UNPUBLISHED))
        state.setdefault("records_failed", 0)
        self.__dict__.update(state)

    @property
    def _races(self) -> bool:
        # Races need a scored error to compare on: every task but anomaly detection.
        return self.spec.retrain.active and self.spec.task != "anomaly"

    def _metric_now(self) -> dict[str, Any]:
        """What an alert records of the model when it fires."""
        report = self.evaluation.report()
        name = self.spec.metric_name
        metric = {"name": name, "value": report["cumulative"][name], "rolling": report["rolling"][name]}
        return {"metric": metric, "events_learned": self.events_learned}

    @property
    def name(self) -> str:
        return self.spec.name

    # --- predicting --------------------------------------------------------------------------
    def predict(self, features: dict[str, float]) -> Prediction:
        """What the model says now about ``features`` (selected as the spec says)."""
        return self._predict(self.spec.select(features))

    def _predict(self, x: dict[str, float]) -> Prediction:
        return self._predict_with(self.model, x)

    def _predict_with(self, model: Any, x: dict[str, float]) -> Prediction:
        task = self.spec.task
        if task == "anomaly":
            return Prediction(model.score_one(x))
        if task == "classification":
            return Prediction(model.predict_one(x), model.predict_proba_one(x))
        return Prediction(model.predict_one(x))

    # --- learning ----------------------------------------------------------------------------
    def learn_message(
        self,
        input_partition: int,
        input_offset: int,
        records: list[Record],
        on_error: Callable[[int, Record, Exception], None] | None = None,
    ) -> int:
        """Handle one ``sensor-features`` message; returns how many events it taught the model.

        A record that raises (River refusing its label, say) is passed to ``on_error`` with its
        index in ``records``, counted in :attr:`records_failed`, and the next record goes on;
        without ``on_error`` it raises. Its position is taken either way: a replay drops it.
        """
        if input_offset <= self.input_offsets.get(input_partition, -1):
            return 0  # replayed after a restart: already in this learner
        self.input_offsets[input_partition] = input_offset
        before, positions, clock = self.events_learned, self.positions, time.perf_counter
        for number, record in enumerate(records):
            key = f"{record.source}/{record.source_partition}"
            position = (record.source_offset, record.source_index)
            if position <= positions.get(key, _NO_POSITION):
                continue  # re-emitted by a restarted ingest stage or label relay
            positions[key] = position
            self._at = (
                key,
                record.source_offset,
                record.source_index,
                record.ts if isinstance(record, FeatureRecord) else self.stream_time,
            )
            started = clock()
            try:
                if isinstance(record, FeatureRecord):
                    self._observe(record)
                else:
                    self._label(record)
            except Exception as exc:
                if on_error is None:
                    raise
                self.records_failed += 1
                on_error(number, record, exc)
            self.learn_seconds += clock() - started
        self._expire()
        return self.events_learned - before

    def learn(self, record: Record, input_partition: int, input_offset: int) -> bool:
        """One record in its own message; ``True`` if the model learned from it."""
        return self.learn_message(input_partition, input_offset, [record]) > 0

    def _observe(self, record: FeatureRecord) -> None:
        self.events_seen += 1
        self.stream_time = max(self.stream_time, record.ts)
        self.feature_schema = record.schema or self.feature_schema
        x = self.spec.select(record.features)
        self.drift.on_features(x, *self._at, self._metric_now)
        task = self.spec.task
        if task == "forecast":
            self._forecast(record, x)
            return
        prediction = self._predict(x)
        shadow = self._shadow(x)
        to_learn: dict[str, float] | None = x
        if task == "anomaly":
            # Unsupervised: learn every event now; a label, if any, only scores the detector.
            self.evaluation.observe_score(prediction.value)
            self.drift.on_score(prediction.value, *self._at, self._metric_now)
            self.model.learn_one(x)
            self.events_learned += 1
            to_learn = None
        label = record.target if record.target is not None else self._orphan(record.event_id)
        if label is not None:
            self._score_and_learn(to_learn, label, prediction, shadow)
        else:
            self.pending[record.event_id] = Pending(record.ts, to_learn, prediction, shadow)

    def _shadow(self, x: dict[str, float]) -> tuple[str, list[Prediction]] | None:
        """Each challenger's prediction, made before any of them learns the event (shadow: only
        the champion's is served)."""
        race = self.race
        if race is None:
            return None
        return race.id, [self._predict_with(contender.model, x) for contender in race.contenders]

    def _forecast(self, record: FeatureRecord, x: dict[str, float]) -> None:
        previous = self.last_by_device.pop(record.device_id, None)
        actual = record.target  # this event's value of the forecast sensor
        if previous is not None:
            if actual is None:
                self.labels_expired += 1
            else:
                self._score_and_learn(previous.features, actual, previous.prediction, previous.shadow)
        self.last_by_device[record.device_id] = Pending(record.ts, x, self._predict(x), self._shadow(x))

    def _label(self, record: LabelRecord) -> None:
        self.labels_received += 1
        waiting = self.pending.pop(record.event_id, None)
        if waiting is None:
            self.orphan_labels[record.event_id] = (self.stream_time, record.label)
        else:
            self._score_and_learn(waiting.features, record.label, waiting.prediction, waiting.shadow)

    def _orphan(self, event_id: str) -> Label | None:
        found = self.orphan_labels.pop(event_id, None)
        return None if found is None else found[1]

    def _score_and_learn(
        self,
        x: dict[str, float] | None,
        label: Label,
        prediction: Prediction,
        shadow: tuple[str, list[Prediction]] | None = None,
    ) -> None:
        self.evaluation.update(label, prediction)
        error = prediction_error(self.spec.task, label, prediction)
        alert = None
        if error is not None:
            alert = self.drift.on_error(error, *self._at, self._metric_now)
        if x is None:
            return
        self.model.learn_one(x, label)
        self.events_learned += 1
        if not self._races:
            return
        self.history.append((self.drift.seen("error"), x, label))
        race = self.race
        drifted = alert is not None and alert.status == "firing" and self.spec.retrain.policy == "on_drift"
        if race is not None and drifted:
            # The world changed again: challengers that learned the regime before it are stale.
            # This race ends, and a new one starts from the new change point.
            self.race = None
            self._model_event("retire", race, f"a new drift ({alert.id}) during the race")  # type: ignore[union-attr]
            race = None
        if race is not None:
            self._race_step(race, x, label, prediction, shadow)
        elif drifted:
            self._start_race("drift", alert.id, alert.change_point)  # type: ignore[union-attr]
        elif self.spec.retrain.policy == "periodic" and self.events_learned % self.spec.retrain.every == 0:
            self._start_race("periodic", None, None)

    # --- racing challengers (see driftline.models.retrain) --------------------------------------
    def _start_race(self, reason: str, alert: str | None, change_point: int | None) -> None:
        retrain = self.spec.retrain
        make, kwargs, _ = headline_metric(self.spec.task, self.spec.metric_name, self.spec.positive_label)
        candidates = retrain.search.candidates() if retrain.search is not None else [{}]
        contenders = []
        for number, params in enumerate(candidates, 1):
            if retrain.start == "copy" and not params:
                model = copy.deepcopy(self.model)
            else:
                model = self.spec.build_with(params)
            label = f"candidate {number}" if retrain.search is not None else "challenger"
            contenders.append(Contender(label, params, model, rolling_metric(make, kwargs, retrain.window)))
        source, offset, index, ts = self._at
        race = Race(
            # Where it started in the stream; a search from the first event starts before any.
            id=f"{self.name}:race:{source}:{offset}:{index}" if source else f"{self.name}:race:start",
            reason=reason,
            alert=alert,
            started={
                "source": source,
                "offset": offset,
                "index": index,
                "event_time": ts,
                "events_learned": self.events_learned,
            },
            champion=rolling_metric(make, kwargs, retrain.window),
            contenders=contenders,
        )
        warm = warm_start_events(self.history, change_point) if reason != "search" else []
        for x, y in warm:
            for contender in contenders:
                contender.model.learn_one(x, y)
        race.warm_started = len(warm)
        self.race = race
        why = {
            "drift": f"error drift {alert}: challenger warm-started on {len(warm)} events since the change",
            "periodic": f"periodic retraining after {self.events_learned} events learned",
            "search": f"search: {len(contenders)} candidate parameter sets race the spec's own",
        }[reason]
        self._model_event("spawn", race, why)

    def _race_step(
        self,
        race: Race,
        x: dict[str, float],
        label: Label,
        prediction: Prediction,
        shadow: tuple[str, list[Prediction]] | None,
    ) -> None:
        """Score the champion and each challenger on one labelled event (when they predicted it
        in this race), teach the challengers, and see whether the race is decided."""
        if shadow is not None and shadow[0] == race.id:
            race.events += score_prediction(
                race.champion, self.spec.metric_name, self.spec.task, label, prediction
            )
            for contender, said in zip(race.contenders, shadow[1], strict=True):
                contender.scored += score_prediction(
                    contender.metric, self.spec.metric_name, self.spec.task, label, said
                )
        for contender in race.contenders:
            contender.model.learn_one(x, label)
        _, _, bigger_is_better = headline_metric(
            self.spec.task, self.spec.metric_name, self.spec.positive_label
        )
        decision = decide(race, self.spec.retrain, bigger_is_better)
        if decision is None:
            return
        _, winner = decision
        self.race = None
        if winner is None:  # retired
            self._model_event(
                "retire",
                race,
                f"no challenger beat the champion by {self.spec.retrain.margin:.0%} "
                f"within {race.events} events",
            )
            return
        self.model = winner.model
        self.promotions += 1
        self.origin = {
            "reason": {
                "drift": "challenger after alert",
                "periodic": "periodic challenger",
                "search": "search candidate",
            }[race.reason],
            "race": race.id,
            "alert": race.alert,
            "params": winner.params,
            "events_learned_at_promotion": self.events_learned,
        }
        # The error now comes from another model: its detector starts over, and the drift that
        # started the race is over.
        self.drift.restart("error", resolved_by=race.id, ts=self._at[3])
        self._model_event(
            "promote",
            race,
            f"{winner.label} beat the champion by at least "
            f"{self.spec.retrain.margin:.0%} over {race.events} events",
            winner=winner.label,
        )

    def _model_event(self, action: str, race: Race, why: str, winner: str | None = None) -> None:
        source, offset, index, ts = self._at
        self.model_events.append(
            ModelEvent(
                action,  # type: ignore[arg-type]
                self.name,
                race.id,
                race.reason,
                source,
                offset,
                index,
                ts,
                race.standings(),
                why,
                race.alert,
                winner,
            )
        )

    def take_model_events(self) -> list[ModelEvent]:
        """The spawns, promotions and retirements to record with the next snapshot."""
        taken, self.model_events = self.model_events, []
        return taken

    def _expire(self) -> None:
        """Drop what waited too long (in event time) or overflows the bound, oldest first."""
        horizon = self.stream_time - self.spec.label_ttl_seconds
        bound = self.spec.max_pending
        for waiting in (self.pending, self.last_by_device):
            while waiting and (len(waiting) > bound or next(iter(waiting.values())).ts < horizon):
                waiting.popitem(last=False)
                self.labels_expired += 1
        while self.orphan_labels and (
            len(self.orphan_labels) > bound or next(iter(self.orphan_labels.values()))[0] < horizon
        ):
            self.orphan_labels.popitem(last=False)
            self.labels_unmatched += 1

    # --- bookkeeping -------------------------------------------------------------------------
    def lineage_since(self) -> dict[str, Any]:
        """Since the version last published (the parent of the next): the source positions
        learned (source -> [[offset, index] before, [offset, index] now]), events and seconds."""
        mark = self.published
        before = mark["positions"]
        return {
            "parent": mark["version"],
            "positions": {
                source: [list(before.get(source, (-1, -1))), list(now)]
                for source, now in self.positions.items()
                if tuple(before.get(source, (-1, -1))) != tuple(now)
            },
            "events_learned": self.events_learned - mark["events_learned"],
            "learn_seconds": round(self.learn_seconds - mark["learn_seconds"], 6),
        }

    def lineage_mark(self, version: int | None, restore: dict[str, Any] | None = None) -> dict[str, Any]:
        """Note that this learner is being published as ``version`` (or put back ``restore``, the
        mark returned before, when publishing failed); returns the mark it replaces."""
        previous = self.published
        self.published = (
            restore
            if restore is not None
            else {
                "version": version,
                "positions": dict(self.positions),
                "events_learned": self.events_learned,
                "learn_seconds": self.learn_seconds,
            }
        )
        return previous

    def align_topics(self, topic_ids: dict[str, str]) -> None:
        """Forget offsets that refer to topics since deleted and recreated (new topic ids)."""
        if self.topic_ids and self.topic_ids != topic_ids:
            self.input_offsets.clear()
            self.positions.clear()
        self.topic_ids = dict(topic_ids)

    @property
    def metric(self) -> float | None:
        """The spec's headline metric, cumulative (``None`` until an event is scored)."""
        return self.evaluation.get(self.spec.metric_name)

    def warnings(self) -> list[str]:
        """What an operator must hear about this model, in words (empty when all is well).

        A model that sees events but never gets their labels learns nothing, and its metric
        stays "no data yet" for good: almost always a target that names nothing the events carry.

        >>> learner = OnlineLearner.create(ModelSpec(name="m", target="y"))
        >>> learner.events_seen = 500
        >>> print(learner.warnings()[0])  # doctest: +ELLIPSIS
        model 'm' has seen 500 events and learned from none: ...Check its target 'y'...
        """
        if self.events_seen < NOT_LEARNING_AFTER or self.events_learned > 0:
            return []
        target = repr(self.spec.target) if self.spec.target else "(DRIFTLINE_TARGET)"
        return [
            f"model {self.name!r} has seen {self.events_seen} events and learned from none: "
            f"{len(self.pending) + len(self.last_by_device)} wait for a label, "
            f"{self.labels_expired} expired without one. Check its target {target}: each event "
            f"needs a reading of that name or a 'target' field, or labels on the labels topic."
        ]

    def summary(self) -> LearnerSummary:
        """Metadata for a snapshot: what a person or the API wants to know without unpickling."""
        report = self.evaluation.report()
        return {
            "model": self.name,
            "task": self.spec.task,
            "spec": self.spec.summary(),
            "estimator": self.spec.estimator,
            "events_seen": self.events_seen,
            "events_learned": self.events_learned,
            "labels": {
                "received": self.labels_received,
                "pending": len(self.pending),
                "expired": self.labels_expired,
                "unmatched": self.labels_unmatched,
            },
            "metric": {
                "name": self.spec.metric_name,
                "value": report["cumulative"][self.spec.metric_name],
                "rolling": report["rolling"][self.spec.metric_name],
            },
            "metrics": report,
            "input_offsets": {str(k): v for k, v in self.input_offsets.items()},
            "source_positions": {k: list(v) for k, v in self.positions.items()},
            "topic_ids": self.topic_ids,
            "feature_schema": self.feature_schema,
            "learn_us_per_event": 1e6 * self.learn_seconds / max(self.events_seen, 1),
            "warnings": self.warnings(),
            "drift": {
                signal: {"detector": w.spec.detector, "seen": w.seen, "alerts": w.alerts}
                for signal, w in self.drift.watches.items()
            },
            "race": self.race.standings() if self.race is not None else None,
            "promotions": self.promotions,
            "records_failed": self.records_failed,
        }
