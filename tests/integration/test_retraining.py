"""Models that heal themselves, through the real broker, worker, Redis and API.

An abrupt concept drift in River's SEA and Agrawal streams, replayed through the pipeline, to
models that do not adapt by themselves (Gaussian naive Bayes keeps counts since the start; a plain
Hoeffding tree keeps its splits): a challenger is promoted, the API serves it without a restart,
and the served accuracy after the drift beats the same model without retraining. A worker killed
in the middle of a race decides as one that was never killed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kafka import KafkaConsumer
from redis.asyncio import Redis as AsyncRedis
from river.datasets import synth

from driftline.core.records import FeatureRecord
from driftline.kafka import SensorProducer
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings

from .conftest import ApiProcess, WorkerProcess, settings_env

pytestmark = pytest.mark.integration

#: stream -> (spec, events before the change, after it, seed). The rolling window covers the
#: whole post-drift window, so the final rolling accuracy is the served accuracy after the drift.
#: The gain varies with the seed: on Agrawal with seed 1 the plain tree's old splits happen to
#: suit the new concept (0.76 without retraining, 0.78 with); seeds 2 and 3 give +21 and +23
#: points, SEA seeds 1 to 4 +6 to +8 (bench/retrain.py reports the medians over seeds).
CASES: dict[str, tuple[dict[str, Any], int, int, int]] = {
    "sea": (
        {
            "name": "sea",
            "task": "classification",
            "estimator": "river.naive_bayes.GaussianNB",
            "rolling_window": 4000,
        },
        8000,
        4000,
        1,
    ),
    "agrawal": (
        {
            "name": "agrawal",
            "task": "classification",
            "estimator": "river.tree.HoeffdingTreeClassifier",
            "rolling_window": 4000,
        },
        4000,
        4000,
        2,
    ),
}
#: A challenger must be promoted within this many events of the change.
PROMOTED_WITHIN = 1500


def stream(kind: str, before: int, after: int, seed: int) -> list[dict[str, Any]]:
    """The concept before, then the one after: one device, times a second apart ending now."""
    if kind == "sea":
        old, new = synth.SEA(variant=3, seed=seed), synth.SEA(variant=2, seed=seed + 1)
    else:
        old = synth.Agrawal(classification_function=0, seed=seed)
        new = synth.Agrawal(classification_function=4, seed=seed + 1)
    rows = itertools.chain(itertools.islice(old, before), itertools.islice(new, after))
    start = datetime.now(UTC) - timedelta(seconds=before + after)
    return [
        {
            "event_id": f"{kind}-{i}",
            "device_id": f"{kind}-1",
            "ts": (start + timedelta(seconds=i)).isoformat(),
            "readings": {f"x{k}": float(v) for k, v in x.items()},
            "target": bool(y),
        }
        for i, (x, y) in enumerate(rows)
    ]


def in_process(spec: ModelSpec, events: list[dict[str, Any]], partition: int) -> OnlineLearner:
    """The same learner fed the same records as the pipeline feeds it, in one process."""
    learner = OnlineLearner.create(spec)
    for offset, event in enumerate(events):
        features = event["readings"]
        ts = datetime.fromisoformat(event["ts"]).timestamp()
        record = FeatureRecord(
            spec.name, event["device_id"], event["event_id"], ts, features, event["target"], partition, offset
        )
        learner.learn(record, 0, offset)
    return learner


def latest_meta(settings: Settings, model: str) -> dict[str, Any] | None:
    client = redis.Redis.from_url(settings.redis_url)
    version = client.hget(settings.keys.model(model, "aliases"), "latest")
    if version is None:
        return None
    return dict(json.loads(client.hget(settings.keys.model(model, "meta"), version)))


def seen(settings: Settings, model: str) -> int:
    meta = latest_meta(settings, model)
    return 0 if meta is None else int(meta["events_seen"])


def model_events(settings: Settings, model: str) -> list[dict[str, Any]]:
    """The audit's spawns, promotions and retirements of ``model``, oldest first."""
    client = redis.Redis.from_url(settings.redis_url)
    out = []
    for _, fields in client.xrange(settings.keys.audit()):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        if entry["model"] == model and entry["action"] in ("spawn", "promote", "retire"):
            entry["standings"] = json.loads(entry["standings"])
            out.append(entry)
    return out


