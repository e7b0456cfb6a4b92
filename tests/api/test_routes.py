"""The routes' own logic, with no services: Redis, the registry and the publisher are doubles.

The app is built but never entered, so its lifespan (which opens Redis and follows snapshots)
does not run; ``app.dependency_overrides`` hands each route the doubles instead. The doubles
implement only what the routes call; the real Redis, registry and broker are exercised by
``tests/integration/test_api_*.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.exceptions
from fastapi.testclient import TestClient

from driftline.api import deps, routes
from driftline.api.main import create_app
from driftline.api.model_store import ModelStore, ServedModel
from driftline.api.routes import api_key_name
from driftline.core.errors import RegistryError, ServiceUnavailable
from driftline.core.records import FeatureRecord
from driftline.models.evaluation import Prediction
from driftline.models.learner import OnlineLearner
from driftline.models.registry import LATEST
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.cleaning import Rejection
from driftline.streams.features import DeviceState
from driftline.streams.ingest import featurize_reading, label_readings

KEY = "k1"
ADMIN, ADMIN_KEY = "ops", "admin-k1"
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
#: What a Redis client says when its server is down: it names the server, which no client of the
#: API may read.
REDIS_DOWN = "Error 111 connecting to 10.0.0.7:6379. Connection refused."
INTERNALS = ("10.0.0.7", "6379", "Error 111", "Traceback")


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "secret_key": "test-secret-key-0123456789",
        "api_keys": KEY,
        "admin_keys": f"{ADMIN}:{ADMIN_KEY}",
    }
    return Settings(_env_file=None, **{**values, **overrides})


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


Entry = tuple[bytes, dict[bytes, bytes]]


def _entry_key(entry_id: str | bytes) -> tuple[int, int]:
    ms, _, seq = _bytes(entry_id).decode().partition("-")
    return int(ms), int(seq or 0)


class FakeRedis:
    """Strings, hashes and streams in memory, answered as bytes like the real client (no
    decode_responses). A stream read that finds nothing takes from ``arriving`` (what comes in
    while a client waits), or else calls ``idle`` (a test stops the app there)."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.streams: dict[str, list[Entry]] = {}
        self.arriving: list[tuple[str, Entry]] = []
        self.idle: Callable[[], None] = lambda: None
        self.failures: list[Exception] = []  # raised by the next stream reads, one each

    def add_entry(self, key: str, entry_id: str, fields: dict[str, str]) -> None:
        self.streams.setdefault(key, []).append(
            (_bytes(entry_id), {_bytes(k): _bytes(v) for k, v in fields.items()})
        )

    def _answer(self) -> None:
        if not self.reachable:
            raise redis.exceptions.ConnectionError(REDIS_DOWN)

    async def xrevrange(
        self, key: str, max: str = "+", min: str = "-", count: int | None = None
    ) -> list[Entry]:
        self._answer()
        return self.streams.get(key, [])[::-1][:count]

    async def xread(self, streams: dict[str, str], count: int | None = None, block: int | None = None) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        replies = []
        for key, after in streams.items():
            newer = [e for e in self.streams.get(key, []) if _entry_key(e[0]) > _entry_key(after)][:count]
            if newer:
                replies.append([_bytes(key), newer])
        if replies:
            return replies
        if self.arriving:
            key, entry = self.arriving.pop(0)
            self.streams.setdefault(key, []).append(entry)
        else:
            self.idle()
        await asyncio.sleep(0.01)
        return []

    def put(self, key: str, value: str | bytes) -> None:
        self.strings[key] = _bytes(value)

    def put_hash(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update({_bytes(k): _bytes(v) for k, v in mapping.items()})

    async def ping(self) -> bool:
        if not self.reachable:
            raise ConnectionError("Redis is down")
        return True

    async def get(self, key: str) -> bytes | None:
        self._answer()
        return self.strings.get(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self._answer()
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
        self.promotion_log: list[dict[str, Any]] = []  # as ModelRegistry.promotions lists them
        self.promotions_asked: list[tuple[str, int]] = []
        self.alert_records: dict[str, dict[str, Any]] = {}
        self.acks: list[tuple[str, str | None, str | None]] = []

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

    async def promotions(self, name: str, points: int = 500) -> list[dict[str, Any]]:
        self.promotions_asked.append((name, points))
        return list(self.promotion_log)

    async def alert(self, alert_id: str) -> dict[str, Any]:
        if alert_id not in self.alert_records:
            raise RegistryError(f"no alert {alert_id!r}")
        return self.alert_records[alert_id]

    async def ack_alert(
        self, alert_id: str, by: str | None = None, key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        alert = await self.alert(alert_id)
        self.acks.append((alert_id, by, key))
        alert.update(acked_by=by, acked_at=T0.isoformat(), acked_key=key)
        return alert, True


class RecordingPublisher:
    """Stands in for Kafka: records each batch and answers what it is told to."""

    def __init__(self, answer: dict[str, Any] | None = None) -> None:
        self.answer = answer
        self.batches: list[list[Any]] = []
        self.label_batches: list[list[Any]] = []

    async def publish(self, items: list[Any]) -> dict[str, Any]:
        self.batches.append(items)
        return self.answer or {"accepted": len(items), "rejected": 0, "errors": []}

    async def publish_labels(self, items: list[Any]) -> dict[str, Any]:
        self.label_batches.append(items)
        return self.answer or {"accepted": len(items), "rejected": 0, "errors": []}


def serve(
    settings: Settings | None = None,
    *,
    redis: FakeRedis | None = None,
    registry: FakeRegistry | None = None,
    store: ModelStore | None = None,
    publisher: RecordingPublisher | None = None,
    stopping: asyncio.Event | None = None,
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
    if stopping is not None:
        app.dependency_overrides[deps.app_stopping] = lambda: stopping
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
    assert "0123456789abcdef" in response.json()["error"]["message"]
    assert settings.features.schema_hash() in response.json()["error"]["message"]


def test_predict_refuses_a_reading_out_of_the_catalog_range_and_clips_where_the_catalog_says() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=1))

    refused = client.post("/predict", json={"device_id": "d", "readings": {"vibration": 99.0}})
    clipped = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 500.0}})

    assert refused.status_code == 422
    assert refused.json()["error"]["message"].startswith("out_of_range: vibration=99")
    assert clipped.status_code == 200 and clipped.json()["features"]["temperature"] == 125.0


