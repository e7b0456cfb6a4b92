"""One generic check for every model spec: learns, predicts, survives a signed snapshot, tolerates
missing and new features (STYLE item 6; after river's ``checks/common.py``)."""

from __future__ import annotations

import math
import random

import pytest

from models.learner import OnlineLearner
from models.snapshot import open_snapshot, seal_snapshot
from models.specs import DEFAULT_SPEC, SPECS, ModelSpec
from streams.ingest import FeatureRecord

SECRET = b"test-secret-key-0123456789"

Row = tuple[dict[str, float], float]


def linear_rows(n: int, seed: int) -> list[Row]:
    """``y = 3a - 2b + 1`` plus a little noise, for ``a`` and ``b`` in [-1, 1]."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        rows.append((x, 3 * x["a"] - 2 * x["b"] + 1 + rng.gauss(0, 0.05)))
    return rows


def trained_learner(spec_name: str, rows: list[Row]) -> OnlineLearner:
    learner = OnlineLearner.create("m", spec_name)
    for offset, (x, y) in enumerate(rows):
        record = FeatureRecord("m", "d", f"e{offset}", float(offset), x, y, source_partition=0,
                               source_offset=offset)
        assert learner.learn(record, input_partition=0, input_offset=offset)
    return learner


specs = pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))


def test_the_default_spec_exists() -> None:
    assert DEFAULT_SPEC in SPECS


def test_every_spec_is_registered_under_its_own_name() -> None:
    assert all(name == spec.name for name, spec in SPECS.items())
    assert {spec.task for spec in SPECS.values()} <= {"regression", "classification"}


@specs
def test_build_gives_a_fresh_estimator_each_time(spec: ModelSpec) -> None:
    first, second = spec.build(), spec.build()
    assert first is not second
    first.learn_one({"a": 1.0}, 5.0)
    assert second.predict_one({"a": 1.0}) == spec.build().predict_one({"a": 1.0})


@specs
def test_spec_learns_a_linear_relation_and_predicts_floats(spec: ModelSpec) -> None:
    model = spec.build()
    untrained = model.predict_one({"a": 0.5, "b": -0.5})
    assert isinstance(untrained, float)
    for x, y in linear_rows(200, seed=1):
        model.learn_one(x, y)
    held_out = linear_rows(20, seed=2)
    errors = []
    for x, y in held_out:
        prediction = model.predict_one(x)
        assert isinstance(prediction, float) and math.isfinite(prediction)
        errors.append(abs(prediction - y))
    # 200 rows do not make a perfect fit, but the model must beat predicting nothing (|y| ~ 2)
    baseline = sum(abs(y) for _, y in held_out) / len(held_out)
    assert sum(errors) / len(errors) < baseline


@specs
def test_spec_metric_scores_predictions_with_a_fresh_metric_each_time(spec: ModelSpec) -> None:
    metric = spec.metric()
    metric.update(3.0, 1.0)
    metric.update(1.0, 2.0)
    assert isinstance(metric.get(), float) and math.isfinite(metric.get())
    assert spec.metric().get() != metric.get()


@specs
def test_learner_survives_a_signed_snapshot_with_identical_predictions(spec: ModelSpec) -> None:
    learner = trained_learner(spec.name, linear_rows(200, seed=3))
    blob = seal_snapshot(learner, learner.summary(), SECRET)
    restored, meta = open_snapshot(blob, SECRET)
    assert isinstance(restored, OnlineLearner)
    assert meta == learner.summary()
    held_out = [x for x, _ in linear_rows(20, seed=4)]
    assert [restored.predict(x) for x in held_out] == [learner.predict(x) for x in held_out]
    assert restored.metric.get() == learner.metric.get()
    assert (restored.events_learned, restored.input_offsets, restored.source_offsets) == (
        200, {0: 199}, {0: (199, 0)})


@specs
def test_a_restored_learner_keeps_learning_exactly_like_the_original(spec: ModelSpec) -> None:
    rows = linear_rows(220, seed=5)
    original = trained_learner(spec.name, rows[:200])
    restored, _ = open_snapshot(seal_snapshot(original, {}, SECRET), SECRET)
    for offset, (x, y) in enumerate(rows[200:], start=200):
        record = FeatureRecord("m", "d", f"e{offset}", 0.0, x, y, source_partition=0, source_offset=offset)
        assert original.learn(record, 0, offset) and restored.learn(record, 0, offset)
    probe = {"a": 0.3, "b": -0.7}
    assert restored.predict(probe) == original.predict(probe)
    assert restored.metric.get() == original.metric.get()


@specs
def test_spec_tolerates_a_missing_feature(spec: ModelSpec) -> None:
    model = spec.build()
    for x, y in linear_rows(200, seed=6):
        model.learn_one(x, y)
    assert isinstance(model.predict_one({"a": 0.5}), float)
    assert isinstance(model.predict_one({}), float)
    model.learn_one({"b": 0.1}, 0.8)
    assert isinstance(model.predict_one({"a": 0.5, "b": 0.1}), float)


@specs
def test_spec_tolerates_a_new_feature(spec: ModelSpec) -> None:
    model = spec.build()
    for x, y in linear_rows(200, seed=7):
        model.learn_one(x, y)
    assert isinstance(model.predict_one({"a": 0.5, "b": 0.1, "never_seen": 7.0}), float)
    model.learn_one({"a": 0.5, "b": 0.1, "never_seen": 7.0}, 2.3)
    assert isinstance(model.predict_one({"a": 0.5, "b": 0.1, "never_seen": 7.0}), float)


@specs
def test_learner_tolerates_records_whose_features_change(spec: ModelSpec) -> None:
    learner = trained_learner(spec.name, linear_rows(50, seed=8))
    odd = [{"a": 0.2}, {"a": 0.2, "b": 0.4, "c": 9.0}, {"c": -1.0}, {}]
    for offset, x in enumerate(odd, start=50):
        record = FeatureRecord("m", "d", f"e{offset}", 0.0, x, 1.0, source_partition=0, source_offset=offset)
        assert learner.learn(record, 0, offset)
        assert isinstance(learner.predict(x), float)
    assert learner.events_learned == 54
