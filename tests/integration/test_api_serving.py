"""The API against the real Redis: it serves only verified snapshots and never a 500."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from driftline.api.main import create_app
from driftline.models.learner import OnlineLearner
from driftline.models.registry import ModelRegistry
from driftline.models.snapshot import seal_snapshot
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.checkpoint import save_checkpoint
from driftline.streams.features import DeviceState, featurize
from driftline.streams.ingest import FeatureRecord

pytestmark = pytest.mark.integration

READING = {"device_id": "dev-1", "readings": {"temperature": 20.0, "vibration": 0.5}}


def trained_learner(name: str, n: int = 50) -> OnlineLearner:
    learner = OnlineLearner.create(ModelSpec(name=name))
    for i in range(n):
        x = {"temperature": 15.0 + i % 10, "vibration": 0.1 * (i % 5)}
        record = FeatureRecord(name, "dev-1", f"e{i}", float(i), x, 1.0 + 0.1 * x["temperature"], 0, i)
        learner.learn(record, input_partition=0, input_offset=i)
    return learner


def run(settings: Settings, action: Any) -> Any:
    """Run ``action(registry, redis)`` on a fresh async Redis client."""

    async def go() -> Any:
        redis = Redis.from_url(settings.redis_url)
        try:
            registry = settings.registry(redis)
            return await action(registry, redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def publish(settings: Settings, learner: OnlineLearner) -> dict[str, Any]:
    return run(settings, lambda registry, redis: registry.publish(learner))


def plant_blob(settings: Settings, name: str, blob: bytes) -> int:
    """Store ``blob`` as the model's next version and announce it, as a publisher would."""

    async def action(registry: ModelRegistry, redis: Redis) -> int:
        version = int(await redis.incr(f"{settings.namespace}:model:{name}:next_version"))
        await redis.set(f"{settings.namespace}:model:{name}:blob:{version}", blob)
        await redis.hset(f"{settings.namespace}:model:{name}:aliases", "latest", version)
        await redis.publish(registry.channel, json.dumps({"model": name, "version": version}))
        return version

    return int(run(settings, action))


def wait_until(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_predict_answers_503_with_a_message_before_any_model(make_settings: Any) -> None:
    with TestClient(create_app(make_settings())) as client:
        response = client.post("/predict", json=READING)
    assert response.status_code == 503
    assert "no snapshot yet" in response.json()["error"]["message"]


def test_predict_serves_the_newest_snapshot_and_swaps_when_one_is_announced(make_settings: Any) -> None:
    settings = make_settings()
    publish(settings, trained_learner("default", 50))
    with TestClient(create_app(settings)) as client:
        first = client.post("/predict", json=READING)
        assert first.status_code == 200, first.text
        assert first.json()["version"] == 1
        assert isinstance(first.json()["prediction"], float)

        publish(settings, trained_learner("default", 80))
        body = wait_until(lambda: (r := client.post("/predict", json=READING).json())["version"] == 2 and r)
        assert body["events_learned"] == 80
        models = client.get("/models").json()
        assert [(m["name"], m["served_version"], m["latest_version"]) for m in models] == [("default", 2, 2)]


@pytest.mark.parametrize("corrupt", ["flip_last_byte", "flip_meta_byte", "unsigned_pickle", "other_key"])
def test_a_tampered_snapshot_is_refused_and_the_last_good_model_keeps_serving(
    make_settings: Any, corrupt: str
) -> None:
    settings = make_settings()
    publish(settings, trained_learner("default", 50))
    good = run(settings, lambda registry, redis: registry.load("default"))[0]
    altered = trained_learner("default", 90)
    blob = seal_snapshot(
        altered, {"version": 2, "model": "default"}, settings.secret_key.get_secret_value().encode()
    )
    if corrupt == "flip_last_byte":
        blob = blob[:-1] + bytes([blob[-1] ^ 0xFF])
    elif corrupt == "flip_meta_byte":
        blob = blob[:50] + bytes([blob[50] ^ 0x01]) + blob[51:]
    elif corrupt == "unsigned_pickle":
        import pickle

        blob = pickle.dumps(altered)
    else:
        blob = seal_snapshot(altered, {"version": 2, "model": "default"}, b"another-secret-key-12345")

    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json=READING).json()["version"] == 1
        plant_blob(settings, "default", blob)
        model = wait_until(lambda: (m := client.get("/models/default").json())["refused_snapshots"] and m)
        assert model["served_version"] == 1
        assert model["latest_version"] == 2
        assert "refused" in model["last_refusal"] or "not a driftline snapshot" in model["last_refusal"]
        response = client.post("/predict", json=READING)
        assert response.status_code == 200
        assert response.json()["version"] == 1
        expected = good.predict(response.json()["features"]).value
        assert response.json()["prediction"] == pytest.approx(expected)


def test_serving_features_equal_the_stream_featurizer_on_the_stored_device_state(
    make_settings: Any,
) -> None:
    settings = make_settings()
    publish(settings, trained_learner("default", 20))
    state = DeviceState()
    for i, t in enumerate([18.0, 19.0, 23.0]):
        featurize(
            state,
            {"temperature": t, "vibration": 0.2 * i},
            datetime(2026, 1, 1, 12, i, tzinfo=UTC),
            settings.features,
        )

    async def store(registry: ModelRegistry, redis: Redis) -> None:
        await save_checkpoint(redis, settings.keys, "t", "id", {}, {"dev-1": state})

    run(settings, store)
    expected = featurize(
        DeviceState.from_json(state.to_json()),
        {"temperature": 20.0, "vibration": 0.5},
        datetime(2026, 1, 2, 6, tzinfo=UTC),
        settings.features,
    )
    with TestClient(create_app(settings)) as client:
        body = client.post("/predict", json={**READING, "ts": "2026-01-02T06:00:00Z"}).json()
        again = client.post("/predict", json={**READING, "ts": "2026-01-02T06:00:00Z"}).json()
    assert body["features"] == expected
    assert body["features"]["temperature_mean_10"] == pytest.approx((18 + 19 + 23 + 20) / 4)
    assert again["features"] == body["features"], "serving must not change the stream's state"