def test_predict_is_503_while_no_model_is_served() -> None:
    response = serve().post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}})

    assert response.status_code == 503
    assert "no snapshot yet" in response.json()["error"]["message"]


@pytest.mark.parametrize("huge", [1e200, -1e308, 1e308])
def test_predict_with_a_huge_uncatalogued_reading_answers_with_finite_features(huge: float) -> None:
    settings = make_settings(sensor_catalog="none")
    learner = trained_learner(settings, events=10)
    redis = FakeRedis()
    stored_device(settings, redis, "dev-1", [18.0, 19.0, 23.0])  # a history for the windows
    client = serving_client(settings, learner, snapshot_meta(learner, version=1), redis)

    response = client.post("/predict", json={"device_id": "dev-1", "readings": {"temperature": huge}})

    assert response.status_code == 200, response.text
    features = response.json()["features"]
    assert features["temperature"] == math.copysign(1e12, huge)  # out of range: clipped to the bound
    assert all(math.isfinite(v) for v in features.values())
    assert math.isfinite(response.json()["prediction"])


@pytest.mark.parametrize(
    "said",
    [Prediction(math.nan), Prediction(math.inf), Prediction("a", {"a": math.nan, "b": math.nan})],
    ids=["nan", "inf", "nan-probabilities"],
)
def test_a_non_finite_prediction_is_answered_as_null_with_a_warning_never_a_500(
    said: Prediction, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    monkeypatch.setattr(learner, "predict", lambda features: said)
    client = serving_client(settings, learner, snapshot_meta(learner, version=4))

    response = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["prediction"], body["probabilities"], body["version"]) == (None, None, 4)
    assert body["warning"].startswith(f"model {settings.default_model!r} v4 predicted a non-finite")
    assert "NaN" not in response.text and "Infinity" not in response.text


def test_a_finite_prediction_carries_no_warning() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=1))

    body = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}}).json()

    assert isinstance(body["prediction"], float) and body["warning"] is None


def test_with_redis_down_predict_answers_from_the_reading_alone_marked_degraded() -> None:
    settings = make_settings()
    learner = trained_learner(settings)
    redis = FakeRedis()
    stored_device(settings, redis, "dev-1", [18.0, 19.0, 23.0])
    redis.reachable = False
    ts = T0 + timedelta(hours=1)
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
    assert body["features"] == stateless
    assert body["prediction"] == pytest.approx(learner.predict(stateless).value)
    assert (body["version"], body["degraded"]) == (3, True)
    assert body["degraded_reason"] == routes.NO_DEVICE_STATE
    assert not any(leak in response.text for leak in INTERNALS)


def test_predict_answers_degraded_when_the_device_state_does_not_come_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    redis = FakeRedis()

    async def hanging_mget(keys: list[str]) -> list[bytes | None]:
        await asyncio.sleep(30)  # a Redis that drops packets
        return []

    monkeypatch.setattr(redis, "mget", hanging_mget)
    monkeypatch.setattr(routes, "DEVICE_STATE_TIMEOUT_SECONDS", 0.05)
    client = serving_client(settings, learner, snapshot_meta(learner, version=1), redis)

    body = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}}).json()

    assert (body["degraded"], body["degraded_reason"]) == (True, routes.NO_DEVICE_STATE)


