"""Online learning through the real broker and Redis: River's own numbers, exactly once.

- fidelity: events replayed through Kafka and the worker end with the same prequential metric as
  ``river.evaluate.progressive_val_score`` on the same rows, for regression, classification and
  anomaly specs learning side by side, on a River generator and on a dataset shipped with River;
- SIGKILL at three random moments while learning: every event learned once, River's metric;
- delayed labels: learned once when they come, counted when they never do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaConsumer
from redis.asyncio import Redis
from river import datasets, evaluate, metrics
from river.datasets import synth

from driftline.core.records import FeatureRecord, LabelRecord
from driftline.kafka import SensorProducer, ensure_topics
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.replay import ColumnMapping, replay
from driftline.settings import Settings
from driftline.simulator import SensorSimulator
from driftline.streams.cleaning import TimePolicy
from driftline.streams.ingest import IngestStage

pytestmark = pytest.mark.integration

START = 1_780_000_000.0  # 2026-05-28: in the past, so no event is "from the future"


def metas(settings: Settings) -> dict[str, dict[str, Any]]:
    """The newest snapshot metadata of every model in the registry."""

    async def read() -> dict[str, dict[str, Any]]:
        redis = Redis.from_url(settings.redis_url)
        try:
            registry = settings.registry(redis)
            out = {}
            for name in await registry.model_names():
                versions = await registry.versions(name)
                if versions:
                    out[name] = versions[-1]
            return out
        finally:
            await redis.aclose()

    return asyncio.run(read())


def wait_until_seen(
    settings: Settings, wait_for: Any, n: int, models: list[str], timeout: float = 120
) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        found = metas(settings)
        if all(found.get(m, {}).get("events_seen", 0) >= n for m in models):
            return found
        return None

    found = wait_for(done, timeout=timeout, what=f"snapshots of {models} with {n} events seen")
    assert isinstance(found, dict)
    return found


def river_score(rows: list[tuple[dict[str, Any], Any]], spec: ModelSpec) -> float:
    """River's own progressive validation of a fresh model built from ``spec``."""
    metric = {
        "MAE": metrics.MAE,
        "Accuracy": metrics.Accuracy,
        "ROCAUC": lambda: metrics.ROCAUC(pos_val=spec.positive_label),
    }[spec.metric_name]()
    return float(evaluate.progressive_val_score(rows, spec.build(), metric).get())


# --- fidelity ------------------------------------------------------------------------------------


def synthetic_rows(n: int) -> list[dict[str, Any]]:
    """Friedman #1 (regression) with a class (y above its median), and three gauges ``z`` with
    rare planted outliers (anomaly)."""
    rows = []
    rng = random.Random(5)
    for i, (x, y) in enumerate(synth.Friedman(seed=42).take(n)):
        odd = i > 50 and rng.random() < 0.03
        readings = {f"x{k}": v for k, v in x.items()}
        readings |= {f"z{k}": rng.uniform(0.4, 0.6) * (3.0 if odd else 1.0) for k in range(3)}
        rows.append(
            {"readings": readings, "y": y, "high": 1.0 if y > 14.0 else 0.0, "odd": 1.0 if odd else 0.0}
        )
    return rows


SYNTHETIC_SPECS = [
    ModelSpec(name="reg", task="regression", features=("x?",), estimator="linear_regression"),
    ModelSpec(
        name="cls",
        task="classification",
        target="high",
        features=("x?",),
        estimator="hoeffding_tree_classifier",
        positive_label=1.0,
    ),
    ModelSpec(
        name="odd",
        task="anomaly",
        target="odd",
        features=("z?",),
        estimator="half_space_trees",
        positive_label=1.0,
    ),
]