def decisions(events: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    return [(e["action"], e["source"], int(e["offset"]), e["why"]) for e in events]


def recorded_alerts(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    return [json.loads(v) for v in client.hvals(settings.keys.alert_records())]


def driftline(settings: Settings, *args: str) -> None:
    """Run a ``driftline`` command as a user would, with exactly ``settings``."""
    done = subprocess.run(
        [sys.executable, "-m", "driftline", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def topic_events(settings: Settings) -> list[tuple[str, str]]:
    consumer = KafkaConsumer(
        settings.model_events_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    try:
        return [(json.loads(m.value)["action"], json.loads(m.value)["model"]) for m in consumer]
    finally:
        consumer.close()


class Predictions:
    """A client asking the API for predictions every 50 ms in a thread of its own."""

    def __init__(self, api: ApiProcess, body: dict[str, Any]) -> None:
        self.answers: list[tuple[int, int | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._ask, args=(api.url, body), daemon=True)
        self.thread.start()

    def _ask(self, url: str, body: dict[str, Any]) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                response = client.post(f"{url}/predict", json=body)
                version = response.json().get("version") if response.status_code == 200 else None
                self.answers.append((response.status_code, version))
                time.sleep(0.05)

    def close(self) -> list[tuple[int, int | None]]:
        self.stop.set()
        self.thread.join(15)
        return self.answers


@pytest.mark.parametrize("kind", list(CASES))
def test_a_drift_brings_a_challenger_that_is_promoted_served_and_pays(
    kind: str,
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    start_api: Callable[[Settings], ApiProcess],
    wait_for: Callable[..., object],
    tmp_path: Path,
) -> None:
    spec_json, before, after, seed = CASES[kind]
    name = spec_json["name"]
    settings = make_settings(models=[spec_json], features="raw", sensor_catalog="none", batch_size=50)
    start_worker(settings)
    api = start_api(settings)
    events = stream(kind, before, after, seed)
    # One file, replayed to the pipeline as a user would and backtested offline below.
    source = tmp_path / f"{kind}.jsonl"
    source.write_text(
        "".join(
            json.dumps({"device": e["device_id"], "ts": e["ts"], **e["readings"], "target": e["target"]})
            + "\n"
            for e in events
        )
    )
    mapping = ["--device-column", "device", "--time-column", "ts", "--target-column", "target"]
    predictions = Predictions(api, {"device_id": "probe", "readings": events[0]["readings"], "model": name})
    # The worker has its partitions (a backlog sent before would be learned as one batch).
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: client.hexists(settings.keys.topics(), settings.events_topic), 60, "the worker to join")
    # At a device fleet's pace rather than all at once, and in batches of 50 (the worker's
    # batch_size), so that snapshots follow one another even when the worker lags (a backlog
    # learned in one batch is one snapshot) and the client sees the switch.
    driftline(settings, "replay", str(source), "--rate", "2000", *mapping)
    wait_for(lambda: seen(settings, name) == len(events), 180, "every event to be learned")
    time.sleep(1.0)  # the API swaps on the announcement; let the client see the last version
    answers = predictions.close()

    audit = model_events(settings, name)
    actions = [e["action"] for e in audit]
    assert "promote" in actions, audit
    spawn = next(e for e in audit if e["action"] == "spawn" and int(e["offset"]) >= before)
    promote = next(e for e in audit if e["action"] == "promote")
    assert spawn["reason"] == "drift" and spawn["alert"].startswith(f"{name}:error:")
    assert before <= int(promote["offset"]) <= before + PROMOTED_WITHIN, promote
    challenger = promote["standings"]["challengers"][0]["metric"]
    assert challenger > promote["standings"]["champion"], promote["standings"]

    # the pipeline decides as the same learner does in one process, and learns the same
    spec = ModelSpec.model_validate(spec_json)
    partition = int(promote["source"].split("/")[1])
    same = in_process(spec, events, partition)
    assert decisions(audit) == [(e.action, e.source, e.offset, e.why) for e in same.model_events]
    meta = latest_meta(settings, name)
    assert meta is not None and meta["metric"] == same.summary()["metric"]

    # retraining pays: the served accuracy after the drift against the same model never retrained
    never = in_process(
        spec.model_copy(update={"retrain": spec.retrain.model_copy(update={"policy": "never"})}),
        events,
        partition,
    )
    served = meta["metric"]["rolling"]
    baseline = never.summary()["metric"]["rolling"]
    assert served >= baseline + 0.05, (served, baseline)

    # the API switched to the promoted version without a restart, and no request failed
    answered = [a for a in itertools.dropwhile(lambda a: a[0] != 200, answers)]
    assert answered and all(status == 200 for status, _ in answered), answers[-20:]
    versions = [v for _, v in answered if v is not None]
    assert versions == sorted(versions), "the served version never went back"
    assert min(versions) < int(promote["version"]) <= max(versions), (
        promote["version"],
        versions[0],
        versions[-1],
    )
    assert meta["promotions"] == meta["lineage"]["promotions"] == actions.count("promote")

    # the alert that started the race is resolved by the promotion, with a link to it
    alert = json.loads(client.hget(settings.keys.alert_records(), spawn["alert"]))
    assert alert["status"] == "resolved" and alert["resolved_by"] == promote["race"]
    assert alert["resolved_version"] == int(promote["version"])
    promoted_meta = json.loads(client.hget(settings.keys.model(name, "meta"), promote["version"]))
    assert promoted_meta["lineage"]["reason"] == f"challenger after alert {spawn['alert']}"

    # backtest = live: the same file offline gives the same metrics, drift positions and decisions
    driftline(
        settings, "backtest", str(source), "--spec", json.dumps(spec_json), "--out", str(tmp_path), *mapping
    )
    (report,) = json.loads(next(tmp_path.glob("backtest-*.json")).read_text())["models"]
    assert report["metric"] == meta["metric"] and report["metrics"] == meta["metrics"]
    assert report["events_learned"] == meta["events_learned"] == len(events)
    live_alerts = [a for a in recorded_alerts(settings) if a["model"] == name]
    assert sorted((a["signal"], a["position"], a["offset"], a["status"]) for a in report["alerts"]) == sorted(
        (a["signal"], a["position"], a["offset"], a["status"]) for a in live_alerts
    )
    assert [(e["action"], e["offset"], e["standings"]["events"]) for e in report["model_events"]] == [
        (e["action"], int(e["offset"]), e["standings"]["events"]) for e in audit
    ]
    assert next(tmp_path.glob("backtest-*.png")).read_bytes()[:4] == b"\x89PNG"

    # and the model-events topic carries the spawn and the promotion
    wait_for(
        lambda: ("promote", name) in topic_events(settings), 30, "the promotion on the model-events topic"
    )
    assert [a for a, _ in topic_events(settings)] == actions


def test_a_worker_killed_mid_race_decides_as_one_never_killed(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], WorkerProcess],
    wait_for: Callable[..., object],
) -> None:
    spec_json = {**CASES["agrawal"][0], "retrain": {"min_events": 1500}}
    name = spec_json["name"]
    settings = make_settings(models=[spec_json], features="raw", sensor_catalog="none", batch_size=50)
    events = stream("agrawal", 4000, 4000, seed=3)
    worker = start_worker(settings)
    first, rest = events[:4300], events[4300:]
    with SensorProducer(settings) as producer:
        for event in first:
            producer.send(event)
    wait_for(lambda: seen(settings, name) == len(first), 120, "the events before the kill")
    assert [e["action"] for e in model_events(settings, name)][-1:] == ["spawn"], "a race is on"

    # The rest comes slowly, and the worker dies while it learns them, mid-race.
    def trickle() -> None:
        with SensorProducer(settings) as producer:
            for i, event in enumerate(rest):
                producer.send(event)
                if i % 20 == 0:
                    producer.flush()
                    time.sleep(0.02)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    wait_for(lambda: seen(settings, name) >= len(first) + 300, 60, "the race to go on")
    worker.kill()
    assert "promote" not in [e["action"] for e in model_events(settings, name)], "killed mid-race"
    sender.join(120)
    start_worker(settings)
    wait_for(lambda: seen(settings, name) == len(events), 180, "every event to be learned")

    audit = model_events(settings, name)
    partition = int(audit[0]["source"].split("/")[1])
    same = in_process(ModelSpec.model_validate(spec_json), events, partition)
    assert "promote" in [e["action"] for e in audit]
    assert decisions(audit) == [(e.action, e.source, e.offset, e.why) for e in same.model_events]
    assert [e["standings"] for e in audit] == [e.standings for e in same.model_events]
    meta = latest_meta(settings, name)
    assert meta is not None
    assert meta["events_learned"] == same.events_learned == len(events)
    assert meta["metrics"] == same.summary()["metrics"]


def test_a_search_promotes_the_best_candidate_and_the_audit_lists_every_one(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    spec = ModelSpec(
        name="search",
        params={"l2": 1.0},
        retrain={"policy": "never", "search": {"grid": {"l2": [0.0, 0.3, 1.0, 3.0]}}},
    )
    learner = OnlineLearner.create(spec)
    rng = random.Random(3)
    for i in range(1500):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)}
        y = 3 * x["a"] - 2 * x["b"] + rng.gauss(0, 0.1)
        learner.learn(FeatureRecord("search", "d", f"e{i}", float(i), x, y, 0, i), 0, i)

    async def publish() -> dict[str, Any]:
        client = AsyncRedis.from_url(settings.redis_url)
        try:
            return dict(await settings.registry(client).publish(learner))
        finally:
            await client.aclose()

    meta = asyncio.run(publish())
    audit = model_events(settings, "search")
    assert [e["action"] for e in audit] == ["spawn", "promote"]
    listed = audit[1]["standings"]["challengers"]
    assert [c["params"] for c in listed] == [{"l2": 0.0}, {"l2": 0.3}, {"l2": 1.0}, {"l2": 3.0}]
    assert all(isinstance(c["metric"], float) for c in listed) and audit[1]["winner"] == "candidate 1"
    assert min(listed, key=lambda c: c["metric"])["params"] == {"l2": 0.0}
    assert meta["lineage"]["reason"] == "search candidate (candidate 1)"
    assert meta["lineage"]["params"] == {"l2": 0.0}