def test_a_normal_prediction_is_not_degraded() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=1))

    body = client.post("/predict", json={"device_id": "d", "readings": {"temperature": 20.0}}).json()

    assert (body["degraded"], body["degraded_reason"]) == (False, None)


@pytest.mark.parametrize(
    "asks", [{"version": 3}, {"version": 1}, {"alias": "challenger"}, {"alias": "latest"}]
)
def test_only_keyed_callers_may_ask_for_another_version_than_the_champion(asks: dict[str, Any]) -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    store = serving(learner, snapshot_meta(learner, version=3))
    loads: list[tuple[str, int]] = []

    async def loader(name: str, version: int) -> Any:
        loads.append((name, version))
        return learner, snapshot_meta(learner, version=version)

    store.loader = loader
    store.registry.add(snapshot_meta(learner, version=1))  # type: ignore[attr-defined]
    store.registry.pinned[learner.name] = {"challenger": 1}  # type: ignore[attr-defined]
    client = serve(settings, store=store, registry=store.registry)  # type: ignore[arg-type]
    reading = {"device_id": "d", "readings": {"temperature": 20.0}, **asks}

    anonymous = client.post("/predict", json=reading)
    wrong_key = client.post("/predict", json=reading, headers={"X-API-Key": "wrong"})
    keyed = client.post("/predict", json=reading, headers={"X-API-Key": KEY})

    assert anonymous.status_code == 403
    assert "send X-API-Key" in anonymous.json()["error"]["message"]
    assert wrong_key.status_code == 401
    assert keyed.status_code == 200, keyed.text
    # nothing was loaded for the refused callers: the one load is the keyed caller's
    assert loads == ([] if keyed.json()["version"] == 3 else [(settings.default_model, 1)])


def test_anyone_may_ask_the_champion_by_name_or_by_default() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=3))
    reading = {"device_id": "d", "readings": {"temperature": 20.0}}

    default = client.post("/predict", json=reading)
    by_alias = client.post("/predict", json={**reading, "alias": "champion"})

    assert (default.status_code, by_alias.status_code) == (200, 200)
    assert default.json()["version"] == by_alias.json()["version"] == 3


def test_a_batch_is_answered_item_by_item_in_order_each_refused_on_its_own() -> None:
    settings = make_settings(predict_max_batch=10)
    learner = trained_learner(settings, events=10)
    redis = FakeRedis()
    stored_device(settings, redis, "dev-1", [18.0, 19.0, 23.0])
    client = serving_client(settings, learner, snapshot_meta(learner, version=3), redis=redis)
    reading = {
        "device_id": "dev-1",
        "readings": {"temperature": 20.0},
        "ts": (T0 + timedelta(hours=1)).isoformat(),
    }
    single = client.post("/predict", json=reading).json()

    response = client.post(
        "/predict",
        json=[
            reading,
            {"device_id": "dev-1"},  # neither readings nor features
            {"device_id": "d", "readings": {"vibration": 99.0}},  # out of the catalog's range
            {"version": 3, "features": {"temperature": 20.0}},  # another version, no key
            reading,  # the same device again: from the stored state again, not the first item's
        ],
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["answered"], body["refused"]) == (2, 3)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == [200, 422, 422, 403, 200]
    for answered in (results[0], results[4]):
        assert answered["prediction"] == single["prediction"] and answered["version"] == 3
        assert answered["features"] == single["features"]
    assert results[1]["error"]["code"] == "invalid" and "readings" in results[1]["error"]["message"]
    assert results[2]["error"]["message"].startswith("out_of_range: vibration=99")
    assert results[3]["error"]["code"] == "forbidden"


def test_a_batch_over_the_limit_is_413_and_an_empty_one_422() -> None:
    settings = make_settings(predict_max_batch=2)
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=3))
    item = {"features": {"temperature": 20.0}}

    over = client.post("/predict", json=[item] * 3)
    empty = client.post("/predict", json=[])

    assert over.status_code == 413 and "the limit is 2" in over.json()["error"]["message"]
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "invalid"


def test_an_explicit_feature_vector_is_predicted_as_given_with_the_snapshots_time_and_age() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=30)
    features = features_of(settings, {"temperature": 22.0, "vibration": 0.1}, T0, DeviceState())
    # the model's schema is not this API's: it does not matter for a vector given as it is
    meta = snapshot_meta(learner, version=4, feature_schema="0123456789abcdef")
    client = serving_client(settings, learner, meta, redis=FakeRedis(reachable=False))

    response = client.post("/predict", json={"features": features})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"] == pytest.approx(learner.predict(features).value)
    assert body["features"] == features and body["device_id"] is None
    assert body["version"] == 4 and body["degraded"] is False  # no device state was needed
    assert body["created_at"] == T0.isoformat()
    age = (datetime.now(UTC) - T0).total_seconds()
    assert age - 5 < body["age_seconds"] <= age + 1


