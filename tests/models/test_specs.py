"""One generic check for every named estimator (and an import-path one): it learns, predicts,
survives a signed snapshot with identical predictions, keeps learning exactly like the original,
and tolerates missing and new features (after river's ``checks/common.py``)."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any

import pytest
from pydantic import ValidationError

from driftline.core.errors import SnapshotError, SnapshotSignatureError
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.snapshot import MAGIC, open_snapshot, seal_snapshot
from driftline.models.specs import DEFAULT_SPEC, ESTIMATORS, ModelSpec

SECRET = b"test-secret-key-0123456789"

Row = tuple[dict[str, float], Any]


def rows_for(task: str, n: int, seed: int) -> list[Row]:
    """A learnable relation for the task: a linear target, its sign as a class, or rare outliers."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        y = 3 * x["a"] - 2 * x["b"] + 1 + rng.gauss(0, 0.05)
        if task == "classification":
            rows.append((x, y > 1))
        elif task == "anomaly":
            odd = i % 25 == 24
            rows.append(({k: (4.0 if odd else v) for k, v in x.items()}, odd))
        else:
            rows.append((x, y))
    return rows


SPECS = [
    ModelSpec(name=name, task=task, target="y" if task == "forecast" else "", estimator=name)
    for name, named in ESTIMATORS.items()
    for task in named.task[:1]
] + [
    ModelSpec(name="pa", estimator="river.linear_model.PARegressor", params={"C": 0.1}),
    ModelSpec(name="nb", task="classification", estimator="river.naive_bayes.GaussianNB"),
]
specs = pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])


def trained(
    spec: ModelSpec, rows: list[Row], start: int = 0, learner: OnlineLearner | None = None
) -> OnlineLearner:
    learner = learner or OnlineLearner.create(spec)
    for offset, (x, y) in enumerate(rows, start=start):
        record = FeatureRecord(
            spec.name, "d", f"e{offset}", float(offset), x, y, source_partition=0, source_offset=offset
        )
        learner.learn(record, input_partition=0, input_offset=offset)
    return learner


def said(learner: OnlineLearner, x: dict[str, float]) -> tuple[Any, Any]:
    prediction = learner.predict(x)
    return prediction.value, prediction.proba


def test_every_task_has_a_named_estimator_and_the_default_spec_is_regression() -> None:
    assert {task for named in ESTIMATORS.values() for task in named.task} == {
        "regression",
        "classification",
        "anomaly",
        "forecast",
    }
    assert DEFAULT_SPEC.task == "regression" and DEFAULT_SPEC.estimator in ESTIMATORS


@specs
def test_build_gives_a_fresh_estimator_each_time(spec: ModelSpec) -> None:
    first, second = spec.build(), spec.build()
    assert first is not second
    for x, y in rows_for(spec.task, 30, seed=0):
        first.learn_one(x) if spec.task == "anomaly" else first.learn_one(x, y)
    assert pickle.dumps(second) == pickle.dumps(spec.build()) != pickle.dumps(first)