def test_pipeline_metrics_equal_rivers_progressive_val_score_on_a_generator(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    n = 3000
    settings = make_settings(models=SYNTHETIC_SPECS, target="y")
    ensure_topics(settings)
    rows = synthetic_rows(n)
    with SensorProducer(settings) as producer:
        for start in range(0, n, 50):  # batched messages, as a gateway sends them
            producer.send_batch(
                [
                    {
                        "event_id": f"f-{i}",
                        "device_id": "gen",
                        "ts": START + i,
                        "readings": {**row["readings"], "high": row["high"], "odd": row["odd"]},
                        "target": row["y"],
                    }
                    for i, row in enumerate(rows[start : start + 50], start=start)
                ]
            )
    start_worker(settings)
    found = wait_until_seen(settings, wait_for, n, [s.name for s in SYNTHETIC_SPECS])

    targets = {"reg": "y", "cls": "high", "odd": "odd"}
    for spec in SYNTHETIC_SPECS:
        dataset = [(spec.select(row["readings"]), row[targets[spec.name]]) for row in rows]
        expected = river_score(dataset, spec)
        meta = found[spec.name]
        assert meta["metric"]["name"] == spec.metric_name
        assert meta["metric"]["value"] == pytest.approx(expected, rel=1e-12, abs=1e-12), spec.name
        assert meta["events_seen"] == n
    assert found["reg"]["events_learned"] == found["cls"]["events_learned"] == n
    assert found["odd"]["events_learned"] == n and found["odd"]["metrics"]["labelled"] == n
    # guards the comparison: the models learned something, so equal numbers are not both trivial
    assert found["reg"]["metrics"]["cumulative"]["R2"] > 0.5
    assert found["cls"]["metric"]["value"] > 0.7 and found["odd"]["metric"]["value"] > 0.8


#: The dataset's own columns (the worker also computes rolling features, which River never sees).
PHISHING_COLUMNS = tuple(next(iter(datasets.Phishing()))[0])
PHISHING_SPECS = [
    ModelSpec(
        name="phish", task="classification", estimator="logistic_regression", features=PHISHING_COLUMNS
    ),
    ModelSpec(name="phish-hst", task="anomaly", estimator="half_space_trees", features=PHISHING_COLUMNS),
]


def test_pipeline_metrics_equal_rivers_on_a_dataset_shipped_with_river(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    settings = make_settings(models=PHISHING_SPECS, target="y")
    ensure_topics(settings)
    start_worker(settings)
    sent = replay(
        settings,
        "river:Phishing",
        ColumnMapping("river:Phishing", target_column="y"),
        progress=False,
        batch=20,
    )
    rows = list(datasets.Phishing())
    assert sent == len(rows) == 1250
    found = wait_until_seen(settings, wait_for, sent, [s.name for s in PHISHING_SPECS])
    for spec in PHISHING_SPECS:
        assert found[spec.name]["metric"]["value"] == pytest.approx(
            river_score(rows, spec), rel=1e-12, abs=1e-12
        ), spec.name
    assert found["phish"]["metric"]["value"] > 0.85


# --- SIGKILL while learning ----------------------------------------------------------------------


# The fault suite's scenario 1 (tests/faults/test_kills.py) kills a worker as this does, in
# make test; this variant (its own River-equality check, 76 s) runs with make chaos.
@pytest.mark.chaos
def test_sigkill_at_three_random_moments_learns_every_event_exactly_once(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    n = 4000
    settings = make_settings(snapshot_every_events=200, snapshot_every_seconds=0.5)
    ensure_topics(settings)
    events = list(SensorSimulator(devices=1, seed=21, start=datetime.fromtimestamp(START, UTC)).events(n))
    messages = [events[i : i + 10] for i in range(0, n, 10)]
    rng = random.Random()  # a new draw each run: the moments are random, the outcome must not be
    done = threading.Event()

    def trickle() -> None:  # keep the worker busy learning across the kills
        with SensorProducer(settings) as producer:
            for batch in messages:
                producer.send_batch(batch)
                producer.flush()
                time.sleep(0.15)
        done.set()

    producer_thread = threading.Thread(target=trickle, daemon=True)
    producer_thread.start()
    worker = start_worker(settings)
    seen_at_kill = []
    for _ in range(3):
        before = metas(settings).get("default", {}).get("version", 0)
        wait_for(
            lambda b=before: metas(settings).get("default", {}).get("version", 0) > b,
            timeout=90,
            what="the restarted worker to publish a snapshot",
        )
        time.sleep(rng.uniform(0.0, 1.5))
        worker.kill()
        seen_at_kill.append(metas(settings)["default"]["events_seen"])
        worker = start_worker(settings)
    producer_thread.join(timeout=120)
    assert done.is_set()
    assert all(0 < seen < n for seen in seen_at_kill), f"kills must land mid-stream: {seen_at_kill}"

    meta = wait_until_seen(settings, wait_for, n, ["default"], timeout=180)["default"]
    time.sleep(1.5)  # any double learning would show in a later snapshot
    meta = metas(settings)["default"]
    assert meta["events_seen"] == meta["events_learned"] == n, worker.log_tail()

    # the same events through the same pure stages in one process, and River's loop on them
    stage = IngestStage(
        models=settings.model_specs(),
        target=settings.target,
        features=settings.features,
        max_message_bytes=settings.max_message_bytes,
        catalog=settings.catalog(),
        time_policy=TimePolicy(settings.allowed_lateness_seconds, 1e12),
    )
    records = [
        r
        for offset, batch in enumerate(messages)
        for r in stage.handle(json.dumps(batch).encode(), 0, offset)
        if isinstance(r, FeatureRecord)
    ]
    assert len(records) == n
    spec = settings.model_specs()[0]
    expected = river_score([(spec.select(r.features), r.target) for r in records], spec)
    assert meta["metric"]["value"] == pytest.approx(expected, rel=1e-12)


# --- delayed labels ------------------------------------------------------------------------------


def test_delayed_labels_are_learned_once_and_missing_ones_expire(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    spec = ModelSpec(name="late", label_ttl_seconds=300)
    # one labels partition: labels reach the model in the order sent, so the run is repeatable
    settings = make_settings(models=[spec], labels_partitions=1)
    ensure_topics(settings)

    def event(i: int, target: float | None) -> dict[str, Any]:
        ts = START + i if i < 200 else START + 1000 + i
        return {
            "event_id": f"ev-{i}",
            "device_id": "lab",
            "ts": ts,
            "readings": {"temperature": 20.0 + i % 7, "vibration": 0.1 * (i % 3)},
            "target": target,
        }

    truth = {i: 1.0 + 0.2 * (i % 7) for i in range(400)}
    labelled = [i for i in range(200) if i % 2 == 0 and i % 10 != 0]  # 90; the rest never come
    worker = start_worker(settings)
    with SensorProducer(settings) as producer:
        for i in range(200):
            producer.send(event(i, None))
    wait_until_seen(settings, wait_for, 200, ["late"])
    with SensorProducer(settings) as producer:
        for i in labelled:
            producer.send_label(f"ev-{i}", truth[i])
        producer.send_label(f"ev-{labelled[0]}", truth[labelled[0]])  # a device retried: a duplicate
        producer.send_raw(b"x", b'{"event_id": "ev-1"}', settings.labels_topic)  # no label: DLQ
        producer.send_label("ev-3", 1.0, model="nobody")  # an unknown model: DLQ
    wait_for(
        lambda: metas(settings)["late"]["labels"]["received"] == len(labelled) + 1,
        timeout=60,
        what="the labels to be learned",
    )
    with SensorProducer(settings) as producer:  # event time moves 1000 s on: the rest expire
        for i in range(200, 400):
            producer.send(event(i, truth[i]))
    meta = wait_until_seen(settings, wait_for, 400, ["late"])["late"]
    time.sleep(1.5)
    meta = metas(settings)["late"]
    assert meta["events_learned"] == len(labelled) + 200, worker.log_tail()
    assert meta["labels"] == {
        "received": len(labelled) + 1,
        "pending": 0,
        "expired": 200 - len(labelled),
        "unmatched": 1,
    }

    # exactly what the pure learner does with the same records in the same order
    stage = IngestStage(
        models=(spec,),
        target=settings.target,
        features=settings.features,
        max_message_bytes=settings.max_message_bytes,
        catalog=settings.catalog(),
        time_policy=TimePolicy(settings.allowed_lateness_seconds, 1e12),
    )
    learner = OnlineLearner.create(spec)
    offsets = itertools.count()
    for i in range(200):
        learner.learn_message(0, next(offsets), stage.handle(json.dumps(event(i, None)).encode(), 0, i))
    for n, i in enumerate([*labelled, labelled[0]]):
        learner.learn_message(0, next(offsets), [LabelRecord("late", f"ev-{i}", truth[i], 0, n)])
    for i in range(200, 400):
        learner.learn_message(0, next(offsets), stage.handle(json.dumps(event(i, truth[i])).encode(), 0, i))
    assert learner.events_learned == meta["events_learned"]
    assert meta["metric"]["value"] == pytest.approx(learner.metric, rel=1e-12)

    consumer = KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    reasons = sorted(dict(r.headers)["dl-reason"].decode() for r in consumer)
    consumer.close()
    assert reasons == ["invalid_label", "unknown_model"]