def test_a_classifier_answers_each_class_probability() -> None:
    settings = make_settings()
    learner = OnlineLearner.create(
        ModelSpec(name=settings.default_model, task="classification", estimator="logistic_regression")
    )
    for i in range(20):
        record = FeatureRecord(learner.name, "d", f"e{i}", float(i), {"x": float(i)}, i >= 10, 0, i)
        learner.learn(record, input_partition=0, input_offset=i)
    client = serving_client(settings, learner, snapshot_meta(learner, version=1))

    response = client.post("/predict", json={"features": {"x": 15.0}})

    assert response.status_code == 200, response.text
    probabilities = response.json()["probabilities"]
    assert set(probabilities) == {"True", "False"} and sum(probabilities.values()) == pytest.approx(1.0)
    assert response.json()["prediction"] == (probabilities["True"] > probabilities["False"])


@pytest.mark.parametrize(
    "body",
    [
        {"device_id": "d", "readings": {"temperature": 1.0}, "features": {"x": 1.0}},
        {"readings": {"temperature": 1.0}},
        {"device_id": "d", "readings": {"temperature": 1.0}, "alias": "latest", "version": 2},
        "not an object",
    ],
)
def test_an_invalid_single_request_is_422_in_the_one_error_shape(body: Any) -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    client = serving_client(settings, learner, snapshot_meta(learner, version=3))

    response = client.post("/predict", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"].startswith("invalid request")
    assert error["details"] and all({"loc", "msg", "type"} <= set(d) for d in error["details"])


def test_every_error_has_the_one_shape_framework_ones_included() -> None:
    client = serve()

    unknown_route = client.get("/no/such/thing")
    wrong_method = client.delete("/predict")
    bad_query = client.get("/models/m/history", params={"points": 0})

    for response, code in ((unknown_route, 404), (wrong_method, 405), (bad_query, 422)):
        assert response.status_code == code
        assert set(response.json()) == {"error"}
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert bad_query.json()["error"]["details"][0]["loc"] == ["query", "points"]


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
        "old": {
            "version": 7,
            "events_seen": 9,
            "events_learned": 9,
            "warnings": [],
            "race": None,
            "promotions": 0,
        },
        "stuck": {
            "version": 2,
            "events_seen": 500,
            "events_learned": 0,
            "warnings": [warning],
            "race": None,
            "promotions": 0,
        },
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
    assert missing.json()["error"]["message"] == "no model named 'nope'"
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

    assert client.get("/models/m/history").json() == {"model": "m", "points": [], "promotions": []}
    assert client.get("/models/m/history", params={"points": 7}).status_code == 200
    too_few = client.get("/models/m/history", params={"points": 0})
    too_many = client.get("/models/m/history", params={"points": 5001})
    missing = client.get("/models/nope/history")

    assert registry.history_asked == registry.promotions_asked == [("m", 500), ("m", 7)]
    assert too_few.status_code == too_many.status_code == 422
    assert missing.status_code == 404


def test_model_history_lists_the_promotions_over_its_points_for_the_chart() -> None:
    registry = FakeRegistry()
    registry.add({"model": "m", "version": 4})
    promotion = {
        "version": 4,
        "at": T0.isoformat(),
        "events_learned": 70,
        "kind": "race",
        "by": "driftline",
        "reason": "periodic",
        "why": "challenger beat the champion by at least 2% over 500 events",
        "race": "m:race:events/0:49:0",
        "alert": None,
        "winner": "challenger",
        "previous": 3,
        "standings": {
            "events": 500,
            "champion": 0.5,
            "challengers": [{"label": "challenger", "metric": 0.4}],
        },
    }
    registry.promotion_log = [promotion]

    body = serve(registry=registry).get("/models/m/history", params={"points": 50}).json()

    assert body["promotions"] == [promotion]
    assert registry.promotions_asked == [("m", 50)]  # the span the points cover


RACE = {
    "race": "default:race:events/0:99:0",
    "reason": "drift",
    "alert": "default:error:events/0:99:0",
    "events": 300,
    "warm_started": 80,
    "champion": 0.5,
    "challengers": [
        {"label": "candidate 1", "params": {"l2": 0.0}, "metric": 0.45, "events": 300},
        {"label": "candidate 2", "params": {"l2": 0.1}, "metric": 0.55, "events": 300},
    ],
}


def test_models_and_stats_show_the_race_of_the_latest_snapshot_even_when_the_champion_is_pinned() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    store = serving(learner, snapshot_meta(learner, version=1))  # the pinned champion: no race
    registry: FakeRegistry = store.registry  # type: ignore[assignment]
    registry.pinned[learner.name] = {"champion": 1}
    registry.add(snapshot_meta(learner, version=2, race=RACE, promotions=1))
    client = serve(settings, store=store, registry=registry)

    model = client.get(f"/models/{learner.name}").json()
    listed = client.get("/models").json()[0]
    stats = client.get("/stats").json()["models"][learner.name]

    race = model["race"]
    assert (model["served_version"], model["champion_pinned"], model["promotions"]) == (1, True, 1)
    assert race["version"] == 2 and race["race"] == RACE["race"] and race["alert"] == RACE["alert"]
    assert (race["metric"], race["bigger_is_better"]) == ("MAE", False)
    assert (race["margin"], race["min_events"], race["max_events"], race["window"]) == (0.02, 500, 5000, 500)
    assert [(c["label"], c["vs_champion"]) for c in race["challengers"]] == [
        ("candidate 1", pytest.approx(0.1)),
        ("candidate 2", pytest.approx(-0.1)),
    ]
    assert race["leader"] == "candidate 1" and race["champion_params"] == {}
    assert listed["race"] == race and stats["race"] == race and stats["promotions"] == 1


def test_without_a_race_models_say_none_and_the_served_snapshot_is_not_read_twice() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=10)
    meta = snapshot_meta(learner, version=3)
    store = serving(learner, meta)
    registry: FakeRegistry = store.registry  # type: ignore[assignment]
    registry.metas[learner.name][3] = {**meta, "race": RACE}  # a listing the route must not need
    model = serve(settings, store=store, registry=registry).get(f"/models/{learner.name}").json()

    assert (model["race"], model["promotions"]) == (None, 0)  # from the served (= latest) snapshot