@pytest.mark.parametrize(
    "payload",
    [
        {"readings": {"temperature": 1.0}},
        {"device_id": "d", "readings": {"temperature": "NaN"}},
        {"device_id": "d", "readings": {"temperature": "Infinity"}},
        {"device_id": "d", "readings": {"temperature": "warm"}},
        {"device_id": "d", "readings": "nope"},
        {"device_id": "d", "readings": {}, "ts": "2026-01-01T00:00:00"},
        {"device_id": "", "readings": {}},
        {"device_id": "d", "readings": {}, "surprise": 1},
    ],
)
def test_bad_requests_get_a_422_with_a_reason(make_settings: Any, payload: dict[str, Any]) -> None:
    with TestClient(create_app(make_settings())) as client:
        response = client.post("/predict", json=payload)
    assert response.status_code == 422
    assert response.json()["error"]["message"]


def test_health_and_event_schema(make_settings: Any) -> None:
    settings = make_settings()
    publish(settings, trained_learner("default", 5))
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
        schema = client.get("/schema/event").json()
        missing = client.get("/models/nope")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "redis": True, "models": {"default": 1}}
    assert {"event_id", "device_id", "ts", "readings"} <= set(schema["required"])
    assert missing.status_code == 404


def test_health_is_503_when_redis_is_unreachable(make_settings: Any) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
        predict = client.post("/predict", json=READING)
    assert health.status_code == 503
    assert health.json()["redis"] is False
    assert predict.status_code == 503


def test_a_model_trained_on_other_features_is_refused_with_409(make_settings: Any) -> None:
    settings = make_settings()
    learner = trained_learner("default", 10)
    learner.feature_schema = "0123456789abcdef"
    publish(settings, learner)
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", json=READING)
    assert response.status_code == 409
    assert "0123456789abcdef" in response.json()["error"]["message"]
    assert settings.features.schema_hash() in response.json()["error"]["message"]


def test_a_reading_out_of_range_is_refused_like_the_stream_does(make_settings: Any) -> None:
    settings = make_settings()
    publish(settings, trained_learner("default", 10))
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", json={"device_id": "d", "readings": {"vibration": 99.0}})
        clipped = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 500.0}})
        unknown = client.get("/devices/never-seen/features")
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("out_of_range: vibration=99")
    assert clipped.status_code == 200 and clipped.json()["features"]["temperature"] == 125.0
    assert unknown.status_code == 404


def test_predict_answers_from_the_challenger_or_a_stored_version_when_asked(make_settings: Any) -> None:
    settings = make_settings()
    for n in (30, 60, 90):
        publish(settings, trained_learner("default", n))
    # Any version but the champion is for keyed callers only.
    with TestClient(create_app(settings), headers={"X-API-Key": "test-api-key-0123456789"}) as client:
        no_challenger = client.post("/predict", json={**READING, "alias": "challenger"})
        run(
            settings,
            lambda registry, redis: registry.promote(
                "default", 1, alias="challenger", by="test", reason="compare"
            ),
        )
        champion = client.post("/predict", json=READING).json()
        challenger = client.post("/predict", json={**READING, "alias": "challenger"}).json()
        second = client.post("/predict", json={**READING, "version": 2}).json()
        latest = client.post("/predict", json={**READING, "alias": "latest"}).json()
        missing = client.post("/predict", json={**READING, "version": 99})
        both = client.post("/predict", json={**READING, "alias": "latest", "version": 2})
    assert no_challenger.status_code == 404
    assert "has no challenger" in no_challenger.json()["error"]["message"]
    assert (champion["version"], champion["events_learned"], champion["alias"]) == (3, 90, None)
    assert (challenger["version"], challenger["events_learned"], challenger["alias"]) == (1, 30, "challenger")
    assert (second["version"], second["events_learned"]) == (2, 60)
    assert latest["version"] == 3
    # each answer is that version's own model on the same features
    for body, n in ((challenger, 30), (second, 60), (champion, 90)):
        assert body["prediction"] == trained_learner("default", n).predict(body["features"]).value
    assert missing.status_code == 404 and "no version 99" in missing.json()["error"]["message"]
    assert both.status_code == 422


class SlowToUnpickle:
    """Unpickles as ``time.sleep(seconds)``: makes a snapshot that long to load."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, tuple[float]]:
        return time.sleep, (self.seconds,)


def test_requests_are_answered_while_a_slow_snapshot_loads(make_settings: Any) -> None:
    settings = make_settings()
    publish(settings, trained_learner("default", 20))
    slow = trained_learner("default", 40)
    slow.slow_to_load = SlowToUnpickle(2.0)  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as client:
        published = time.monotonic()
        publish(settings, slow)
        latencies: list[float] = []
        version = 1
        while version == 1 and time.monotonic() - published < 15:
            started = time.monotonic()
            response = client.post("/predict", json=READING)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
            version = response.json()["version"]
            time.sleep(0.05)
        loaded_after = time.monotonic() - published
    assert version == 2, "the slow snapshot was served in the end"
    assert loaded_after >= 2.0  # it did take that long to load...
    assert len(latencies) > 10 and max(latencies) < 0.5  # ...and /predict answered all along
