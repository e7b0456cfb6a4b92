"""Drift detection in the learner: River's detectors on the model's signals, one alert per change.

Streams are River's synthetic ones with known change points: abrupt concept drift by chaining two
generators (``ConceptDriftStream`` overflows for an abrupt drift deep into a stream), Friedman's
global abrupt drift for regression.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from river import drift
from river.datasets import synth

from driftline.core.alerts import Alert
from driftline.core.records import FeatureRecord
from driftline.models.drift import DetectorSpec, DriftSpec
from driftline.models.learner import OnlineLearner, prediction_error
from driftline.models.retrain import RetrainSpec
from driftline.models.specs import ModelSpec

Stream = Iterable[tuple[dict[Any, float], Any]]
# Retraining off: these tests are about what the detectors see of one model's error.
SEA = ModelSpec(
    name="sea", task="classification", estimator="logistic_regression", retrain=RetrainSpec(policy="never")
)


def abrupt_sea(before: int, after: int, seed: int = 1) -> Iterator[tuple[dict[Any, float], Any]]:
    """SEA's concept 0, then concept 3 from event ``before`` on."""
    return itertools.chain(
        itertools.islice(synth.SEA(variant=0, seed=seed), before),
        itertools.islice(synth.SEA(variant=3, seed=seed + 1), after),
    )


def firing(learner: OnlineLearner) -> list[Alert]:
    return [a for a in learner.drift.outbox if a.status == "firing"]


def learn(
    spec: ModelSpec, stream: Stream, learner: OnlineLearner | None = None, start: int = 0
) -> OnlineLearner:
    learner = learner or OnlineLearner.create(spec)
    for i, (x, y) in enumerate(stream, start):
        features = {str(k): float(v) for k, v in x.items()}
        learner.learn(FeatureRecord(spec.name, "d", f"e{i}", float(i), features, y, 0, i), 0, i)
    return learner


def test_error_detections_are_rivers_own_on_the_same_error_stream() -> None:
    # No warm-up, no cooldown, both directions: the monitor must say exactly what ADWIN says.
    spec = SEA.model_copy(
        update={"drift": DriftSpec(warm_up=0, cooldown=0, increases_only=False, features=None)}
    )
    learner = learn(spec, abrupt_sea(4000, 4000))
    model, adwin, seen, expected = spec.build(), drift.ADWIN(), 0, []
    for x, y in abrupt_sea(4000, 4000):
        features = {str(k): float(v) for k, v in x.items()}
        y_pred = model.predict_one(features)
        error = prediction_error("classification", y, learner._predict(features).__class__(y_pred))
        model.learn_one(features, y)
        if error is None:
            continue
        seen += 1
        adwin.update(error)
        if adwin.drift_detected:
            expected.append(seen)
    got = [a.position for a in firing(learner) if a.signal == "error"]
    assert got == expected and len(expected) >= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_abrupt_concept_drift_gives_one_alert_within_300_events(seed: int) -> None:
    learner = learn(SEA, abrupt_sea(5000, 5000, seed))
    (alert,) = firing(learner)  # one change, one alert; the features did not change
    assert alert.signal == "error" and alert.severity == "drift" and alert.status == "firing"
    assert 5000 <= alert.offset <= 5300, alert
    assert alert.id == f"sea:error:events/0:{alert.offset}:0"
    assert alert.after is not None and alert.before is not None and alert.after > alert.before
    assert alert.metric["name"] == "Accuracy" and alert.events_learned == alert.offset
    # stable again for a whole cooldown: the same alert, resolved
    (resolved,) = [a for a in learner.drift.outbox if a.status == "resolved"]
    assert resolved.id == alert.id and resolved.resolved_position == alert.position + 1000


def test_a_regression_drift_is_seen_at_each_change_point() -> None:
    stream = itertools.islice(synth.FriedmanDrift(drift_type="gra", position=(5000, 8000), seed=1), 10_000)
    alerts = firing(learn(ModelSpec(name="f", retrain=RetrainSpec(policy="never")), stream))
    offsets = [a.offset for a in alerts if a.signal == "error"]
    assert len(offsets) == 2 and 5000 <= offsets[0] <= 5300 and 8000 <= offsets[1] <= 8300, offsets


def test_a_shifted_input_is_seen_without_any_label() -> None:
    # Labels never come (no target): only the label-free feature signal can tell.
    stream = (
        (x if i < 5000 else {**x, 1: x[1] + 3.0}, None)  # about one standard deviation
        for i, (x, _) in enumerate(itertools.islice(synth.SEA(variant=0, seed=4), 10_000))
    )
    alerts = firing(learn(SEA, stream))
    assert [(a.signal, a.severity) for a in alerts] == [("feature:1", "warning")]
    assert 5000 <= alerts[0].offset <= 5300


def test_a_stationary_stream_of_100000_events_raises_no_alert() -> None:
    learner = learn(SEA, itertools.islice(synth.SEA(variant=0, seed=5), 100_000))
    assert learner.drift.outbox == []
    assert set(learner.drift.watches) == {"error", "feature:0", "feature:1", "feature:2"}


def test_detections_survive_a_snapshot_round_trip_unchanged() -> None:
    events = list(abrupt_sea(5000, 2000))
    straight = learn(SEA, events)
    half = pickle.loads(pickle.dumps(learn(SEA, events[:4990])))
    resumed = learn(SEA, events[4990:], half, start=4990)
    assert [a.id for a in resumed.drift.outbox] == [a.id for a in straight.drift.outbox] != []


def test_unknown_detectors_and_bad_parameters_are_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown drift detector 'adwn'"):
        ModelSpec.model_validate({"name": "m", "drift": {"error": {"detector": "adwn"}}})
    with pytest.raises(ValueError, match="bad params for drift detector 'adwin'"):
        DetectorSpec(detector="adwin", params={"nope": 1})
    with pytest.raises(ValueError, match="reads 0/1 values"):
        ModelSpec.model_validate({"name": "m", "drift": {"error": {"detector": "ddm"}}})
    ModelSpec.model_validate(
        {
            "name": "c",
            "task": "classification",
            "estimator": "logistic_regression",
            "drift": {"error": {"detector": "ddm"}},
        }
    )