def test_the_dashboard_draws_races_and_promotions_from_the_api_and_loads_nothing_from_elsewhere() -> None:
    page = serve().get("/dashboard")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert 'call("models")' in text and "/history`" in text  # what the page reads
    assert "model.race" in text and "racePanel" in text  # the race, from /models
    assert "history.promotions" in text and "promo-mark" in text  # the promotions, on the chart
    assert "<script src" not in text and "@import" not in text  # no CDN: nothing loaded from elsewhere
    assert all(link.startswith('<link rel="icon" href="data:') for link in re.findall(r"<link[^>]*>", text))


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
    assert "never-seen" in unknown.json()["error"]["message"]


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
    assert "the limit is 3" in over.json()["error"]["message"]
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
    assert response.json()["error"]["details"]["errors"] == [
        {"index": 0, "errors": [{"ctx": {"error": "ts is odd"}}]}
    ]


@pytest.mark.parametrize("key", ["clé".encode(), "clé".encode("latin-1"), b"\xff\xfe", "k1é".encode()])
def test_an_api_key_with_any_bytes_is_compared_and_refused_with_401_never_a_500(key: bytes) -> None:
    publisher = RecordingPublisher()
    client = serve(publisher=publisher)

    response = client.post("/events", json=[EVENT], headers={"X-API-Key": key})  # type: ignore[dict-item]

    assert response.status_code == 401
    assert publisher.batches == []


def test_a_non_ascii_key_that_is_configured_is_accepted() -> None:
    client = serve(make_settings(api_keys="clé-0123"))

    response = client.post("/events", json=[EVENT], headers={"X-API-Key": "clé-0123".encode()})  # type: ignore[dict-item]

    assert response.status_code == 202


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100_000, b"x" * 5000])
def test_the_key_is_checked_before_the_body_is_read(body: bytes) -> None:
    publisher = RecordingPublisher()
    client = serve(make_settings(events_max_bytes=1024), publisher=publisher)

    response = client.post("/events", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 401
    assert publisher.batches == []


def test_a_body_over_the_byte_limit_is_413_by_its_length_or_while_it_streams() -> None:
    publisher = RecordingPublisher()
    client = serve(make_settings(events_max_bytes=1024), publisher=publisher)
    headers = {"X-API-Key": KEY, "content-type": "application/json"}
    big = json.dumps([EVENT] * 20).encode()  # about 2 KB

    declared = client.post("/events", content=big, headers=headers)
    # a generator has no length: sent chunked, counted as it comes
    streamed = client.post("/events", content=iter([big[:1000], big[1000:]]), headers=headers)
    within = client.post("/events", content=json.dumps([EVENT] * 5).encode(), headers=headers)

    assert declared.status_code == streamed.status_code == 413
    assert "over 1024 bytes" in declared.json()["error"]["message"]
    assert "chunked" in streamed.request.headers.get("transfer-encoding", "")
    assert within.status_code == 202
    assert [len(batch) for batch in publisher.batches] == [5]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "the body is not JSON: Expecting property name"),
        (b"[" * 100_000, "the body is not JSON: nested too deeply"),
        (b"[\xc3\x28]", "the body is not JSON: 'utf-8' codec can't decode"),
        (b"", "the body is not JSON: Expecting value"),
    ],
)
def test_a_body_that_is_not_json_is_422_with_the_reason(body: bytes, reason: str) -> None:
    client = serve()

    response = client.post("/events", content=body, headers={"X-API-Key": KEY})

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(reason)


