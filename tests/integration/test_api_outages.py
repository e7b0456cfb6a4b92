"""The API as deployed (uvicorn, its own process) while Redis is gone: the model in memory keeps
answering ``/predict``, marked degraded, and no caller reads Redis's errors or its address."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from driftline.embedded import EmbeddedRedis
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.checkpoint import save_checkpoint
from driftline.streams.features import DeviceState, featurize
from driftline.streams.ingest import FeatureRecord

pytestmark = pytest.mark.integration

TS = datetime(2026, 1, 2, 6, tzinfo=UTC)
READINGS = {"temperature": 20.0, "vibration": 0.5}
READING = {"device_id": "dev-1", "ts": TS.isoformat(), "readings": READINGS}


def trained_learner(name: str, n: int = 30) -> OnlineLearner:
    learner = OnlineLearner.create(ModelSpec(name=name))
    for i in range(n):
        x = {"temperature": 15.0 + i % 10, "vibration": 0.1 * (i % 5)}
        record = FeatureRecord(name, "dev-1", f"e{i}", float(i), x, 1.0 + 0.1 * x["temperature"], 0, i)
        learner.learn(record, input_partition=0, input_offset=i)
    return learner


def device_history(settings: Settings) -> DeviceState:
    state = DeviceState()
    for i, t in enumerate([18.0, 19.0, 23.0]):
        featurize(
            state,
            {"temperature": t, "vibration": 0.2 * i},
            datetime(2026, 1, 1, 12, i, tzinfo=UTC),
            settings.features,
        )
    return state


def publish(settings: Settings, learner: OnlineLearner) -> int:
    """Publish ``learner`` as the worker would; its version."""

    async def go() -> int:
        redis = Redis.from_url(settings.redis_url)
        try:
            return int((await settings.registry(redis).publish(learner))["version"])
        finally:
            await redis.aclose()

    return asyncio.run(go())


def seed(settings: Settings) -> None:
    """A published model and a device with a history, as a worker leaves them."""

    async def go() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            await settings.registry(redis).publish(trained_learner(settings.default_model))
            await save_checkpoint(redis, settings.keys, "t", "id", {}, {"dev-1": device_history(settings)})
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_with_redis_gone_predict_answers_from_the_model_in_memory_degraded_and_nothing_leaks(
    make_settings: Callable[..., Settings],
    start_api: Callable[[Settings], Any],
    wait_for: Callable[..., object],
    tmp_path: Path,
) -> None:
    redis_server = EmbeddedRedis(log_dir=tmp_path / "redis").start()
    try:
        settings = make_settings(redis_url=redis_server.url)
        seed(settings)
        stateless = featurize(DeviceState(), READINGS, TS, settings.features)
        with_history = featurize(device_history(settings), READINGS, TS, settings.features)
        api = start_api(settings)
        with httpx.Client(base_url=api.url, timeout=10) as client:
            before = client.post("/predict", json=READING).json()
            redis_server.stop()

            answers = [client.post("/predict", json=READING) for _ in range(20)]
            ready, health = client.get("/ready"), client.get("/health")
            reads = [
                client.get(path) for path in ("/models", "/models/default", "/alerts", "/stats", "/metrics")
            ]
            keyed_version = client.post(
                "/predict", json={**READING, "version": 1}, headers={"X-API-Key": "test-api-key-0123456789"}
            )

            redis_server = EmbeddedRedis(port=redis_server.port, log_dir=tmp_path / "redis").start()
            # Back (empty: it persists nothing): a device never seen is no outage.
            after = wait_for(
                lambda: not (body := client.post("/predict", json=READING).json())["degraded"] and body,
                10,
                "predictions no longer degraded once Redis is back",
            )
            ready_again = client.get("/ready")
            # and the next snapshot announced after the outage is picked up and served, although
            # the empty Redis numbers it v1 again, as the one in memory
            newer = trained_learner(settings.default_model, n=60)
            expected = newer.predict(stateless).value
            published = publish(settings, newer)
            picked_up = wait_for(
                lambda: (
                    (body := client.post("/predict", json=READING).json())["prediction"] == expected and body
                ),
                10,
                "the snapshot announced after Redis came back served",
            )
    finally:
        redis_server.stop()

    assert (before["degraded"], before["features"]) == (False, with_history)
    assert [a.status_code for a in answers] == [200] * 20, "no 5xx while Redis is gone"
    bodies = [a.json() for a in answers]
    assert all(b["degraded"] and b["degraded_reason"] for b in bodies)
    assert all(b["features"] == stateless and b["version"] == 1 for b in bodies)
    assert (ready.status_code, ready.json()["status"], ready.json()["redis"]) == (200, "degraded", False)
    assert health.status_code == 503
    assert [r.status_code for r in reads] == [503] * len(reads)
    # a keyed caller naming the version served needs no Redis either
    assert (keyed_version.status_code, keyed_version.json()["degraded"]) == (200, True)
    address = f"{redis_server.host}:{redis_server.port}"
    for response in (*answers, ready, health, *reads, keyed_version):
        assert address not in response.text, response.text
        assert "Error" not in response.text and "Traceback" not in response.text, response.text
    assert after["features"] == stateless and after["degraded_reason"] is None  # type: ignore[index]
    assert (ready_again.status_code, ready_again.json()["status"]) == (200, "ready")
    assert published == 1, "an empty Redis numbers versions afresh"
    assert picked_up["version"] == published and expected != before["prediction"]  # type: ignore[index]
