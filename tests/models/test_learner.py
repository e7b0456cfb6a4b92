"""OnlineLearner: prequential (predict, score, then learn) and exactly-once over replays."""

from __future__ import annotations

import json
import random

import pytest

from models.learner import OnlineLearner
from models.specs import SPECS
from streams.ingest import FeatureRecord


def record(offset: int, x: dict[str, float] | None = None, y: float | None = 1.0, *, partition: int = 0,
           index: int = 0, schema: str = "") -> FeatureRecord:
    return FeatureRecord("m", "d1", f"e{offset}-{index}", float(offset), x or {"a": 1.0}, y,
                         source_partition=partition, source_offset=offset, source_index=index, schema=schema)


def stream(n: int, seed: int = 0) -> list[tuple[dict[str, float], float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = {"a": rng.uniform(0, 10), "b": rng.uniform(-5, 5)}
        rows.append((x, 2 * x["a"] - x["b"] + rng.gauss(0, 0.1)))
    return rows


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_the_metric_scores_each_prediction_made_before_learning_its_event(spec_name: str) -> None:
    rows = stream(300)
    learner = OnlineLearner.create("m", spec_name)
    for offset, (x, y) in enumerate(rows):
        assert learner.learn(record(offset, x, y), input_partition=0, input_offset=offset)

    spec = SPECS[spec_name]
    model, metric = spec.build(), spec.metric()
    for x, y in rows:
        y_pred = model.predict_one(x)
        metric.update(y, y_pred)
        model.learn_one(x, y)

    assert learner.metric.get() == metric.get()
    assert learner.predict({"a": 3.0, "b": 1.0}) == model.predict_one({"a": 3.0, "b": 1.0})
    assert learner.events_learned == 300


def test_learning_after_predicting_is_not_the_same_as_predicting_after_learning() -> None:
    # guards the test above: the order is observable, so equal metrics do mean the right order
    rows = stream(50)
    spec = SPECS["linear_regression"]
    prequential, hindsight = OnlineLearner.create("m", spec.name), spec.metric()
    model = spec.build()
    for offset, (x, y) in enumerate(rows):
        prequential.learn(record(offset, x, y), 0, offset)
        model.learn_one(x, y)
        hindsight.update(y, model.predict_one(x))
    assert prequential.metric.get() != hindsight.get()


def test_the_first_prediction_is_scored_too() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    learner.learn(record(0, {"a": 1.0}, 4.0), 0, 0)
    assert learner.metric.get() == 4.0  # an untrained linear model predicts 0: |4 - 0|


def test_the_same_input_offset_twice_is_learned_once() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    assert learner.learn(record(0, y=2.0), input_partition=0, input_offset=7) is True
    metric = learner.metric.get()
    assert learner.learn(record(1, y=50.0), input_partition=0, input_offset=7) is False
    assert learner.learn(record(2, y=50.0), input_partition=0, input_offset=3) is False
    assert learner.events_learned == 1
    assert learner.metric.get() == metric
    assert learner.input_offsets == {0: 7}


def test_input_offsets_are_kept_per_input_partition() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    assert learner.learn(record(0, partition=0), input_partition=0, input_offset=7)
    assert learner.learn(record(0, partition=1), input_partition=1, input_offset=0)
    assert learner.input_offsets == {0: 7, 1: 0}


def test_a_re_emitted_source_event_at_a_new_input_offset_is_dropped() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    assert learner.learn(record(40, y=2.0), input_partition=0, input_offset=0)
    # the ingest stage restarted and sent source offset 40 (and an older one) again
    assert learner.learn(record(40, y=2.0), input_partition=0, input_offset=1) is False
    assert learner.learn(record(39, y=2.0), input_partition=0, input_offset=2) is False
    assert learner.events_learned == 1
    assert learner.input_offsets == {0: 2}  # the input messages were still consumed
    assert learner.source_offsets == {0: (40, 0)}


def test_events_of_one_batched_source_message_are_ordered_by_index() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    assert learner.learn(record(40, index=0), 0, 0)
    assert learner.learn(record(40, index=1), 0, 1)
    assert learner.learn(record(40, index=1), 0, 2) is False
    assert learner.learn(record(40, index=0), 0, 3) is False
    assert learner.learn(record(41, index=0), 0, 4)
    assert learner.source_offsets == {0: (41, 0)}
    assert learner.events_learned == 3


def test_source_offsets_are_kept_per_source_partition() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    assert learner.learn(record(40, partition=0), 0, 0)
    assert learner.learn(record(5, partition=1), 0, 1)
    assert learner.source_offsets == {0: (40, 0), 1: (5, 0)}


def test_unlabelled_records_are_counted_not_learned() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    before = learner.predict({"a": 1.0})
    assert learner.learn(record(0, {"a": 1.0}, None), 0, 0) is False
    assert learner.learn(record(1, {"a": 1.0}, None), 0, 1) is False
    assert (learner.events_unlabelled, learner.events_learned) == (2, 0)
    assert learner.predict({"a": 1.0}) == before
    assert learner.metric.get() == 0.0
    # their positions are still consumed: a replay does not count them twice
    assert learner.learn(record(1, {"a": 1.0}, None), 0, 2) is False
    assert learner.events_unlabelled == 2


def test_the_feature_schema_of_the_last_record_is_kept() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    learner.learn(record(0, schema="abc"), 0, 0)
    learner.learn(record(1, schema=""), 0, 1)  # no schema recorded: keep what we knew
    assert learner.feature_schema == "abc"
    learner.learn(record(2, schema="def"), 0, 2)
    assert learner.feature_schema == "def"


def test_align_topics_keeps_offsets_when_the_topics_are_the_same() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    learner.align_topics({"sensor-features": "id-1", "sensor-events": "id-2"})
    learner.learn(record(40), 0, 7)
    learner.align_topics({"sensor-features": "id-1", "sensor-events": "id-2"})
    assert learner.input_offsets == {0: 7}
    assert learner.source_offsets == {0: (40, 0)}


def test_align_topics_on_a_fresh_learner_only_records_the_ids() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    learner.learn(record(40), 0, 7)  # offsets from before topic ids were known are kept
    learner.align_topics({"sensor-features": "id-1"})
    assert learner.topic_ids == {"sensor-features": "id-1"}
    assert learner.input_offsets == {0: 7}


def test_align_topics_forgets_offsets_when_a_topic_was_recreated() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    learner.align_topics({"sensor-features": "id-1", "sensor-events": "id-2"})
    learner.learn(record(40), 0, 7)
    learner.align_topics({"sensor-features": "id-9", "sensor-events": "id-2"})
    assert learner.input_offsets == {} and learner.source_offsets == {}
    assert learner.topic_ids == {"sensor-features": "id-9", "sensor-events": "id-2"}
    assert learner.events_learned == 1  # the model itself is kept
    assert learner.learn(record(0), 0, 0)  # the new topic's offsets start again


def test_align_topics_keeps_its_own_copy_of_the_ids() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    ids = {"sensor-features": "id-1"}
    learner.align_topics(ids)
    ids["sensor-features"] = "changed"
    assert learner.topic_ids == {"sensor-features": "id-1"}


def test_summary_is_json_serialisable_and_exact() -> None:
    learner = OnlineLearner.create("m", "linear_regression")
    learner.align_topics({"sensor-features": "id-1"})
    learner.learn(record(40, {"a": 1.0}, 4.0, schema="abc"), 1, 7)
    learner.learn(record(41, {"a": 1.0}, None), 1, 8)
    summary = json.loads(json.dumps(learner.summary()))
    assert summary.pop("learn_us_per_event") > 0
    assert summary == {
        "model": "m",
        "spec": "linear_regression",
        "task": "regression",
        "events_learned": 1,
        "events_unlabelled": 1,
        "metric": {"name": "MAE", "value": 4.0},
        "input_offsets": {"1": 8},
        "source_offsets": {"0": [41, 0]},
        "topic_ids": {"sensor-features": "id-1"},
        "feature_schema": "abc",
    }


def test_summary_of_a_fresh_learner_is_json_serialisable() -> None:
    summary = OnlineLearner.create("fresh", "hoeffding_tree_regressor").summary()
    assert json.loads(json.dumps(summary))["learn_us_per_event"] == 0.0
    assert summary["metric"] == {"name": "MAE", "value": 0.0}


def test_an_unknown_spec_name_is_refused() -> None:
    with pytest.raises(KeyError):
        OnlineLearner.create("m", "no_such_spec")