class DownPublisher:
    """A publisher whose broker is gone (or did not acknowledge in time)."""

    async def publish(self, items: list[Any]) -> dict[str, Any]:
        raise ServiceUnavailable(
            "Kafka", "10.0.0.7:9092", "KafkaTimeoutError('Timeout after waiting for 10 secs.')"
        )


def test_events_the_broker_did_not_acknowledge_are_503_without_its_address() -> None:
    client = serve(publisher=DownPublisher())  # type: ignore[arg-type]

    response = client.post("/events", json=[EVENT], headers={"X-API-Key": KEY})

    assert response.status_code == 503
    assert response.json()["error"]["message"] == "Kafka is unreachable; retry shortly"


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


def test_ready_is_200_ready_200_degraded_without_redis_and_503_until_the_model_is_loaded() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=5)
    store = serving(learner, snapshot_meta(learner, version=4))

    up = serve(settings, store=store).get("/ready")
    redis_down = serve(settings, store=store, redis=FakeRedis(reachable=False)).get("/ready")
    no_model = serve(settings).get("/ready")

    assert up.status_code == 200
    assert up.json() == {
        "status": "ready",
        "redis": True,
        "models": {learner.name: 4},
        "parts": {"redis": "ok", f"model:{learner.name}": "ok"},
        "snapshot_every_seconds": settings.snapshot_every_seconds,
    }
    assert redis_down.status_code == 200
    assert (redis_down.json()["status"], redis_down.json()["redis"]) == ("degraded", False)
    assert "Redis is unreachable" in redis_down.json()["reason"]
    assert no_model.status_code == 503
    assert no_model.json()["status"] == "not_ready"
    assert no_model.json()["error"]["code"] == "unavailable"  # the one error shape, beside the status


def test_ready_is_degraded_naming_each_configured_model_not_loaded() -> None:
    settings = make_settings(models=[{"name": "default"}, {"name": "energy", "target": "power"}])
    learner = trained_learner(settings, events=5)
    store = serving(learner, snapshot_meta(learner, version=4))

    response = serve(settings, store=store, redis=FakeRedis(reachable=False)).get("/ready")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["parts"] == {"redis": "unreachable", "model:default": "ok", "model:energy": "not loaded"}
    assert "model 'energy' is not loaded" in body["reason"] and "Redis is unreachable" in body["reason"]


# --- what an anonymous caller may read of a failure ----------------------------------------------


class DownRegistry:
    """A registry on a Redis that is down: every call fails as the real client's do."""

    def __getattr__(self, name: str) -> Any:
        async def down(*args: Any, **kwargs: Any) -> Any:
            raise redis.exceptions.ConnectionError(REDIS_DOWN)

        return down


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("GET", "/models/default"),
        ("GET", "/models/default/history"),
        ("GET", "/alerts"),
        ("GET", "/alerts/m:error:events/2:5087:0"),
        ("GET", "/alerts/stream"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("GET", "/devices/d/features"),
        ("POST", "/predict"),
    ],
)
def test_with_redis_down_no_answer_carries_redis_errors_or_addresses(method: str, path: str) -> None:
    client = serve(registry=DownRegistry(), redis=FakeRedis(reachable=False))  # type: ignore[arg-type]
    body = {"device_id": "d", "readings": {"temperature": 20.0}, "version": 2} if method == "POST" else None
    headers = {"X-API-Key": KEY} if method == "POST" else {}  # a keyed caller, so the version is read

    response = client.request(method, path, json=body, headers=headers)

    assert response.status_code == 503, response.text
    assert response.json()["error"]["message"] == "Redis is unavailable; retry shortly"


# --- /alerts: acknowledging, and the stream -----------------------------------------------------

ALERT_ID = "m:error:events/2:5087:0"


