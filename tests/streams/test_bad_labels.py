"""A label of the wrong type for its model: caught at ingest and in the label relay (DLQ reason
``label_type``), and, should one still make River fail, survived by the learn stage (logged,
counted, dead-lettered as ``learn_failed``, the rest of its message learned, exactly once)."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from driftline.core import records
from driftline.core.meta import SnapshotMeta
from driftline.core.records import FeatureRecord, LabelRecord, Record
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.streams.agents import build_worker
from driftline.streams.batches import LEARN_FAILED, Incoming, LearnBatch
from driftline.streams.cleaning import Rejection
from driftline.streams.config import Topics, WorkerConfig
from driftline.streams.features import FeatureSpec
from driftline.streams.ingest import LABELS_REFUSED, IngestStage, label_refusal
from driftline.streams.schema import LABEL_TYPE, label_problem

NOW = 1_800_000_000
REG = ModelSpec(name="reg")
CLS = ModelSpec(name="cls", task="classification", estimator="hoeffding_tree_classifier")
LOGREG = ModelSpec(name="lr", task="classification", estimator="logistic_regression")


# --- the check ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "binary", "label", "fits"),
    [
        ("regression", False, 2.5, True),
        ("regression", False, 3, True),
        ("regression", False, "high", False),
        ("regression", False, True, False),
        ("regression", False, float("nan"), False),
        ("forecast", False, "x", False),
        ("classification", False, "open", True),
        ("classification", False, True, True),
        ("classification", False, 2.0, True),
        ("classification", False, 2.5, False),
        ("classification", True, True, True),
        ("classification", True, 0.0, True),
        ("classification", True, "True", False),
        ("classification", True, 2.0, False),
        ("anomaly", False, 1.0, True),
        ("anomaly", False, "yes", False),
    ],
)
def test_a_label_fits_its_models_task_or_says_what_was_expected(
    task: str, binary: bool, label: Any, fits: bool
) -> None:
    assert (label_problem(task, label, binary=binary) is None) is fits


def test_only_classifiers_of_two_classes_are_binary() -> None:
    stage = IngestStage(models=(REG, CLS, LOGREG), target="power", max_message_bytes=10_000)
    assert stage.binary == {"lr"}
    assert label_refusal(LOGREG, "True", stage.binary) == (
        "model 'lr' (classification) learns a boolean or 0/1, got text 'True'"
    )
    # an anomaly model without a target of its own gets the deployment's numbers: not checked
    hst = {"task": "anomaly", "estimator": "half_space_trees"}
    assert label_refusal(ModelSpec(name="a", **hst), 2.48, frozenset()) is None
    assert label_refusal(ModelSpec(name="a", target="odd", **hst), 2.48, frozenset()) is not None


# --- ingest -------------------------------------------------------------------------------------


def test_ingest_sends_an_unfit_label_to_the_dlq_and_the_event_on_unlabelled() -> None:
    stage = IngestStage(
        models=(REG, CLS), target="power", max_message_bytes=10_000, features=FeatureSpec(preset="raw")
    )
    events = [
        {"event_id": "e1", "device_id": "d", "ts": NOW, "readings": {"t": 1.0}, "target": 2.5},
        {"event_id": "e2", "device_id": "d", "ts": NOW + 1, "readings": {"t": 2.0}, "target": "high"},
    ]
    outcomes = stage.handle(json.dumps(events).encode(), 0, 0, NOW * 1000)
    labelled = {(o.event_id, o.model): o.target for o in outcomes if isinstance(o, FeatureRecord)}
    assert labelled == {("e1", "reg"): 2.5, ("e1", "cls"): None, ("e2", "reg"): None, ("e2", "cls"): "high"}
    refused = [o for o in outcomes if isinstance(o, Rejection)]
    assert [(r.reason, r.item) for r in refused] == [(LABEL_TYPE, 0), (LABEL_TYPE, 1)]
    assert refused[0].message == (
        "model 'cls' (classification) learns a class: a boolean, a whole number or a text, "
        "got number 2.5: learned without it"
    )
    assert "model 'reg' (regression) learns a finite number, got text 'high'" in refused[1].message
    # the events themselves are accepted: the identity holds, the refusals are counted apart
    totals = stage.totals()
    assert (totals["received"], totals["accepted"], totals["rejected"]) == (2, 2, 0)
    assert totals[LABELS_REFUSED] == 2 and stage.devices["d"].counts[LABELS_REFUSED] == 2


# --- learn --------------------------------------------------------------------------------------


class Effects:
    """The broker and Redis as the learn stage sees them; records the order of what it does."""

    def __init__(self, registry: dict[str, bytes] | None = None, crash: bool = False) -> None:
        self.registry = registry if registry is not None else {}
        self.crash = crash
        self.done: list[str] = []
        self.dlq: list[tuple[Incoming, Rejection]] = []

    async def dead_letter(self, message: Incoming, rejection: Rejection) -> None:
        self.dlq.append((message, rejection))
        self.done.append("dead_letter")

    async def flush(self) -> None:
        self.done.append("flush")

    async def seal(self, learners: Sequence[OnlineLearner]) -> asyncio.Future[list[SnapshotMeta]]:
        if self.crash:
            raise RuntimeError("the process dies before publishing")
        metas: list[Any] = []
        for learner in learners:
            self.registry[learner.name] = pickle.dumps(learner)
            self.done.append("publish")
            metas.append({**learner.summary(), "version": 1})
        published: asyncio.Future[list[SnapshotMeta]] = asyncio.get_running_loop().create_future()
        published.set_result(metas)
        return published

    def ack(self, message: Incoming) -> None:
        self.done.append(f"ack {message.offset}")


def features_topic() -> list[bytes]:
    """Two features messages for "reg"; a text target (which ingest would have refused) in the
    middle of the first, and a text label on the labels hop in the second."""
    good = [
        FeatureRecord("reg", "d", f"e{i}", float(NOW + i), {"x": float(i)}, 2.0 * i, 0, i) for i in range(10)
    ]
    good[4].target = "high"
    pending = FeatureRecord("reg", "d", "late", float(NOW + 20), {"x": 1.0}, None, 0, 20)
    return [
        records.encode("reg", good),
        records.encode("reg", [pending]),
        records.encode("reg", [LabelRecord("reg", "late", "oops", 0, 0)]),
    ]


def learn(batch: LearnBatch, topic: list[bytes]) -> None:
    batch.handle(
        [Incoming("sensor-features", 0, offset, value, b"reg") for offset, value in enumerate(topic)]
    )


def test_the_learn_stage_survives_a_record_river_fails_on_and_dead_letters_it() -> None:
    effects = Effects()
    batch = LearnBatch({"reg": REG}, effects)
    learn(batch, features_topic())  # before: TypeError out of handle, the agent dead
    learner = batch.learners["reg"]
    assert learner.events_seen == 11 and learner.events_learned == 9
    assert learner.records_failed == 2
    asyncio.run(batch.publish())
    # dead letters first (flushed), then the snapshot that skips them, then the acks
    assert effects.done == ["dead_letter", "dead_letter", "flush", "publish", "ack 0", "ack 1", "ack 2"]
    (copy, why), (label_copy, label_why) = effects.dlq
    assert why.reason == label_why.reason == LEARN_FAILED
    assert why.item == 4 and (copy.topic, copy.partition, copy.offset) == ("sensor-features", 0, 0)
    assert why.message.startswith("model 'reg', event 'e4' (events/0:4:0): TypeError")
    assert json.loads(copy.value or b"")["target"] == "high"
    assert json.loads(label_copy.value or b"")["label"] == "oops" and label_why.item == 0
    assert pickle.loads(effects.registry["reg"]).records_failed == 2


def test_a_failed_record_fails_once_again_on_replay_and_is_counted_once() -> None:
    topic = features_topic()
    reference = LearnBatch({"reg": REG}, Effects())
    learn(reference, topic)
    # Killed before publishing: the restarted stage learns the same messages on no snapshot.
    crashed = Effects(crash=True)
    batch = LearnBatch({"reg": REG}, crashed)
    learn(batch, topic)
    with pytest.raises(RuntimeError):
        asyncio.run(batch.publish())
    again = Effects(crashed.registry)
    batch = LearnBatch({"reg": REG}, again)
    batch.restore([])
    learn(batch, topic)
    asyncio.run(batch.publish())
    # And once published, a replay of the same messages is skipped: nothing fails twice.
    batch.restore(pickle.loads(blob) for blob in again.registry.values())
    learn(batch, topic)
    asyncio.run(batch.publish())
    recovered, expected = batch.learners["reg"], reference.learners["reg"]
    assert recovered.records_failed == expected.records_failed == 2
    assert recovered.events_learned == expected.events_learned and recovered.metric == expected.metric
    assert {r.message for _, r in again.dlq} == {r.message for _, r in crashed.dlq} and len(again.dlq) == 2


# --- the label relay ----------------------------------------------------------------------------


def test_the_label_relay_sends_a_label_only_to_models_that_can_learn_it(tmp_path: Path) -> None:
    config = WorkerConfig(
        broker="kafka://127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        namespace="t",
        secrets=(b"s" * 16,),
        group_id="g",
        stages=("ingest",),
        data_dir=tmp_path,
        topics=Topics("ev", "fe", "dl", "la"),
        specs=(REG, CLS),
    )
    worker = build_worker(config)
    sent: list[tuple[str, list[Record]]] = []
    dlq: list[Rejection] = []

    async def send_features(model: str, value: bytes) -> None:
        sent.append((model, records.decode(value)))

    async def dead_letter(message: Incoming, rejection: Rejection) -> None:
        dlq.append(rejection)

    worker.send_features = send_features  # type: ignore[method-assign]
    worker.dead_letter = dead_letter  # type: ignore[method-assign]

    def relay(label: dict[str, Any], offset: int) -> None:
        asyncio.run(worker._relay_label(Incoming("la", 0, offset, json.dumps(label).encode())))

    relay({"event_id": "e1", "label": "high"}, 0)
    relay({"event_id": "e2", "label": "high", "model": "reg"}, 1)
    relay({"event_id": "e3", "label": 3.0}, 2)
    assert [(model, [r.event_id for r in rs]) for model, rs in sent] == [
        ("cls", ["e1"]),
        ("reg", ["e3"]),
        ("cls", ["e3"]),
    ]
    assert [r.reason for r in dlq] == [LABEL_TYPE, LABEL_TYPE]
    assert dlq[0].message == "model 'reg' (regression) learns a finite number, got text 'high': not relayed"