@specs
def test_spec_learns_and_beats_a_trivial_guess(spec: ModelSpec) -> None:
    learner = trained(spec, rows_for(spec.task, 400, seed=1))
    held_out = rows_for(spec.task, 100, seed=2)
    if spec.task in ("regression", "forecast"):
        errors = [abs(said(learner, x)[0] - y) for x, y in held_out]
        assert all(math.isfinite(e) for e in errors)
        assert sum(errors) / len(errors) < sum(abs(y) for _, y in held_out) / len(held_out)
    elif spec.task == "classification":
        right = sum(said(learner, x)[0] == y for x, y in held_out)
        assert right / len(held_out) > max(sum(y for _, y in held_out), len(held_out) // 2) / len(held_out)
    else:
        scores = [(said(learner, x)[0], y) for x, y in held_out]
        odd = [s for s, y in scores if y]
        usual = [s for s, y in scores if not y]
        assert sum(odd) / len(odd) > sum(usual) / len(usual)


@specs
def test_learner_survives_a_signed_snapshot_with_identical_predictions(spec: ModelSpec) -> None:
    learner = trained(spec, rows_for(spec.task, 200, seed=3))
    blob = seal_snapshot(learner, learner.summary(), SECRET)
    restored, meta = open_snapshot(blob, SECRET)
    assert isinstance(restored, OnlineLearner) and restored.spec == spec
    assert meta == learner.summary()
    held_out = [x for x, _ in rows_for(spec.task, 30, seed=4)]
    assert [said(restored, x) for x in held_out] == [said(learner, x) for x in held_out]
    assert restored.evaluation.report() == learner.evaluation.report()
    assert (restored.events_seen, restored.input_offsets, restored.positions) == (
        200,
        {0: 199},
        {"events/0": (199, 0)},
    )


@specs
def test_a_restored_learner_keeps_learning_exactly_like_the_original(spec: ModelSpec) -> None:
    rows = rows_for(spec.task, 240, seed=5)
    original = trained(spec, rows[:200])
    restored, _ = open_snapshot(seal_snapshot(original, {}, SECRET), SECRET)
    trained(spec, rows[200:], start=200, learner=original)
    trained(spec, rows[200:], start=200, learner=restored)
    probe = {"a": 0.3, "b": -0.7}
    assert said(restored, probe) == said(original, probe)
    assert restored.evaluation.report() == original.evaluation.report()


@specs
def test_a_tampered_or_unsigned_snapshot_is_refused(spec: ModelSpec) -> None:
    learner = trained(spec, rows_for(spec.task, 50, seed=6))
    blob = seal_snapshot(learner, learner.summary(), SECRET)
    flipped = bytearray(blob)
    flipped[-10] ^= 0x01
    for bad in (bytes(flipped), pickle.dumps(learner), MAGIC + b"\0" * 40 + blob[len(MAGIC) + 32 :]):
        with pytest.raises(SnapshotSignatureError):
            open_snapshot(bad, SECRET)
    with pytest.raises(SnapshotSignatureError):
        open_snapshot(blob, b"another-key-0123456789")


@specs
def test_spec_tolerates_missing_and_new_features(spec: ModelSpec) -> None:
    learner = trained(spec, rows_for(spec.task, 100, seed=7))
    y = rows_for(spec.task, 1, seed=8)[0][1]
    for offset, x in enumerate([{"a": 0.2}, {"a": 0.2, "b": 0.4, "new": 9.0}, {"new": -1.0}, {}], start=100):
        learner.learn(FeatureRecord(spec.name, "d", f"e{offset}", 0.0, x, y, 0, offset), 0, offset)
        value, _ = said(learner, x)
        assert value is None or isinstance(value, bool | float | int)
    assert learner.events_seen == 104


def test_a_signed_blob_that_does_not_unpickle_is_a_snapshot_error() -> None:
    blob = seal_snapshot({"x": 1}, {}, SECRET)
    body = blob[len(MAGIC) + 8 + 32 : -3] + b"bad"
    import hashlib
    import hmac

    from driftline.models.snapshot import MAGIC_V1

    forged = MAGIC_V1 + hmac.new(SECRET, body, hashlib.sha256).digest() + body
    with pytest.raises(SnapshotError, match="cannot be unpickled"):
        open_snapshot(forged, SECRET)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"estimator": "no_such_model"}, "unknown estimator 'no_such_model'"),
        ({"estimator": "river.linear_model.NoSuch"}, "cannot import estimator"),
        (
            {"estimator": "collections.OrderedDict"},
            "is not from River: import paths must start with 'river.'",
        ),
        ({"estimator": "subprocess.Popen", "params": {"args": "touch /tmp/x"}}, "is not from River"),
        ({"estimator": "riverx.evil.Model"}, "is not from River"),
        ({"estimator": "river.stats.Mean"}, "is not a River estimator"),
        ({"estimator": "linear_regression", "params": {"bogus": 1}}, "bad params for 'linear_regression'"),
        ({"task": "classification", "estimator": "river.linear_model.PARegressor"}, "not a Classifier"),
        ({"task": "anomaly"}, "is for regression, forecast, not anomaly"),
        ({"task": "forecast"}, "a forecast needs the sensor to forecast"),
        ({"metric": "Accuracy"}, "metric 'Accuracy' is not one of MAE, RMSE, R2"),
        ({"name": "has space"}, "String should match pattern"),
    ],
)
def test_a_bad_spec_is_a_clear_configuration_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec(**{"name": "m", **fields})


def test_select_keeps_the_record_order_and_never_the_target() -> None:
    spec = ModelSpec(name="m", target="power", features=("t*", "power", "h"))
    assert list(spec.select({"h": 1.0, "power": 2.0, "temp": 3.0, "t_mean": 4.0, "v": 5.0})) == [
        "h",
        "temp",
        "t_mean",
    ]
    forecast = ModelSpec(name="f", task="forecast", target="temp")
    assert list(forecast.select({"temp": 1.0, "v": 2.0})) == ["temp", "v"]
