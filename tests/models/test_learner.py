"""OnlineLearner: prequential (predict, score, then learn), delayed labels and exact replays."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from river import metrics

from driftline.core.records import FeatureRecord, LabelRecord
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec

LINEAR = ModelSpec(name="m")


def record(
    offset: int,
    x: dict[str, float] | None = None,
    y: Any = 1.0,
    *,
    partition: int = 0,
    index: int = 0,
    schema: str = "",
    device: str = "d1",
    ts: float | None = None,
) -> FeatureRecord:
    return FeatureRecord(
        "m",
        device,
        f"e{offset}-{index}",
        float(offset) if ts is None else ts,
        x or {"a": 1.0},
        y,
        source_partition=partition,
        source_offset=offset,
        source_index=index,
        schema=schema,
    )


def label(offset: int, event_offset: int, y: Any, *, index: int = 0) -> LabelRecord:
    return LabelRecord("m", f"e{event_offset}-{index}", y, source_partition=0, source_offset=offset)


def stream(n: int, seed: int = 0) -> list[tuple[dict[str, float], float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = {"a": rng.uniform(0, 10), "b": rng.uniform(-5, 5)}
        rows.append((x, 2 * x["a"] - x["b"] + rng.gauss(0, 0.1)))
    return rows


# --- prequential order -----------------------------------------------------------------------


def test_the_metric_scores_each_prediction_made_before_learning_its_event() -> None:
    rows = stream(300)
    learner = OnlineLearner.create(LINEAR)
    for offset, (x, y) in enumerate(rows):
        assert learner.learn(record(offset, x, y), input_partition=0, input_offset=offset)
    model, mae = LINEAR.build(), metrics.MAE()
    for x, y in rows:
        mae.update(y, model.predict_one(x))
        model.learn_one(x, y)
    assert learner.metric == mae.get()
    assert learner.predict({"a": 3.0, "b": 1.0}).value == model.predict_one({"a": 3.0, "b": 1.0})
    assert learner.events_learned == learner.events_seen == 300


def test_learning_after_predicting_is_not_the_same_as_predicting_after_learning() -> None:
    # guards the test above: the order is observable, so equal metrics do mean the right order
    rows = stream(50)
    prequential, hindsight, model = OnlineLearner.create(LINEAR), metrics.MAE(), LINEAR.build()
    for offset, (x, y) in enumerate(rows):
        prequential.learn(record(offset, x, y), 0, offset)
        model.learn_one(x, y)
        hindsight.update(y, model.predict_one(x))
    assert prequential.metric != hindsight.get()


def test_the_first_prediction_is_scored_too() -> None:
    learner = OnlineLearner.create(LINEAR)
    learner.learn(record(0, {"a": 1.0}, 4.0), 0, 0)
    assert learner.metric == 4.0  # an untrained linear model predicts 0: |4 - 0|


def test_the_model_sees_only_the_features_its_spec_selects() -> None:
    spec = ModelSpec(name="m", features=("a",))
    learner, reference = OnlineLearner.create(spec), spec.build()
    for offset, (x, y) in enumerate(stream(50)):
        learner.learn(record(offset, x, y), 0, offset)
        reference.learn_one({"a": x["a"]}, y)
    assert learner.predict({"a": 2.0, "b": 99.0}).value == reference.predict_one({"a": 2.0})


# --- exactly once over replays ---------------------------------------------------------------


def test_the_same_input_offset_twice_is_learned_once() -> None:
    learner = OnlineLearner.create(LINEAR)
    assert learner.learn(record(0, y=2.0), input_partition=0, input_offset=7) is True
    metric = learner.metric
    assert learner.learn(record(1, y=50.0), input_partition=0, input_offset=7) is False
    assert learner.learn(record(2, y=50.0), input_partition=0, input_offset=3) is False
    assert (learner.events_learned, learner.metric, learner.input_offsets) == (1, metric, {0: 7})


def test_a_re_emitted_source_event_at_a_new_input_offset_is_dropped() -> None:
    learner = OnlineLearner.create(LINEAR)
    assert learner.learn(record(40, y=2.0), input_partition=0, input_offset=0)
    # the ingest stage restarted and sent source offset 40 (and an older one) again
    assert learner.learn(record(40, y=2.0), input_partition=0, input_offset=1) is False
    assert learner.learn(record(39, y=2.0), input_partition=0, input_offset=2) is False
    assert learner.events_learned == learner.events_seen == 1
    assert learner.input_offsets == {0: 2}  # the input messages were still consumed
    assert learner.positions == {"events/0": (40, 0)}


def test_a_batched_message_is_learned_in_index_order_and_only_its_new_part_on_replay() -> None:
    learner = OnlineLearner.create(LINEAR)
    batch = [record(40, index=i) for i in range(3)]
    assert learner.learn_message(0, 0, batch[:2]) == 2
    # re-emitted with one more event (the ingest crashed mid-message and replayed it whole)
    assert learner.learn_message(0, 1, batch) == 1
    assert learner.learn_message(0, 2, [record(41)]) == 1
    assert learner.positions == {"events/0": (41, 0)} and learner.events_learned == 4


def test_positions_are_kept_per_source_topic_and_partition() -> None:
    learner = OnlineLearner.create(LINEAR)
    assert learner.learn(record(40, y=None, partition=0), 0, 0) is False  # waits for its label
    learner.learn(record(5, partition=1), 0, 1)
    learner.learn(label(3, 40, 2.0), 0, 2)
    assert learner.positions == {"events/0": (40, 0), "events/1": (5, 0), "labels/0": (3, 0)}
    assert learner.events_learned == 2


def test_a_re_relayed_label_is_not_learned_twice() -> None:
    learner = OnlineLearner.create(LINEAR)
    learner.learn(record(0, y=None), 0, 0)
    assert learner.learn(label(9, 0, 2.0), 0, 1)
    assert learner.learn(label(9, 0, 2.0), 0, 2) is False  # the relay restarted
    assert (learner.labels_received, learner.events_learned, learner.labels_unmatched) == (1, 1, 0)


# --- delayed labels --------------------------------------------------------------------------


def test_a_delayed_label_scores_the_prediction_made_when_the_event_came() -> None:
    learner = OnlineLearner.create(LINEAR)
    for offset, (x, y) in enumerate(stream(30)):
        learner.learn(record(offset, x, y), 0, offset)
    x = {"a": 4.0, "b": 1.0}
    said_then = learner.predict(x).value
    learner.learn(record(100, x, None), 0, 100)
    for offset, (x2, y2) in enumerate(stream(20, seed=1), start=101):  # the model moves on
        learner.learn(record(offset, x2, y2), 0, offset)
    before = learner.evaluation.cumulative["MAE"].get() * learner.evaluation.labelled
    learner.learn(label(0, 100, 7.0), 0, 200)
    after = learner.evaluation.cumulative["MAE"].get() * learner.evaluation.labelled
    assert after - before == pytest.approx(abs(7.0 - said_then))
    assert learner.events_learned == 51


def test_a_label_that_comes_before_its_event_waits_for_it() -> None:
    learner = OnlineLearner.create(LINEAR)
    learner.learn(label(0, 5, 3.0), 0, 0)
    assert learner.orphan_labels and learner.events_learned == 0
    assert learner.learn(record(5, {"a": 1.0}, None), 0, 1)
    assert learner.events_learned == 1 and not learner.orphan_labels and not learner.pending


def test_unlabelled_events_expire_after_the_ttl_in_event_time_and_are_counted() -> None:
    learner = OnlineLearner.create(ModelSpec(name="m", label_ttl_seconds=10))
    learner.learn(record(0, y=None, ts=100.0), 0, 0)
    learner.learn(record(1, y=None, ts=105.0), 0, 1)
    learner.learn(record(2, y=1.0, ts=112.0), 0, 2)  # event time moves on: the first is too old
    assert (learner.labels_expired, list(learner.pending)) == (1, ["e1-0"])
    learner.learn(label(0, 0, 5.0), 0, 3)  # its label comes too late: it meets no event
    assert learner.events_learned == 1
    learner.learn(record(3, y=1.0, ts=130.0), 0, 4)
    assert (learner.labels_expired, learner.labels_unmatched, len(learner.pending)) == (2, 1, 0)


def test_at_most_max_pending_events_wait_for_labels() -> None:
    learner = OnlineLearner.create(ModelSpec(name="m", max_pending=3))
    for offset in range(5):
        learner.learn(record(offset, y=None), 0, offset)
    assert list(learner.pending) == ["e2-0", "e3-0", "e4-0"] and learner.labels_expired == 2


# --- tasks -----------------------------------------------------------------------------------


def test_classification_scores_labels_with_predict_one_and_roc_auc_with_probabilities() -> None:
    spec = ModelSpec(name="m", task="classification", estimator="logistic_regression")
    learner, model = OnlineLearner.create(spec), spec.build()
    accuracy, auc = metrics.Accuracy(), metrics.ROCAUC()
    rng = random.Random(3)
    for offset in range(300):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        y = x["a"] + 0.3 * x["b"] > 0
        learner.learn(record(offset, x, y), 0, offset)
        if (p := model.predict_one(x)) is not None:
            accuracy.update(y, p)
        if proba := model.predict_proba_one(x):
            auc.update(y, proba)
        model.learn_one(x, y)
    assert learner.evaluation.get("Accuracy") == accuracy.get() > 0.8
    assert learner.evaluation.get("ROCAUC") == auc.get()
    said = learner.predict({"a": 0.9, "b": 0.0})
    assert said.value is True and said.proba[True] > 0.5


def test_anomaly_models_learn_every_event_and_score_labels_whenever_they_come() -> None:
    spec = ModelSpec(name="m", task="anomaly", estimator="half_space_trees")
    learner = OnlineLearner.create(spec)
    rng = random.Random(4)
    for offset in range(200):
        odd = offset % 20 == 19
        x = {"a": rng.uniform(0.4, 0.6) if not odd else 5.0}
        learner.learn(record(offset, x, odd if offset % 2 else None), 0, offset)
    assert learner.events_learned == 200  # unsupervised: labels are not needed to learn
    assert learner.evaluation.labelled == 100 and len(learner.pending) == 100
    learner.learn(label(0, 0, False), 0, 200)
    assert learner.evaluation.labelled == 101 and learner.events_learned == 200
    report = learner.summary()["metrics"]
    assert report["scores"]["max"] >= report["scores"]["p50"] >= 0
    assert 0.0 <= report["cumulative"]["ROCAUC"] <= 1.0


def test_a_forecast_learns_each_devices_next_value_from_its_previous_features() -> None:
    spec = ModelSpec(name="m", task="forecast", target="t")
    learner, model, mae = OnlineLearner.create(spec), spec.build(), metrics.MAE()
    values = {"d1": [1.0, 2.0, 3.0, 4.0], "d2": [10.0, 9.0, 8.0, 7.0]}
    offset, previous = 0, {}
    for step in range(4):
        for device, series in values.items():
            x = {"t": series[step]}
            # the record carries this event's value of the forecast sensor as its target
            learner.learn(record(offset, x, series[step], device=device), 0, offset)
            if device in previous:
                px, said = previous[device]
                mae.update(series[step], said)
                model.learn_one(px, series[step])
            previous[device] = (x, model.predict_one(x))
            offset += 1
    assert learner.events_learned == 6 and learner.metric == mae.get()
    assert set(learner.last_by_device) == {"d1", "d2"}


# --- bookkeeping -----------------------------------------------------------------------------


def test_the_feature_schema_of_the_last_record_is_kept() -> None:
    learner = OnlineLearner.create(LINEAR)
    learner.learn(record(0, schema="abc"), 0, 0)
    learner.learn(record(1, schema=""), 0, 1)  # no schema recorded: keep what we knew
    assert learner.feature_schema == "abc"


def test_align_topics_forgets_offsets_only_when_a_topic_was_recreated() -> None:
    learner = OnlineLearner.create(LINEAR)
    learner.align_topics({"sensor-features": "id-1", "sensor-events": "id-2"})
    learner.learn(record(40), 0, 7)
    learner.align_topics({"sensor-features": "id-1", "sensor-events": "id-2"})
    assert learner.input_offsets == {0: 7} and learner.positions == {"events/0": (40, 0)}
    learner.align_topics({"sensor-features": "id-9", "sensor-events": "id-2"})
    assert learner.input_offsets == {} and learner.positions == {}
    assert learner.events_learned == 1  # the model itself is kept
    assert learner.learn(record(0), 0, 0)  # the new topic's offsets start again


def test_summary_is_json_serialisable_and_exact() -> None:
    learner = OnlineLearner.create(LINEAR)
    learner.align_topics({"sensor-features": "id-1"})
    learner.learn(record(40, {"a": 1.0}, 4.0, schema="abc"), 1, 7)
    learner.learn(record(41, {"a": 1.0}, None), 1, 8)
    summary = json.loads(json.dumps(learner.summary()))
    assert summary.pop("learn_us_per_event") > 0
    assert summary.pop("spec") == LINEAR.summary()
    metrics_report = summary.pop("metrics")
    assert metrics_report["cumulative"] == {"MAE": 4.0, "RMSE": 4.0, "R2": 0.0}
    assert metrics_report["labelled"] == 1 and metrics_report["window"] == 1000
    assert summary == {
        "model": "m",
        "task": "regression",
        "estimator": "linear_regression",
        "events_seen": 2,
        "events_learned": 1,
        "labels": {"received": 0, "pending": 1, "expired": 0, "unmatched": 0},
        "metric": {"name": "MAE", "value": 4.0, "rolling": 4.0},
        "input_offsets": {"1": 8},
        "source_positions": {"events/0": [41, 0]},
        "topic_ids": {"sensor-features": "id-1"},
        "feature_schema": "abc",
        "warnings": [],
        "drift": {
            "error": {"detector": "adwin", "seen": 1, "alerts": 0},
            "feature:a": {"detector": "adwin", "seen": 2, "alerts": 0},
        },
        "race": None,
        "promotions": 0,
        "records_failed": 0,
    }


def test_summary_of_a_fresh_learner_has_no_metric_values_yet() -> None:
    summary = OnlineLearner.create(ModelSpec(name="f", estimator="hoeffding_tree_regressor")).summary()
    assert json.loads(json.dumps(summary))["learn_us_per_event"] == 0.0
    # "No data yet" is None, never a perfect 0.
    assert summary["metric"] == {"name": "MAE", "value": None, "rolling": None}
    assert set(summary["metrics"]["cumulative"].values()) == {None}
