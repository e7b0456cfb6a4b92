"""The routes' own logic, with no services: Redis, the registry and the publisher are doubles.

The app is built but never entered, so its lifespan (which opens Redis and follows snapshots)
does not run; ``app.dependency_overrides`` hands each route the doubles instead. The doubles
implement only what the routes call; the real Redis, registry and broker are exercised by
``tests/integration/test_api_*.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from driftline.api import deps
from driftline.api.main import create_app
from driftline.api.model_store import ModelStore, ServedModel
from driftline.core.errors import RegistryError
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.registry import LATEST
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.cleaning import Rejection
from driftline.streams.features import DeviceState
from driftline.streams.ingest import featurize_reading, label_readings

KEY = "k1"
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"env": "test", "secret_key": "test-secret-key-0123456789", "api_keys": KEY}
    return Settings(_env_file=None, **{**values, **overrides})


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class FakeRedis:
    """Strings and hashes in memory, answered as bytes like the real client (no decode_responses)."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    def put(self, key: str, value: str | bytes) -> None:
        self.strings[key] = _bytes(value)

    def put_hash(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update({_bytes(k): _bytes(v) for k, v in mapping.items()})

    async def ping(self) -> bool:
        if not self.reachable:
            raise ConnectionError("Redis is down")
        return True

    async def get(self, key: str) -> bytes | None:
        return self.strings.get(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.strings.get(k) for k in keys]

    async def hget(self, key: str, field: str | bytes) -> bytes | None:
        return self.hashes.get(key, {}).get(_bytes(field))

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    async def hmget(self, key: str, fields: list[str | bytes]) -> list[bytes | None]:
        return [self.hashes.get(key, {}).get(_bytes(f)) for f in fields]


class FakeRegistry:
    """Model metadata in memory; aliases as the real registry reads them (champion follows latest)."""

    def __init__(self) -> None:
        self.metas: dict[str, dict[int, dict[str, Any]]] = {}
        self.pinned: dict[str, dict[str, int]] = {}
        self.audit_log: list[dict[str, Any]] = []  # newest first
        self.history_asked: list[tuple[str, int]] = []

    def add(self, meta: dict[str, Any]) -> None:
        self.metas.setdefault(meta["model"], {})[meta["version"]] = meta

    async def model_names(self) -> list[str]:
        return sorted(self.metas)

    async def aliases(self, name: str) -> dict[str, int]:
        versions = self.metas.get(name, {})
        latest = {LATEST: max(versions)} if versions else {}
        return {**latest, **self.pinned.get(name, {})}

    async def alias_version(self, name: str, alias: str = LATEST) -> int | None:
        aliases = await self.aliases(name)
        return aliases.get(alias, aliases.get(LATEST) if alias == "champion" else None)

    async def version_meta(self, name: str, version: int) -> dict[str, Any]:
        try:
            return self.metas[name][version]
        except KeyError:
            raise RegistryError(f"model {name!r} has no version {version}") from None

    async def versions(self, name: str) -> list[dict[str, Any]]:
        return [self.metas[name][v] for v in sorted(self.metas.get(name, {}))]

    async def audit(self, name: str | None = None, count: int = 100) -> list[dict[str, Any]]:
        return [e for e in self.audit_log if name is None or e["model"] == name][:count]

    async def history(self, name: str, points: int = 500) -> list[dict[str, Any]]:
        self.history_asked.append((name, points))
        return []


class RecordingPublisher:
    """Stands in for Kafka: records each batch and answers what it is told to."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.answer = answer
        self.batches: list[list[Any]] = []

    async def publish(self, items: list[Any]) -> dict[str, Any]:
        self.batches.append(items)
        return self.answer or {"accepted": len(items), "rejected": 0, "errors": []}


def serve(
    settings: Settings | None = None,
    *,
    redis: FakeRedis | None = None,
    registry: FakeRegistry | None = None,
    store: ModelStore | None = None,
    publisher: RecordingPublisher | None = None,
) -> TestClient:
    """A client of the app with the doubles as its resources (not entered: no lifespan)."""
    settings = settings or make_settings()
    registry = registry or FakeRegistry()
    store = store or ModelStore(registry)  # type: ignore[arg-type]
    redis = redis or FakeRedis()
    publisher = publisher or RecordingPublisher()
    app = create_app(settings)
    app.dependency_overrides[deps.app_settings] = lambda: settings
    app.dependency_overrides[deps.get_redis] = lambda: redis
    app.dependency_overrides[deps.get_registry] = lambda: registry
    app.dependency_overrides[deps.get_model_store] = lambda: store
    app.dependency_overrides[deps.get_publisher] = lambda: publisher
    return TestClient(app)


def features_of(
    settings: Settings, readings: dict[str, float | None], ts: datetime, state: DeviceState
) -> dict[str, float]:
    """What the stream computes for ``readings`` (``state`` is updated, as the stream's is)."""
    featurized = featurize_reading(
        readings,
        ts,
        state,
        labels=label_readings(settings.model_specs(), settings.target),
        catalog=settings.catalog(),
        spec=settings.features,
    )
    assert not isinstance(featurized, Rejection), featurized
    return featurized[1]


def trained_learner(settings: Settings, events: int = 60) -> OnlineLearner:
    """A regression of 1 + 0.1 * temperature, learned on the stream's own features."""
    learner = OnlineLearner.create(ModelSpec(name=settings.default_model))
    state = DeviceState()
    for i in range(events):
        temperature = 15.0 + i % 10
        x = features_of(
            settings,
            {"temperature": temperature, "vibration": 0.1 * (i % 5)},
            T0 + timedelta(seconds=i),
            state,
        )
        record = FeatureRecord(
            learner.name,
            "dev-1",
            f"e{i}",
            float(i),
            x,
            1.0 + 0.1 * temperature,
            0,
            i,
            schema=settings.features.schema_hash(),
        )
        learner.learn(record, input_partition=0, input_offset=i)
    return learner


def snapshot_meta(learner: OnlineLearner, version: int, **changes: Any) -> dict[str, Any]:
    return {
        **learner.summary(),
        "version": version,
        "river_version": "test",
        "created_at": T0.isoformat(),
        "model_bytes": 0,
        **changes,
    }


def serving(learner: OnlineLearner, meta: dict[str, Any]) -> ModelStore:
    """A model store serving ``learner`` with ``meta``, as after a verified load."""
    registry = FakeRegistry()
    registry.add(meta)
    return ModelStore(registry, served={learner.name: ServedModel(learner, meta)})  # type: ignore[arg-type]


def serving_client(
    settings: Settings, learner: OnlineLearner, meta: dict[str, Any], redis: FakeRedis | None = None
) -> TestClient:
    store = serving(learner, meta)
    return serve(settings, redis=redis, store=store, registry=store.registry)  # type: ignore[arg-type]


def stored_device(
    settings: Settings, redis: FakeRedis, device_id: str, temperatures: list[float]
) -> DeviceState:
    """Run readings through the stream's featurizer and checkpoint the state as the stream does."""
    state = DeviceState()
    for i, t in enumerate(temperatures):
        features_of(settings, {"temperature": t, "vibration": 0.2 * i}, T0 + timedelta(minutes=i), state)
    redis.put(settings.keys.device(device_id), json.dumps(state.to_json()))
    return state


# --- /predict ---------------------------------------------------------------------------------


def test_predict_answers_with_the_served_model_on_features_from_the_stored_device_state() -> None:
    settings = make_settings()
    learner = trained_learner(settings)
    redis = FakeRedis()
    state = stored_device(settings, redis, "dev-1", [18.0, 19.0, 23.0])
    ts = T0 + timedelta(hours=1)
    expected = features_of(
        settings, {"temperature": 20.0, "vibration": 0.5}, ts, DeviceState.from_json(state.to_json())
    )
    stateless = features_of(settings, {"temperature": 20.0, "vibration": 0.5}, ts, DeviceState())
    client = serving_client(settings, learner, snapshot_meta(learner, version=3), redis)

    response = client.post(
        "/predict",
        json={
            "device_id": "dev-1",
            "ts": ts.isoformat(),
            "readings": {"temperature": 20.0, "vibration": 0.5},
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["features"] == expected != stateless  # the device's history counts
    assert body["features"]["temperature_mean_10"] == pytest.approx((18 + 19 + 23 + 20) / 4)
    assert body["prediction"] == pytest.approx(learner.predict(expected).value)
    assert (body["model"], body["version"], body["task"]) == (settings.default_model, 3, "regression")
    assert (body["device_id"], body["events_learned"], body["alias"]) == ("dev-1", 60, None)


def test_predict_refuses_a_model_trained_on_other_features_with_409() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(
        settings, learner, snapshot_meta(learner, version=2, feature_schema="0123456789abcdef")
    )

    response = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}})

    assert response.status_code == 409
    assert "0123456789abcdef" in response.json()["detail"]
    assert settings.features.schema_hash() in response.json()["detail"]


def test_predict_refuses_a_reading_out_of_the_catalog_range_and_clips_where_the_catalog_says() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=1))

    refused = client.post("/predict", json={"device_id": "d", "readings": {"vibration": 99.0}})
    clipped = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 500.0}})

    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("out_of_range: vibration=99")
    assert clipped.status_code == 200 and clipped.json()["features"]["temperature"] == 125.0