def alert_record(alert_id: str = ALERT_ID, model: str = "m", **changes: Any) -> dict[str, Any]:
    return {
        "id": alert_id,
        "model": model,
        "signal": "error",
        "severity": "drift",
        "status": "firing",
    } | changes


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_ack_without_a_valid_api_key_is_401_and_acks_nothing(headers: dict[str, str]) -> None:
    registry = FakeRegistry()
    registry.alert_records[ALERT_ID] = alert_record()

    response = serve(registry=registry).post(f"/alerts/{ALERT_ID}/ack", json={"by": "eve"}, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "ApiKey"
    assert registry.acks == []


def test_ack_of_an_unknown_alert_is_404() -> None:
    response = serve().post("/alerts/m:error:events/0:1:0/ack", headers={"X-API-Key": KEY})

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no alert 'm:error:events/0:1:0'"


def test_ack_records_the_name_given_or_the_keys_name_and_never_the_key() -> None:
    registry = FakeRegistry()
    registry.alert_records[ALERT_ID] = alert_record()
    registry.alert_records["other"] = alert_record("other")
    client = serve(registry=registry)

    named = client.post(f"/alerts/{ALERT_ID}/ack", json={"by": " alice "}, headers={"X-API-Key": KEY})
    anonymous = client.post("/alerts/other/ack", headers={"X-API-Key": KEY})

    assert named.status_code == anonymous.status_code == 200
    assert (named.json()["acked_by"], named.json()["acked_key"]) == ("alice", api_key_name(KEY))
    assert anonymous.json()["acked_by"] == api_key_name(KEY)
    assert api_key_name(KEY).startswith("key-") and len(api_key_name(KEY)) == 10
    assert registry.acks == [
        (ALERT_ID, "alice", api_key_name(KEY)),
        ("other", api_key_name(KEY), api_key_name(KEY)),
    ]
    assert KEY not in json.dumps([named.json(), anonymous.json()])
    too_long = client.post("/alerts/other/ack", json={"by": "x" * 101}, headers={"X-API-Key": KEY})
    assert too_long.status_code == 422


def test_ack_takes_an_admin_key_and_records_its_name() -> None:
    registry = FakeRegistry()
    registry.alert_records[ALERT_ID] = alert_record()

    response = serve(registry=registry).post(f"/alerts/{ALERT_ID}/ack", headers={"X-API-Key": ADMIN_KEY})

    assert response.status_code == 200, response.text
    assert registry.acks == [(ALERT_ID, ADMIN, ADMIN)]
    assert ADMIN_KEY not in response.text


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": KEY}, {"X-API-Key": "wrong"}, {"X-API-Key": ADMIN}])
@pytest.mark.parametrize("path", ["/models/m/promote", "/models/m/rollback"])
def test_promote_and_rollback_need_an_admin_key_a_producers_key_is_not_one(
    headers: dict[str, str], path: str
) -> None:
    registry = FakeRegistry()  # has no promote or rollback: reaching it would be a 500

    response = serve(registry=registry).post(path, json={}, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "ApiKey"


def test_an_admin_key_may_not_also_be_a_producers_key() -> None:
    with pytest.raises(ValueError, match="share a key"):
        make_settings(admin_keys=f"ops:{KEY}")


def test_model_versions_are_newest_first_paged_and_404_for_an_unknown_model() -> None:
    registry = FakeRegistry()
    for version in (1, 2, 3):
        registry.add({"model": "m", "version": version, "lineage": {"parent": version - 1 or None}})
    client = serve(registry=registry)

    first = client.get("/models/m/versions", params={"limit": 2}).json()
    second = client.get("/models/m/versions", params={"limit": 2, "offset": 2}).json()
    unknown = client.get("/models/nope/versions")

    assert [v["version"] for v in first["versions"]] == [3, 2] and first["next_offset"] == 2
    assert [v["version"] for v in second["versions"]] == [1] and second["next_offset"] is None
    assert first["total"] == 3 and first["versions"][0]["lineage"] == {"parent": 2}
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_the_audit_log_is_paged_newest_first_and_filtered_by_model() -> None:
    registry = FakeRegistry()
    registry.audit_log = [
        {"id": f"{9 - i}-0", "model": "a" if i % 2 else "b", "action": "publish"} for i in range(5)
    ]
    client = serve(registry=registry)

    page = client.get("/audit", params={"limit": 2}).json()
    rest = client.get("/audit", params={"limit": 2, "offset": 4}).json()
    only_a = client.get("/audit", params={"model": "a"}).json()

    assert [e["id"] for e in page["entries"]] == ["9-0", "8-0"] and page["next_offset"] == 2
    assert [e["id"] for e in rest["entries"]] == ["5-0"] and rest["next_offset"] is None
    assert [e["id"] for e in only_a["entries"]] == ["8-0", "6-0"]


def test_device_prediction_is_from_its_latest_stored_features_and_404_for_a_device_never_seen() -> None:
    settings = make_settings()
    learner = trained_learner(settings, events=30)
    redis = FakeRedis()
    state = stored_device(settings, redis, "dev-1", [18.0, 19.0, 23.0])
    client = serving_client(settings, learner, snapshot_meta(learner, version=5), redis=redis)

    known = client.get("/devices/dev-1/prediction")
    unknown = client.get("/devices/never-seen/prediction")
    other_version = client.get("/devices/dev-1/prediction", params={"version": 2})

    assert known.status_code == 200, known.text
    assert known.json()["features"] == state.features and known.json()["version"] == 5
    assert known.json()["prediction"] == pytest.approx(learner.predict(state.features).value)
    assert unknown.status_code == 404 and "never-seen" in unknown.json()["error"]["message"]
    assert other_version.status_code == 403  # only keyed callers pick a version, as for /predict


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_labels_without_a_valid_api_key_are_401_and_never_published(headers: dict[str, str]) -> None:
    publisher = RecordingPublisher()

    response = serve(publisher=publisher).post(
        "/labels", json={"event_id": "e1", "label": 1.0}, headers=headers
    )

    assert response.status_code == 401
    assert publisher.batches == []


def test_labels_one_or_a_batch_are_published_and_answered_with_202_counts() -> None:
    publisher = RecordingPublisher()
    client = serve(publisher=publisher)
    label = {"event_id": "e1", "label": True, "model": "m"}

    one = client.post("/labels", json=label, headers={"X-API-Key": KEY})
    many = client.post("/labels", json=[label, label], headers={"X-API-Key": KEY})

    assert (one.status_code, many.status_code) == (202, 202)
    assert publisher.label_batches == [[label], [label, label]]
    assert many.json() == {"accepted": 2, "rejected": 0, "errors": []}


def test_an_alert_page_cursor_redis_would_refuse_is_answered_never_a_503() -> None:
    # Found by the schema fuzz: Redis refuses these as stream ids (a ResponseError, once a 503).
    client = serve(registry=DownRegistry())  # type: ignore[arg-type]

    before_the_first = client.get("/alerts", params={"before": "(0-0"})
    too_large = client.get("/alerts", params={"before": f"({2**64}-0"})

    assert (before_the_first.status_code, before_the_first.json()) == (200, [])
    assert too_large.status_code == 422
    assert "not a stream position" in too_large.json()["error"]["message"]


def sse_messages(text: str) -> list[dict[str, str]]:
    """Server-sent events as dicts of their fields (comments under ``:``), in order."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if fields:
            messages.append(fields)
    return messages


def stream_redis(settings: Settings, stopping: asyncio.Event) -> FakeRedis:
    """An alert stream holding one entry (1-0) when a client connects; then an alert of model m
    (2-0) and one of model other (3-0) arrive; with nothing more, the app stops."""
    fake = FakeRedis()
    key = settings.keys.alerts()
    fake.add_entry(key, "1-0", {"id": "old", "alert": json.dumps(alert_record("old"))})
    for entry_id, alert in (("2-0", alert_record("new-m")), ("3-0", alert_record("new-o", model="other"))):
        fields = {b"id": alert["id"].encode(), b"alert": json.dumps(alert).encode()}
        fake.arriving.append((key, (entry_id.encode(), fields)))
    fake.idle = stopping.set
    return fake


def test_alert_stream_sends_each_alert_recorded_after_connecting_as_an_event_with_its_stream_id() -> None:
    settings = make_settings()
    stopping = asyncio.Event()
    client = serve(settings, redis=stream_redis(settings, stopping), stopping=stopping)

    response = client.get("/alerts/stream")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    opening, *events = sse_messages(response.text)
    assert opening == {"": "drift alerts after 1-0", "id": "1-0", "retry": "1000"}  # no data: no event
    assert [e["id"] for e in events] == ["2-0", "3-0"]
    assert {e["event"] for e in events} == {"alert"}
    assert [json.loads(e["data"])["id"] for e in events] == ["new-m", "new-o"]
    assert json.loads(events[0]["data"]) == alert_record("new-m")


def test_alert_stream_resumes_after_last_event_id_and_filters_by_model() -> None:
    settings = make_settings()
    stopping = asyncio.Event()
    client = serve(settings, redis=stream_redis(settings, stopping), stopping=stopping)

    response = client.get("/alerts/stream", params={"model": "m"}, headers={"Last-Event-ID": "0-0"})

    opening, *events = sse_messages(response.text)
    assert opening["id"] == "0-0"
    assert [(e["id"], json.loads(e["data"])["id"]) for e in events] == [("1-0", "old"), ("2-0", "new-m")]


def test_alert_stream_waits_out_a_redis_outage_once_started() -> None:
    settings = make_settings()
    stopping = asyncio.Event()
    fake = stream_redis(settings, stopping)
    fake.failures.append(redis.exceptions.ConnectionError(REDIS_DOWN))
    client = serve(settings, redis=fake, stopping=stopping)

    response = client.get("/alerts/stream")
    messages = sse_messages(response.text)

    assert messages[1] == {"": "Redis unavailable, retrying"}
    assert not any(leak in response.text for leak in INTERNALS)
    assert [m["id"] for m in messages[2:]] == ["2-0", "3-0"]


def test_alert_stream_is_503_before_streaming_when_redis_is_down_and_422_for_a_bad_last_event_id() -> None:
    down = serve(redis=FakeRedis(reachable=False)).get("/alerts/stream")
    bad = serve().get("/alerts/stream", headers={"Last-Event-ID": "yesterday"})

    assert down.status_code == 503
    assert down.json()["error"]["message"] == "Redis is unavailable; retry shortly"
    assert bad.status_code == 422
    assert "yesterday" in bad.json()["error"]["message"]