def test_predict_is_503_while_no_model_is_served() -> None:
    response = serve().post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}})

    assert response.status_code == 503
    assert "no snapshot yet" in response.json()["detail"]


# --- /stats, /models --------------------------------------------------------------------------


def test_stats_adds_up_the_current_topics_partitions_and_reports_model_warnings() -> None:
    settings = make_settings()
    redis = FakeRedis()
    redis.put_hash(settings.keys.topics(), {settings.events_topic: "topic-2"})
    redis.put_hash(
        settings.keys.ingest_stats(settings.events_topic, "topic-2"),
        {
            "0": json.dumps({"received": 5, "accepted": 3, "rejected": 1, "rejected:invalid": 1, "late": 1}),
            "1": json.dumps({"received": 4, "accepted": 2, "deduplicated": 2}),
        },
    )
    # a recreated topic's old counters are not this topic's
    redis.put_hash(
        settings.keys.ingest_stats(settings.events_topic, "topic-1"),
        {"0": json.dumps({"received": 100, "accepted": 100})},
    )
    registry = FakeRegistry()
    warning = "model 'stuck' has seen 500 events and learned from none"
    registry.add({"model": "stuck", "version": 1, "events_seen": 400, "events_learned": 0, "warnings": []})
    registry.add(
        {"model": "stuck", "version": 2, "events_seen": 500, "events_learned": 0, "warnings": [warning]}
    )
    registry.add({"model": "old", "version": 7, "events_seen": 9, "events_learned": 9})  # no warnings key
    registry.metas["unpublished"] = {}

    body = serve(settings, redis=redis, registry=registry).get("/stats").json()

    assert body["totals"]["received"] == 9
    assert (body["totals"]["accepted"], body["totals"]["deduplicated"]) == (5, 2)
    assert body["rejected_by_reason"] == {"invalid": 1}
    assert body["balanced"] is True
    assert set(body["partitions"]) == {"0", "1"}
    assert body["models"] == {
        "old": {"version": 7, "events_seen": 9, "events_learned": 9, "warnings": []},
        "stuck": {"version": 2, "events_seen": 500, "events_learned": 0, "warnings": [warning]},
    }
    assert body["warnings"] == [warning]


def test_show_model_is_404_for_an_unknown_model_and_describes_a_known_one() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    store = serving(learner, snapshot_meta(learner, version=1))
    registry: FakeRegistry = store.registry  # type: ignore[assignment]
    registry.add(snapshot_meta(learner, version=2))
    registry.audit_log = [
        {"model": learner.name, "action": "publish", "version": "2"},
        {"model": "other", "action": "publish", "version": "1"},
    ]
    client = serve(settings, store=store, registry=registry)

    missing = client.get("/models/nope")
    known = client.get(f"/models/{learner.name}")

    assert missing.status_code == 404
    assert missing.json()["detail"] == "no model named 'nope'"
    assert known.status_code == 200
    model = known.json()
    assert (model["served_version"], model["latest_version"]) == (1, 2)
    assert model["aliases"] == {"latest": 2, "champion": 2} and model["champion_pinned"] is False
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert [e["model"] for e in model["audit"]] == [learner.name]


def test_model_history_takes_points_within_bounds_and_is_404_for_an_unknown_model() -> None:
    registry = FakeRegistry()
    registry.add({"model": "m", "version": 1})
    client = serve(registry=registry)

    assert client.get("/models/m/history").json() == {"model": "m", "points": []}
    assert client.get("/models/m/history", params={"points": 7}).status_code == 200
    too_few = client.get("/models/m/history", params={"points": 0})
    too_many = client.get("/models/m/history", params={"points": 5001})
    missing = client.get("/models/nope/history")

    assert registry.history_asked == [("m", 500), ("m", 7)]
    assert too_few.status_code == too_many.status_code == 422
    assert missing.status_code == 404


# --- /devices ---------------------------------------------------------------------------------


def test_device_features_are_the_stored_ones_and_404_for_a_device_never_seen() -> None:
    settings = make_settings()
    redis = FakeRedis()
    state = stored_device(settings, redis, "dev-7", [18.0, 19.0, 23.0])
    client = serve(settings, redis=redis)

    known = client.get("/devices/dev-7/features")
    unknown = client.get("/devices/never-seen/features")

    assert known.status_code == 200
    assert known.json() == {
        "device_id": "dev-7",
        "features": state.features,
        "events": 3,
        "last_event_time": state.last_ts,
        "feature_schema": settings.features.schema_hash(),
    }
    assert known.json()["features"]["temperature"] == 23.0
    assert unknown.status_code == 404
    assert "never-seen" in unknown.json()["detail"]


def test_device_stats_are_the_stored_counters_and_watermark() -> None:
    settings = make_settings()
    redis = FakeRedis()
    state = DeviceState(events=4, watermark=1234.5, counts=Counter(accepted=3, late=1))
    redis.put(settings.keys.device("dev-8"), json.dumps(state.to_json()))
    client = serve(settings, redis=redis)

    assert client.get("/devices/dev-8/stats").json() == {
        "device_id": "dev-8",
        "counts": {"accepted": 3, "late": 1},
        "watermark": 1234.5,
        "events": 4,
    }
    assert client.get("/devices/dev-9/stats").status_code == 404


# --- /events ----------------------------------------------------------------------------------

EVENT = {"event_id": "e1", "device_id": "d1", "ts": "2026-01-01T00:00:00Z", "readings": {"temperature": 21.5}}


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_events_without_a_valid_api_key_are_401_and_never_published(headers: dict[str, str]) -> None:
    publisher = RecordingPublisher()
    response = serve(publisher=publisher).post("/events", json=[EVENT], headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "ApiKey"
    assert publisher.batches == []


def test_a_batch_over_the_limit_is_413_and_never_published() -> None:
    publisher = RecordingPublisher()
    client = serve(make_settings(max_batch_events=3), publisher=publisher)

    over = client.post("/events", json=[EVENT] * 4, headers={"X-API-Key": KEY})
    at_limit = client.post("/events", json=[EVENT] * 3, headers={"X-API-Key": KEY})

    assert over.status_code == 413
    assert "the limit is 3" in over.json()["detail"]
    assert at_limit.status_code == 202
    assert [len(batch) for batch in publisher.batches] == [3]


def test_one_event_is_published_as_a_batch_of_one_and_answered_with_202_counts() -> None:
    publisher = RecordingPublisher()
    client = serve(publisher=publisher)

    # header names are case-insensitive: the route reads X-API-Key however it is spelled
    response = client.post("/events", json=EVENT, headers={"x-api-key": KEY})
    empty = client.post("/events", json=[], headers={"X-API-Key": KEY})

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "rejected": 0, "errors": []}
    assert empty.status_code == 422
    assert publisher.batches == [[EVENT]]


def test_a_batch_with_no_valid_event_is_422_with_its_reasons_as_json() -> None:
    reasons = {
        "accepted": 0,
        "rejected": 1,
        "errors": [{"index": 0, "errors": [{"ctx": {"error": ValueError("ts is odd")}}]}],
    }
    client = serve(publisher=RecordingPublisher(reasons))

    response = client.post("/events", json=[{"nonsense": True}], headers={"X-API-Key": KEY})

    assert response.status_code == 422
    assert response.json()["errors"] == [{"index": 0, "errors": [{"ctx": {"error": "ts is odd"}}]}]


# --- /health ----------------------------------------------------------------------------------


def test_health_is_ok_with_the_served_versions_and_503_when_redis_does_not_answer() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=5)
    store = serving(learner, snapshot_meta(learner, version=4))

    ok = serve(settings, store=store).get("/health")
    down = serve(settings, store=store, redis=FakeRedis(reachable=False)).get("/health")

    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "redis": True, "models": {learner.name: 4}}
    assert down.status_code == 503
    assert down.json()["status"] == "degraded"
