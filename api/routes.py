"""HTTP routes: thin wrappers over the model store, the registry and the stream's feature code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib.resources import files
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from driftline.api.deps import (
    ModelStoreDep,
    PublisherDep,
    RedisDep,
    RegistryDep,
    SettingsDep,
    StoppingDep,
)
from driftline.api.errors import ErrorDetail, ErrorResponse, error_body, status_and_body
from driftline.api.model_store import ModelStore, OneSnapshotEach
from driftline.api.races import race_view
from driftline.api.stats import ingest_totals, prometheus_text
from driftline.core.errors import FeatureSchemaMismatch, RegistryError
from driftline.core.meta import SnapshotMeta
from driftline.models.evaluation import Prediction
from driftline.models.registry import CHAMPION, LATEST, ModelRegistry
from driftline.settings import Settings
from driftline.streams.checkpoint import load_device_states, read_device_state
from driftline.streams.cleaning import Rejection
from driftline.streams.features import DeviceState, FeatureSpec
from driftline.streams.ingest import featurize_reading, label_readings
from driftline.streams.schema import (
    MAX_READINGS,
    FiniteFloat,
    Identifier,
    LabelEvent,
    SensorEvent,
    SensorName,
)

router = APIRouter()
log = logging.getLogger(__name__)


def refused(description: str) -> dict[str, Any]:
    """An error response for the OpenAPI page: the one error shape, and when it is answered."""
    return {"model": ErrorResponse, "description": description}


def answer(example: Any, code: int = 200, description: str = "") -> dict[int | str, dict[str, Any]]:
    """A success answer's example, for the OpenAPI page."""
    return {code: {"description": description or "OK", "content": {"application/json": {"example": example}}}}


_MODEL_EXAMPLE: dict[str, Any] = {
    "name": "default",
    "served_version": 12,
    "latest_version": 12,
    "aliases": {"latest": 12, "champion": 12},
    "champion_pinned": False,
    "meta": {
        "model": "default",
        "version": 12,
        "events_learned": 5400,
        "created_at": "2026-11-22T10:00:00+00:00",
    },
    "refused_snapshots": 0,
    "last_refusal": None,
    "race": None,
    "promotions": 0,
}
_ALERT_EXAMPLE: dict[str, Any] = {
    "id": "default:error:events/2:5087:0",
    "model": "default",
    "signal": "error",
    "severity": "drift",
    "status": "firing",
    "detector": "ADWIN",
    "raised_at": 1790000000.0,
}


#: Model names, as the registry spells them.
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)]
#: A feature's name in an explicit feature vector (the stream's names: ``temperature_mean_5``).
FeatureName = Annotated[str, Field(min_length=1, max_length=200)]
#: Most features one explicit vector may hold.
MAX_FEATURES = 1024

_PREDICT_EXAMPLE: dict[str, Any] = {
    "device_id": "sensor-001",
    "readings": {"temperature": 21.5, "vibration": 0.02},
}


class PredictRequest(BaseModel):
    """One prediction asked for: a raw reading of a device (featurized with the device's state,
    as the stream does) or an explicit feature vector; by model name and alias (the champion
    unless asked) or an exact version."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                _PREDICT_EXAMPLE,
                {
                    "features": {"temperature": 21.5, "temperature_mean_5": 21.1},
                    "model": "default",
                    "version": 3,
                },
            ]
        },
    )

    device_id: Identifier | None = Field(None, description="the device (required with readings)")
    readings: dict[SensorName, FiniteFloat | None] | None = Field(
        None, max_length=MAX_READINGS, description="a raw reading: featurized from the device's state"
    )
    features: dict[FeatureName, FiniteFloat] | None = Field(
        None, max_length=MAX_FEATURES, description="an explicit feature vector, used as it is"
    )
    ts: AwareDatetime | None = Field(None, description="event time of the reading; default: now")
    model: ModelName | None = Field(None, description="model name; default: the configured model")
    alias: Literal["champion", "challenger", "latest"] | None = Field(
        None, description="which of the model's versions answers; default: the champion"
    )
    version: int | None = Field(None, ge=1, description="a stored version, instead of an alias")

    @model_validator(mode="after")
    def _one_input_and_one_way_to_pick_a_version(self) -> PredictRequest:
        if self.alias is not None and self.version is not None:
            raise ValueError("give alias or version, not both")
        if (self.readings is None) == (self.features is None):
            raise ValueError("give readings (a raw reading) or features (a feature vector), one of them")
        if self.readings is not None and self.device_id is None:
            raise ValueError("readings need the device_id whose state featurizes them")
        return self


#: The request's schema, inline on the OpenAPI page (the route reads its body itself).
_PREDICT_REQUEST_SCHEMA = PredictRequest.model_json_schema()


class PredictionResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "prediction": 23.4,
                    "probabilities": None,
                    "task": "regression",
                    "model": "default",
                    "version": 12,
                    "device_id": "sensor-001",
                    "features": {"temperature": 21.5, "temperature_mean_5": 21.1},
                    "events_learned": 5400,
                    "created_at": "2026-11-22T10:00:00+00:00",
                    "age_seconds": 4.2,
                }
            ]
        }
    )

    #: regression/forecast: the value; classification: the class; anomaly: the score (high = odd).
    prediction: float | bool | str | None
    #: classification: each class's probability.
    probabilities: dict[str, float] | None = None
    task: str
    model: str
    version: int
    #: the device whose reading was featurized (none for an explicit feature vector without one)
    device_id: str | None = None
    features: dict[str, float]
    events_learned: int
    #: when the snapshot answering was made (ISO 8601), and how old it is (seconds)
    created_at: str | None = None
    age_seconds: float | None = None
    #: the alias asked for, if any (the version says which one answered)
    alias: str | None = None
    #: why ``prediction`` is null although a model answered: it said NaN or infinity, which is
    #: no prediction (and not JSON); the status stays 200, the features are still shown
    warning: str | None = None
    #: the device's history could not be read (Redis down): the features, and so the prediction,
    #: come from this reading alone; ``degraded_reason`` says so
    degraded: bool = False
    degraded_reason: str | None = None


class AnsweredItem(PredictionResponse):
    index: int = Field(description="the item's place in the request")
    status: Literal[200] = 200


class RefusedItem(BaseModel):
    index: int = Field(description="the item's place in the request")
    status: int = Field(description="the status the item would have had alone (4xx, 503)")
    error: ErrorDetail


class BatchPredictionResponse(BaseModel):
    """A batch's answers, in the request's order: each answered or refused on its own."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "answered": 1,
                    "refused": 1,
                    "results": [
                        {
                            "index": 0,
                            "status": 200,
                            "prediction": 23.4,
                            "task": "regression",
                            "model": "default",
                            "version": 12,
                            "device_id": "sensor-001",
                            "features": {"temperature": 21.5},
                            "events_learned": 5400,
                            "created_at": "2026-11-22T10:00:00+00:00",
                            "age_seconds": 4.2,
                        },
                        {
                            "index": 1,
                            "status": 422,
                            "error": {
                                "code": "invalid",
                                "message": "invalid request: readings: Field required",
                                "details": None,
                            },
                        },
                    ],
                }
            ]
        }
    )

    answered: int
    refused: int
    results: list[AnsweredItem | RefusedItem]


#: Longest ``/predict`` waits for a device's state before answering without it: the state is one
#: small read, so anything slower is an outage (a Redis that drops packets, not one that refuses).
DEVICE_STATE_TIMEOUT_SECONDS = 1.0
#: What a degraded prediction says, and all it says (Redis's own error is logged, not sent).
NO_DEVICE_STATE = (
    "the device's feature history is unavailable (feature store unreachable): "
    "features computed from this reading alone"
)


@router.post(
    "/predict",
    response_model=PredictionResponse | BatchPredictionResponse,
    responses={
        400: refused("Content-Length is not a number"),
        401: {
            "model": ErrorResponse,
            "description": "an alias or version asked for with an unknown X-API-Key",
        },
        403: refused("an alias or version other than the champion asked for without X-API-Key"),
        404: {
            "model": ErrorResponse,
            "description": "the alias asked for is not set, or the version is not stored",
        },
        409: refused("the model was trained on other features"),
        413: {
            "model": ErrorResponse,
            "description": "over DRIFTLINE_PREDICT_MAX_BATCH items, or too many bytes",
        },
        422: refused("not JSON, an invalid request, or a reading refused"),
        503: refused("no model yet"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": (
                "one request (answered with one prediction), or a JSON array of them (answered "
                "item by item, each answered or refused on its own)"
            ),
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            _PREDICT_REQUEST_SCHEMA,
                            {
                                "type": "array",
                                "items": _PREDICT_REQUEST_SCHEMA,
                                "minItems": 1,
                            },
                        ]
                    },
                    "examples": {
                        "one reading": {"value": _PREDICT_EXAMPLE},
                        "a batch": {
                            "value": [
                                _PREDICT_EXAMPLE,
                                {"features": {"temperature": 21.5, "temperature_mean_5": 21.1}},
                            ]
                        },
                    },
                }
            },
        }
    },
)
async def predict(
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    store: ModelStoreDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> PredictionResponse | BatchPredictionResponse:
    """Predict from a raw reading (featurized with the device's live state, as the stream does)
    or an explicit feature vector; or from each of a batch of them (a JSON array).

    Anyone may ask the champion; another alias or a stored version (each a snapshot to load and
    verify) needs an API key. With Redis down, the champion still answers, from the reading alone,
    marked ``degraded``. Each answer carries the version that answered, its snapshot time and age."""
    body = parse_json_body(await read_body_within(request, settings.events_max_bytes))
    if not isinstance(body, list):
        try:
            one = PredictRequest.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
        states, degraded_reason = await _device_states_for_serving([one], settings, redis)
        return await _answer(one, settings, store.one_snapshot_each(), x_api_key, states, degraded_reason)
    if len(body) > settings.predict_max_batch:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(body)} items in one request; the limit is {settings.predict_max_batch} "
            "(DRIFTLINE_PREDICT_MAX_BATCH)",
        )
    if not body:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no items in the request")
    items: list[PredictRequest | ValidationError] = []
    for raw in body:
        try:
            items.append(PredictRequest.model_validate(raw))
        except ValidationError as exc:
            items.append(exc)
    valid = [item for item in items if isinstance(item, PredictRequest)]
    states, degraded_reason = await _device_states_for_serving(valid, settings, redis)
    results: list[AnsweredItem | RefusedItem] = []
    snapshots = store.one_snapshot_each()  # the items that ask alike are answered by one model
    for index, item in enumerate(items):
        try:
            if isinstance(item, ValidationError):
                raise item
            answer = await _answer(item, settings, snapshots, x_api_key, states, degraded_reason)
            results.append(AnsweredItem(index=index, **answer.model_dump()))
        except Exception as exc:  # each item refused on its own, in the one error shape
            code, error = status_and_body(exc, f"/predict item {index}")
            results.append(RefusedItem(index=index, status=code, error=ErrorDetail(**error["error"])))
    answered = sum(isinstance(r, AnsweredItem) for r in results)
    return BatchPredictionResponse(answered=answered, refused=len(results) - answered, results=results)


async def _answer(
    item: PredictRequest,
    settings: Settings,
    snapshots: OneSnapshotEach,
    api_key: str | None,
    states: ServingStates,
    degraded_reason: str | None,
    stream_features: bool = False,
) -> PredictionResponse:
    """One prediction: the model picked, the features made (or taken as given: a client's, or
    ``stream_features`` the stream's, which the model must have been trained on), the answer."""
    if not asks_for_the_champion(item):
        _require_key_for_versions(settings, api_key)
    name = item.model or settings.default_model
    served = await snapshots.pick(name, item.alias, item.version)
    if item.features is None or stream_features:
        check_feature_schema(served.meta, settings)
    if item.features is not None:
        # An explicit vector is used as it is: no device history, nothing degraded.
        features, degraded_reason = dict(item.features), None
    else:
        features = _featurize(item, settings, states)
    value, probabilities = as_json_prediction(served.learner.predict(features))
    warning = None
    if not _finite(value, probabilities):
        # A model gone numerically wrong is not the client's fault (no 4xx) and must not be a
        # 500 or a bare NaN: no prediction, and a warning saying why.
        warning = (
            f"model {name!r} v{served.version} predicted a non-finite value "
            f"({value!r}, probabilities {probabilities!r}) for these features: no prediction"
        )
        log.warning("/predict for device %s: %s", item.device_id, warning)
        value, probabilities = None, None
    created_at = served.meta.get("created_at")
    return PredictionResponse(
        prediction=value,
        probabilities=probabilities,
        task=served.learner.spec.task,
        model=name,
        version=served.version,
        device_id=item.device_id,
        features=features,
        events_learned=int(served.meta.get("events_learned", 0)),
        created_at=created_at or None,
        age_seconds=snapshot_age(created_at, datetime.now(UTC)),
        alias=item.alias,
        warning=warning,
        degraded=degraded_reason is not None,
        degraded_reason=degraded_reason,
    )


def _featurize(item: PredictRequest, settings: Settings, states: ServingStates) -> dict[str, float]:
    """The stream's features for a raw reading, from its device's state as stored (serving reads
    the state and never writes it back; a batch's items each start from the stored one)."""
    readings, device_id = item.readings or {}, str(item.device_id)  # the validator ensures both
    state = states.take(device_id)
    # Cleaning and featurizing are the stream's own functions, so serving sees what training saw.
    featurized = featurize_reading(
        readings,
        item.ts or datetime.now(UTC),
        state,
        labels=label_readings(settings.model_specs(), settings.target),
        catalog=settings.catalog(),
        spec=settings.features,
    )
    if isinstance(featurized, Rejection):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"{featurized.reason}: {featurized.message}"
        )
    return featurized[1]


def snapshot_age(created_at: str | None, now: datetime) -> float | None:
    """Seconds since a snapshot was made (``None`` when its time is unknown or unreadable).

    >>> snapshot_age("2026-01-01T12:00:00+00:00", datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC))
    30.0
    >>> snapshot_age("", datetime.now(UTC)) is None
    True
    """
    try:
        made = datetime.fromisoformat(str(created_at))
    except ValueError:
        return None
    if made.tzinfo is None:
        made = made.replace(tzinfo=UTC)
    return round((now - made).total_seconds(), 3)


def asks_for_the_champion(item: PredictRequest) -> bool:
    """Whether a request leaves the version to the server (the champion being served).

    >>> asks_for_the_champion(PredictRequest(features={}, alias="champion"))
    True
    >>> asks_for_the_champion(PredictRequest(features={}, version=3))
    False
    """
    return item.version is None and item.alias in (None, CHAMPION)


def _require_key_for_versions(settings: Settings, key: str | None) -> None:
    # Any other version is a snapshot to read, verify and unpickle on demand: not for anyone.
    if not key:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "only the champion answers without an API key: send X-API-Key to ask for an alias or a version",
        )
    _check_api_key(settings, key)


class ServingStates:
    """The stored states a request's raw readings are featurized from, read for this request
    alone: each reading gets its device's state as stored, to update as featurizing does and
    drop. A state is copied for each reading but the last that may use it, which takes the one
    read (a copy is a third of a single /predict's featurizing).

    >>> states = ServingStates({"d": DeviceState(events=3)}, Counter({"d": 2}))
    >>> first, last = states.take("d"), states.take("d")
    >>> first is not last, first == last, states.take("new") == DeviceState()
    (True, True, True)
    """

    def __init__(self, stored: Mapping[str, DeviceState], uses: Counter[str]) -> None:
        self.stored = stored
        #: Readings that may still take each device's state (an item refused before it featurizes
        #: leaves its use unspent: one copy too many, never a state shared).
        self.uses = uses

    def take(self, device_id: str) -> DeviceState:
        stored = self.stored.get(device_id)
        if stored is None:
            return DeviceState()
        self.uses[device_id] -= 1
        return stored if self.uses[device_id] <= 0 else DeviceState.from_json(stored.to_json())


async def _device_states_for_serving(
    items: Iterable[PredictRequest], settings: Settings, redis: Redis
) -> tuple[ServingStates, str | None]:
    """The checkpointed state of each device whose raw reading is to be featurized (one read for
    a whole batch; a device never seen has none); with Redis down or too slow, none and the reason
    the answers are degraded."""
    uses = Counter(i.device_id for i in items if i.readings is not None and i.device_id is not None)
    device_ids = sorted(uses)
    if not device_ids:
        return ServingStates({}, uses), None
    try:
        states = await asyncio.wait_for(
            load_device_states(redis, settings.keys, device_ids, dedupe_ids=False),
            DEVICE_STATE_TIMEOUT_SECONDS,
        )
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("/predict for devices %s without their state (Redis: %r)", device_ids[:5], exc)
        return ServingStates({}, uses), NO_DEVICE_STATE
    return ServingStates(states, uses), None


def _finite(value: float | bool | str | None, probabilities: dict[str, float] | None) -> bool:
    """No NaN or infinity in what a model said (as :func:`as_json_prediction` gives it).

    >>> _finite(2.5, None), _finite("a", {"a": 1.0})
    (True, True)
    >>> _finite(float("nan"), None), _finite("a", {"a": float("inf")})
    (False, False)
    """
    numbers = [value] if isinstance(value, float) else []
    return all(math.isfinite(x) for x in (*numbers, *(probabilities or {}).values()))


def as_json_prediction(said: Prediction) -> tuple[float | bool | str | None, dict[str, float] | None]:
    """What a model said, in JSON's terms: numbers as floats (River may say an int or a numpy
    number), a class stays a class, class probabilities keyed by the class as text.

    >>> as_json_prediction(Prediction(3, {True: 1}))
    (3.0, {'True': 1.0})
    """
    value = said.value
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value)
    probabilities = None if said.proba is None else {str(k): float(p) for k, p in said.proba.items()}
    return value, probabilities


def check_feature_schema(meta: Mapping[str, Any], settings: Settings) -> None:
    """Refuse to predict with a model trained on features this API does not compute."""
    trained_on = meta.get("feature_schema") or ""
    computed = _schema_hash(settings.features)
    if trained_on and trained_on != computed:
        raise FeatureSchemaMismatch(str(meta.get("model")), int(meta["version"]), trained_on, computed)


@lru_cache(maxsize=8)
def _schema_hash(spec: FeatureSpec) -> str:
    # Checked for every prediction; hashing the spec's JSON each time was 2% of /predict.
    return spec.schema_hash()


async def _describe(name: str, store: ModelStore, registry: ModelRegistry) -> dict[str, Any]:
    served = store.served.get(name)
    refusals = store.refusals.get(name)
    aliases = await registry.aliases(name)
    latest = aliases.get(LATEST)
    # A race runs in the learner, so it is in the latest snapshot (which the champion may not be).
    latest_meta: Mapping[str, Any] | None = served.meta if served and served.version == latest else None
    if latest_meta is None and latest is not None:
        try:
            latest_meta = await registry.version_meta(name, latest)
        except RegistryError:  # removed between the two reads
            latest_meta = None
    return {
        "name": name,
        "served_version": served.version if served else None,
        "latest_version": latest,
        "aliases": {**aliases, CHAMPION: aliases.get(CHAMPION, latest)},
        "champion_pinned": CHAMPION in aliases,
        "meta": served.meta if served else None,
        "refused_snapshots": refusals.count if refusals else 0,
        "last_refusal": refusals.last_reason if refusals else None,
        "race": race_view(latest_meta),
        "promotions": (latest_meta or {}).get("promotions", 0),
    }


@router.get("/models", responses=answer([_MODEL_EXAMPLE]))
async def list_models(store: ModelStoreDep, registry: RegistryDep) -> list[dict[str, Any]]:
    """Every model in the registry: what is served, its aliases, and any refused snapshots."""
    return [await _describe(name, store, registry) for name in await registry.model_names()]


@router.get(
    "/models/{name}",
    responses={**answer({**_MODEL_EXAMPLE, "versions": [], "audit": []}), 404: refused("no model named so")},
)
async def show_model(name: str, store: ModelStoreDep, registry: RegistryDep) -> dict[str, Any]:
    """One model with the metadata of every stored version and its audit log (newest first)."""
    if name not in await registry.model_names():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model named {name!r}")
    return {
        **await _describe(name, store, registry),
        "versions": await registry.versions(name),
        "audit": await registry.audit(name, count=50),
    }


@router.get(
    "/models/{name}/history",
    responses={
        **answer(
            {
                "model": "default",
                "points": [
                    {
                        "version": 12,
                        "at": "2026-11-22T10:00:00+00:00",
                        "events_learned": 5400,
                        "metric": "MAE",
                        "value": 0.42,
                        "rolling": 0.38,
                    }
                ],
                "promotions": [],
            }
        ),
        404: refused("no model named so"),
    },
)
async def model_history(
    name: str, registry: RegistryDep, points: Annotated[int, Query(ge=1, le=5000)] = 500
) -> dict[str, Any]:
    """The model's headline metric, cumulative and rolling, at each of its last publishes; and
    its champion promotions over those publishes (a race's or an operator's), each at the events
    learned when it happened."""
    if name not in await registry.model_names():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model named {name!r}")
    return {
        "model": name,
        "points": await registry.history(name, points),
        "promotions": await registry.promotions(name, points),
    }


# --- models over HTTP: versions, the audit log, promote and roll back (admin key) ---------------


def admin_name(settings: Settings, key: str | None) -> str | None:
    """The name of the admin key given (``DRIFTLINE_ADMIN_KEYS`` is ``name:key,...``), compared
    in constant time; ``None`` for no key or another one."""
    names = settings.admin_key_names()
    if not api_key_valid(key, names):
        return None
    raw = _header_bytes(str(key))
    return next(name for k, name in names.items() if secrets.compare_digest(raw, k.encode()))


def admin_holder(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The caller's admin key, checked (401 without a valid one), by its name."""
    name = admin_name(settings, x_api_key)
    if name is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or unknown admin key (header X-API-Key, one of DRIFTLINE_ADMIN_KEYS)",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    return name


AdminNameDep = Annotated[str, Depends(admin_holder)]


async def _require_model(name: str, registry: ModelRegistry) -> None:
    if name not in await registry.model_names():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model named {name!r}")


class Page(BaseModel):
    """One page of a list, newest first: ``next_offset`` asks for the next (``None``: no more)."""

    total: int | None = Field(None, description="how many there are in all, when known")
    offset: int
    limit: int
    next_offset: int | None


class VersionsPage(Page):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "default",
                    "total": 2,
                    "offset": 0,
                    "limit": 50,
                    "next_offset": None,
                    "versions": [
                        {
                            "version": 2,
                            "created_at": "2026-11-22T10:05:00+00:00",
                            "events_learned": 5400,
                            "metric": {"name": "MAE", "value": 0.42, "rolling": 0.38},
                            "lineage": {"parent": 1, "reason": "periodic"},
                        },
                        {"version": 1, "created_at": "2026-11-22T10:00:00+00:00", "events_learned": 2700},
                    ],
                }
            ]
        }
    )

    model: str
    #: each version's metadata as the registry lists it: lineage, metrics, size, times
    versions: list[dict[str, Any]]


class AuditPage(Page):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "offset": 0,
                    "limit": 100,
                    "next_offset": None,
                    "entries": [
                        {
                            "id": "1790000000000-0",
                            "action": "promote",
                            "model": "default",
                            "version": "3",
                            "alias": "champion",
                            "by": "ops",
                            "reason": "v4 regressed",
                            "at": "2026-11-22T10:00:00+00:00",
                        }
                    ],
                }
            ]
        }
    )

    #: the audit log's entries (publish, promote, rollback, ack, ...), newest first
    entries: list[dict[str, Any]]


@router.get(
    "/models/{name}/versions",
    response_model=VersionsPage,
    responses={404: refused("no model named so")},
)
async def model_versions(
    name: str,
    registry: RegistryDep,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> VersionsPage:
    """Every stored version's metadata (lineage, metrics, size, times), newest first, paged."""
    await _require_model(name, registry)
    newest_first = (await registry.versions(name))[::-1]
    page = newest_first[offset : offset + limit]
    more = offset + limit < len(newest_first)
    return VersionsPage(
        model=name,
        total=len(newest_first),
        offset=offset,
        limit=limit,
        next_offset=offset + limit if more else None,
        versions=[dict(m) for m in page],
    )


@router.get("/audit", response_model=AuditPage)
async def audit_log(
    registry: RegistryDep,
    model: Annotated[ModelName | None, Query(description="one model's entries only")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """The registry's audit log (every publish, promotion, rollback, alert ack: who, when, why),
    newest first, paged. It keeps its last 10,000 entries."""
    entries = await registry.audit(model, count=offset + limit + 1)
    page = entries[offset : offset + limit]
    more = len(entries) > offset + limit
    return AuditPage(offset=offset, limit=limit, next_offset=offset + limit if more else None, entries=page)


class PromoteRequest(BaseModel):
    """Which version to promote: an exact ``version``, or the one an ``alias`` points at (the
    latest if neither); ``to`` the champion (what ``/predict`` serves) or the challenger."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"version": 3, "reason": "v4 regressed on site B"},
                {"alias": "challenger", "reason": "the challenger won the week"},
            ]
        },
    )

    version: int | None = Field(None, ge=1, description="an exact stored version")
    alias: Literal["challenger", "latest"] | None = Field(
        None, description="promote the version this alias points at"
    )
    to: Literal["champion", "challenger"] = "champion"
    reason: str = Field("", max_length=500, description="why: recorded in the audit log")

    @model_validator(mode="after")
    def _one_way_to_pick(self) -> PromoteRequest:
        if self.alias is not None and self.version is not None:
            raise ValueError("give alias or version, not both")
        return self


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "v5 misbehaves"}]})

    reason: str = Field("", max_length=500, description="why: recorded in the audit log")


class AliasChange(BaseModel):
    """What an operator changed: the alias, the version it now points at, by whom and why."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "default", "alias": "champion", "version": 3, "by": "ops", "reason": "v4 regressed"}
            ]
        }
    )

    model: str
    alias: str
    #: the version the alias points at now
    version: int | None
    #: after a rollback past the first promotion: the champion follows the latest version again
    follows_latest: bool = False
    by: str
    reason: str


@router.post(
    "/models/{name}/promote",
    response_model=AliasChange,
    responses={
        401: refused("no valid admin key in X-API-Key"),
        404: refused("no such model, version or alias"),
    },
)
async def promote_model(
    name: str,
    by: AdminNameDep,
    registry: RegistryDep,
    body: Annotated[PromoteRequest | None, Body()] = None,
) -> AliasChange:
    """Point the champion (or the challenger) at a version: the API swaps it in when announced.
    Recorded in the audit log with the admin key's name as ``by``."""
    request = body or PromoteRequest()
    await _require_model(name, registry)
    version = request.version
    if request.alias is not None:
        version = await registry.alias_version(name, request.alias)
        if version is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} has no {request.alias}")
    # The registry announces the change: the API's follower swaps the champion in.
    target = await registry.promote(name, version, alias=request.to, by=by, reason=request.reason)
    return AliasChange(model=name, alias=request.to, version=target, by=by, reason=request.reason)


@router.post(
    "/models/{name}/rollback",
    response_model=AliasChange,
    responses={
        401: refused("no valid admin key in X-API-Key"),
        404: refused("no such model, or no earlier version to roll back to"),
    },
)
async def rollback_model(
    name: str,
    by: AdminNameDep,
    registry: RegistryDep,
    body: Annotated[RollbackRequest | None, Body()] = None,
) -> AliasChange:
    """Return the champion to the one before it (``follows_latest``: back to following the latest).
    Recorded in the audit log with the admin key's name as ``by``."""
    reason = body.reason if body is not None else ""
    await _require_model(name, registry)
    target = await registry.rollback(name, by=by, reason=reason)
    follows_latest = target is None
    version = target if target is not None else await registry.alias_version(name, LATEST)
    return AliasChange(
        model=name, alias=CHAMPION, version=version, follows_latest=follows_latest, by=by, reason=reason
    )


@cache
def _dashboard_page() -> str:
    return files("driftline.api").joinpath("static", "dashboard.html").read_text(encoding="utf-8")


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    """A live page: every model's metrics over its snapshots, what is served, labels waiting."""
    return HTMLResponse(_dashboard_page())


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    return RedirectResponse("dashboard")


@router.get(
    "/health",
    responses={
        **answer({"status": "ok", "redis": True, "models": {"default": 12}}),
        503: {"description": "`degraded`: Redis does not answer (with `error` too)"},
    },
)
async def health(response: Response, redis: RedisDep, store: ModelStoreDep) -> dict[str, Any]:
    """``ok`` when Redis answers; lists the model versions being served."""
    redis_ok = await _redis_answers(redis)
    body: dict[str, Any] = {
        "status": "ok" if redis_ok else "degraded",
        "redis": redis_ok,
        "models": {name: served.version for name, served in store.served.items()},
    }
    if not redis_ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        body.update(error_body(status.HTTP_503_SERVICE_UNAVAILABLE, "Redis does not answer"))
    return body


@router.get("/livez", responses=answer({"status": "alive"}))
async def livez() -> dict[str, str]:
    """The process answers HTTP (an orchestrator's liveness check): a constant, no I/O. Unlike
    ``/health`` and ``/ready`` it says nothing about Redis or the models, so an outage there
    never gets a replica restarted that is serving degraded answers."""
    return {"status": "alive"}


@router.get(
    "/ready",
    responses={
        200: {
            "description": "`ready`; or `degraded`: predictions answered, a part down (`parts`)",
            "content": {
                "application/json": {
                    "example": {
                        "status": "degraded",
                        "redis": True,
                        "models": {"default": 12},
                        "parts": {"redis": "ok", "model:default": "ok", "model:energy": "not loaded"},
                        "reason": "model 'energy' is not loaded",
                        "snapshot_every_seconds": 5.0,
                    }
                }
            },
        },
        503: {"description": "`not_ready`: the default model is not loaded yet (with `error` too)"},
    },
)
async def ready(
    response: Response, settings: SettingsDep, redis: RedisDep, store: ModelStoreDep
) -> dict[str, Any]:
    """Whether to route ``/predict`` here (an orchestrator's readiness check): ``ready`` when a
    verified model is loaded for every configured model and Redis answers; ``degraded``, still
    200, when the default model answers but a part is down (Redis: predictions come from the
    reading alone and no new snapshot loads; another configured model: not loaded yet);
    ``not_ready``, 503, until the default model (the one ``/predict`` answers with when asked for
    none) is loaded. ``parts`` says which part is what."""
    redis_ok = await _redis_answers(redis)
    served = {name: model.version for name, model in store.served.items()}
    verdict, reasons, parts = readiness(
        [spec.name for spec in settings.model_specs()], served, redis_ok, settings.default_model
    )
    body: dict[str, Any] = {"status": verdict, "redis": redis_ok, "models": served, "parts": parts}
    # how often a worker that learns publishes: the dashboard calls a longer silence "stopped"
    body["snapshot_every_seconds"] = settings.snapshot_every_seconds
    if reasons:
        body["reason"] = "; ".join(reasons)
    if verdict == "not_ready":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        body.update(error_body(status.HTTP_503_SERVICE_UNAVAILABLE, body["reason"], parts))
    return body


def readiness(
    configured: list[str], served: Mapping[str, int], redis_ok: bool, default_model: str
) -> tuple[str, list[str], dict[str, str]]:
    """``ready``, ``degraded`` or ``not_ready``; why; and each part's state.

    >>> readiness(["a", "b"], {"a": 3}, True, "a")
    ('degraded', ["model 'b' is not loaded"], {'redis': 'ok', 'model:a': 'ok', 'model:b': 'not loaded'})
    >>> readiness(["a"], {}, False, "a")[0]
    'not_ready'
    """
    parts = {"redis": "ok" if redis_ok else "unreachable"}
    reasons = []
    if not redis_ok:
        reasons.append("Redis is unreachable: predictions use no device history, new snapshots wait")
    for name in configured:
        parts[f"model:{name}"] = "ok" if name in served else "not loaded"
        if name not in served:
            reasons.append(f"model {name!r} is not loaded" + (" yet" if name == default_model else ""))
    if default_model not in served:
        return "not_ready", reasons, parts
    return ("degraded" if reasons else "ready"), reasons, parts


async def _redis_answers(redis: Redis) -> bool:
    try:
        return bool(await asyncio.wait_for(redis.ping(), DEVICE_STATE_TIMEOUT_SECONDS))
    except Exception as exc:  # any failure to answer is "down", and a probe never errs
        log.debug("Redis ping failed: %r", exc)
        return False


@router.get(
    "/schema/event",
    responses=answer(
        {"title": "SensorEvent", "type": "object", "properties": {"event_id": {"type": "string"}}}
    ),
)
async def event_schema() -> dict[str, Any]:
    """The JSON Schema every message on the events topic must satisfy."""
    return SensorEvent.model_json_schema()


# --- ways in, and what became of them ---------------------------------------------------------


def api_key_valid(given: str | None, keys: Iterable[str]) -> bool:
    """Whether ``given`` (a header's value) is one of ``keys``, compared in constant time as bytes,
    so any header value is an answer (never an error) and timing tells nothing about the keys.

    >>> api_key_valid("k1", {"k1", "k2"}), api_key_valid("k3", {"k1"}), api_key_valid(None, {"k1"})
    (True, False, False)
    >>> api_key_valid("clé", {"k1"})
    False
    """
    if not given:
        return False
    raw = _header_bytes(given)
    # Every key is compared (no early exit): the time taken does not say which one matched.
    matches = [secrets.compare_digest(raw, key.encode()) for key in keys]
    return any(matches)


def _header_bytes(value: str) -> bytes:
    """A header value's bytes: the server decodes headers as Latin-1, so that gives them back
    exactly; text that did not come from a header (a test's) is taken as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def _check_api_key(settings: Settings, key: str | None) -> None:
    if not api_key_valid(key, settings.api_key_set()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or unknown API key (header X-API-Key)",
            headers={"WWW-Authenticate": "ApiKey"},
        )


def api_key_name(key: str) -> str:
    """How an API key is named where it is recorded (an alert's ack): never the key itself.

    >>> api_key_name("driftline-dev-key")
    'key-e1b0d7'
    """
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:6]


def api_key_holder(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The caller's API key, checked (401 without a valid one), by its :func:`api_key_name`."""
    _check_api_key(settings, x_api_key)
    return api_key_name(str(x_api_key))


ApiKeyNameDep = Annotated[str, Depends(api_key_holder)]


def acker(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """Who acknowledges an alert: an admin key (the dashboard's ack button) by its name; a
    producers' key (what acked alerts before admin keys existed) by its :func:`api_key_name`."""
    name = admin_name(settings, x_api_key)
    if name is not None:
        return name
    return api_key_holder(settings, x_api_key)


AckerDep = Annotated[str, Depends(acker)]


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **answer({"accepted": 1, "rejected": 0, "errors": []}, code=202),
        401: {"description": "no valid X-API-Key (checked before the body is read)"},
        413: {"description": "over DRIFTLINE_EVENTS_MAX_BYTES, or DRIFTLINE_MAX_BATCH_EVENTS events"},
        422: {"description": "not JSON, or no event was valid; reasons per item"},
        503: {"description": "Kafka unreachable, or it did not acknowledge the events in time"},
    },
    # The body is read by the route itself (after the key check, within a size limit): described
    # here for the OpenAPI page.
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "one sensor event, or a JSON array of them (schema: GET /schema/event)",
            "content": {
                "application/json": {
                    "schema": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
                    "example": {
                        "event_id": "sensor-001-00000001",
                        "device_id": "sensor-001",
                        "ts": "2026-11-22T10:00:00Z",
                        "readings": {"temperature": 21.5},
                    },
                }
            },
        }
    },
)
async def post_events(
    request: Request,
    settings: SettingsDep,
    publisher: PublisherDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Any:
    """Publish readings to the events topic, validated first. ``202`` with counts (reasons per bad
    item) only once the broker has acknowledged every accepted event."""
    # The key first: nothing of an unauthenticated request's body is read, let alone parsed.
    _check_api_key(settings, x_api_key)
    body = parse_json_body(await read_body_within(request, settings.events_max_bytes))
    items = batch_items(body, settings.max_batch_events)
    # A validation error's ctx may hold the exception itself: default=str makes it JSON.
    result = json.loads(json.dumps(await publisher.publish(items), default=str))
    if result["accepted"] == 0:
        return JSONResponse(
            error_body(status.HTTP_422_UNPROCESSABLE_CONTENT, "no event in the request is valid", result),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    return result


async def read_body_within(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is known to exceed ``limit`` bytes: from
    its Content-Length before reading anything, else while it streams in (chunked)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the body is over {limit} bytes (DRIFTLINE_EVENTS_MAX_BYTES): send fewer events per request",
    )


def parse_json_body(raw: bytes) -> Any:
    """A body's JSON; 422 with the reason when it is none (not UTF-8, not JSON, nested too deep).

    >>> parse_json_body(b'[{"a": 1}]')
    [{'a': 1}]
    >>> parse_json_body(b"[" * 100_000)
    Traceback (most recent call last):
    ...
    fastapi.exceptions.HTTPException: 422: the body is not JSON: nested too deeply
    """
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "the body is not JSON: nested too deeply"
        ) from None


def batch_items(body: Any, limit: int) -> list[Any]:
    """The events of a request body (one event, or an array of them); 413 over ``limit``, 422 if none.

    >>> batch_items({"event_id": "e1"}, limit=5)
    [{'event_id': 'e1'}]
    """
    items = body if isinstance(body, list) else [body]
    if len(items) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"{len(items)} events in one request; the limit is {limit}"
        )
    if not items:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "no events in the request")
    return items


_LABEL_EXAMPLE = {"event_id": "sensor-001-00000001", "label": 23.9}


class LabelsAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 1, "rejected": 0, "errors": []}]})

    accepted: int
    rejected: int
    #: per refused item: its index and the validation errors
    errors: list[dict[str, Any]]


@router.post(
    "/labels",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=LabelsAccepted,
    responses={
        401: refused("no valid X-API-Key (checked before the body is read)"),
        413: refused("over DRIFTLINE_EVENTS_MAX_BYTES, or DRIFTLINE_MAX_BATCH_EVENTS labels"),
        422: refused("not JSON, or no label was valid; reasons per item in details"),
        503: refused("Kafka unreachable, or it did not acknowledge the labels in time"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "one label (ground truth for an event sent earlier), or a JSON array of them",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            LabelEvent.model_json_schema(),
                            {"type": "array", "items": LabelEvent.model_json_schema()},
                        ]
                    },
                    "examples": {
                        "one label": {"value": _LABEL_EXAMPLE},
                        "a batch": {
                            "value": [_LABEL_EXAMPLE, {"event_id": "e2", "label": 1, "model": "default"}]
                        },
                    },
                }
            },
        }
    },
)
async def post_labels(
    request: Request,
    settings: SettingsDep,
    publisher: PublisherDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Any:
    """Ground truth for earlier events, to the labels topic (the key, limits and answers of
    ``POST /events``): ``202`` with counts only once the broker acknowledged every valid label."""
    _check_api_key(settings, x_api_key)
    body = parse_json_body(await read_body_within(request, settings.events_max_bytes))
    items = batch_items(body, settings.max_batch_events)
    result = json.loads(json.dumps(await publisher.publish_labels(items), default=str))
    if result["accepted"] == 0:
        return JSONResponse(
            error_body(status.HTTP_422_UNPROCESSABLE_CONTENT, "no label in the request is valid", result),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    return result


@router.get(
    "/devices/{device_id}/prediction",
    response_model=PredictionResponse,
    responses={
        401: refused("an alias or version asked for with an unknown X-API-Key"),
        403: refused("an alias or version other than the champion asked for without X-API-Key"),
        404: refused("no events seen from the device, or the alias or version asked for is not stored"),
        409: refused("the model was trained on other features"),
        503: refused("no model yet, or Redis unavailable"),
    },
)
async def device_prediction(
    device_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.:@-]+$", max_length=128)],
    settings: SettingsDep,
    redis: RedisDep,
    store: ModelStoreDep,
    model: Annotated[ModelName | None, Query(description="model name; default: the configured one")] = None,
    alias: Annotated[Literal["champion", "challenger", "latest"] | None, Query()] = None,
    version: Annotated[int | None, Query(ge=1, description="a stored version, instead of an alias")] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> PredictionResponse:
    """What the model says now about the device: from its latest feature vector as the stream
    computed it (its state in Redis); 404 for a device never seen."""
    if alias is not None and version is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give alias or version, not both")
    state = await _device_state(device_id, settings, redis)
    item = PredictRequest(
        device_id=device_id, features=state.features, model=model, alias=alias, version=version
    )
    no_states = ServingStates({}, Counter())
    snapshots = store.one_snapshot_each()
    return await _answer(item, settings, snapshots, x_api_key, no_states, None, stream_features=True)


async def _device_state(device_id: str, settings: Settings, redis: Redis) -> DeviceState:
    raw = await redis.get(settings.keys.device(device_id))
    if raw is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no events seen from device {device_id!r}")
    state = read_device_state(device_id, raw)
    if state is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} has no readable state")
    return state


@router.get("/alerts", responses=answer([_ALERT_EXAMPLE]))
async def list_alerts(
    registry: RegistryDep,
    response: Response,
    model: Annotated[str | None, Query(description="one model's alerts only")] = None,
    signal: Annotated[str | None, Query(description="error, score or feature:<name>")] = None,
    severity: Annotated[str | None, Query(pattern="^(warning|drift)$")] = None,
    alert_status: Annotated[str | None, Query(alias="status", pattern="^(firing|resolved)$")] = None,
    since: Annotated[float | None, Query(description="raised at or after this event time (epoch s)")] = None,
    until: Annotated[float | None, Query(description="raised at or before this event time (epoch s)")] = None,
    before: Annotated[
        str | None,
        Query(description="the next page: the X-Next-Page header of the last", pattern=r"^\(\d+-\d+$"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Drift alerts, newest first, each once in its current state; paged: when there are more,
    the ``X-Next-Page`` header holds the ``before`` of the next page."""
    if before is not None and not stream_cursor_in_range(before):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"before {before!r} is not a stream position (64-bit numbers)",
        )
    if before == "(0-0":  # nothing comes before the first position (and Redis refuses to look)
        return []
    alerts, cursor = await registry.alerts_page(
        model, limit, before or "+", since, until, signal=signal, severity=severity, status=alert_status
    )
    if cursor is not None:
        response.headers["X-Next-Page"] = cursor
    return alerts


def stream_cursor_in_range(cursor: str) -> bool:
    """Whether a page cursor (``(<ms>-<seq>``, as the pattern checks) has numbers Redis takes.

    >>> stream_cursor_in_range("(1790000000000-0"), stream_cursor_in_range("(99999999999999999999-0")
    (True, False)
    """
    ms, _, seq = cursor.lstrip("(").partition("-")
    return all(int(part) < 2**64 for part in (ms, seq or "0"))


#: How long one XREAD of the alert stream blocks: the longest a stream takes to notice the app
#: stopping (a new alert is sent as soon as it is recorded).
ALERT_STREAM_BLOCK_MS = 1000
#: Alert stream entries read per XREAD.
ALERT_STREAM_BATCH = 100
#: The reconnection delay the alert stream asks EventSource clients for.
ALERT_STREAM_RETRY_MS = 1000
_STREAM_ID = re.compile(r"\d+(-\d+)?")


@router.get(
    "/alerts/stream",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "server-sent events: `event: alert`, `id`: stream entry id, `data`: alert JSON"},
        422: {"description": "Last-Event-ID is not a stream entry id"},
        503: {"description": "Redis unavailable"},
    },
)
async def alert_stream(
    settings: SettingsDep,
    redis: RedisDep,
    stopping: StoppingDep,
    model: Annotated[str | None, Query(description="one model's alerts only")] = None,
    last_event_id: Annotated[
        str | None, Header(description="resume after this stream entry id (EventSource sends it)")
    ] = None,
) -> EventSourceResponse:
    """Drift alerts as they are recorded, as server-sent events: ``event: alert``, ``id`` the
    entry's id in the alert stream, ``data`` the alert as recorded (a resolution is recorded, and
    sent, again). From now, or after ``Last-Event-ID`` (what EventSource sends when it reconnects:
    exactly what was missed, as far back as the stream keeps). The first message carries no data,
    only the position (``id``) and the reconnection delay (``retry``), so a reconnect before the
    first alert misses nothing either."""
    if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id.strip()):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"Last-Event-ID {last_event_id!r} is not an alert stream entry id (like 1790000000000-0)",
        )
    key = settings.keys.alerts()
    # Before the response starts: Redis down is a 503 (the app's RedisError handler), not a
    # stream that breaks.
    newest = await redis.xrevrange(key, count=1)
    newest_id = newest[0][0] if newest else None
    if last_event_id is not None:
        position = last_event_id.strip()
    else:
        position = _text(newest_id) if newest_id else "0-0"  # "0-0": any entry is new
    shutdown = anyio.Event()  # set by sse-starlette when the server is told to exit (SIGTERM)
    return EventSourceResponse(
        _follow_alerts(redis, key, position, model, stopping, shutdown),
        shutdown_event=shutdown,
        shutdown_grace_period=ALERT_STREAM_BLOCK_MS / 1000 + 1,
    )


async def _follow_alerts(
    redis: Redis,
    key: str,
    position: str,
    model: str | None,
    stopping: asyncio.Event,
    shutdown: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """Alert stream entries after ``position``, until the app stops (a disconnecting client
    cancels it). A Redis outage mid-stream is waited out, resuming where it was."""
    yield ServerSentEvent(id=position, retry=ALERT_STREAM_RETRY_MS, comment=f"drift alerts after {position}")
    backoff = 0.5
    while not (stopping.is_set() or shutdown.is_set()):
        try:
            # RESP2, as the app's client speaks: [[key, [(entry id, fields), ...]]]
            replies: Any = await redis.xread(
                {key: position}, count=ALERT_STREAM_BATCH, block=ALERT_STREAM_BLOCK_MS
            )
        except RedisError as exc:
            log.warning("alert stream: Redis unavailable (%s); retrying in %.1fs", exc, backoff)
            # Redis's message (its address) stays in the log: the stream's readers are anonymous.
            yield ServerSentEvent(comment="Redis unavailable, retrying")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        backoff = 0.5
        for _, entries in replies or []:
            for entry_id, fields in entries:
                position = _text(entry_id)
                record = fields.get(b"alert") or fields.get("alert")
                if record is None:
                    continue
                text = _text(record)
                if model is not None and json.loads(text).get("model") != model:
                    continue
                yield ServerSentEvent(data=text, event="alert", id=position)


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the app's client answers bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


@router.get("/alerts/{alert_id:path}", responses={**answer(_ALERT_EXAMPLE), 404: refused("no such alert")})
async def show_alert(alert_id: str, registry: RegistryDep) -> dict[str, Any]:
    """One drift alert (404 if there is none with that id). Ids hold a ``/`` (``events/3``)."""
    return await registry.alert(alert_id)


class AckRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"by": "on-call: ana"}]})

    #: Who acknowledges (a person, a team); without it, the API key's name.
    by: str | None = Field(default=None, min_length=1, max_length=100)


@router.post(
    "/alerts/{alert_id:path}/ack",
    responses={
        **answer(
            {**_ALERT_EXAMPLE, "acked_by": "ops", "acked_at": "2026-11-22T10:00:00+00:00", "acked_key": "ops"}
        ),
        401: refused("no valid X-API-Key (an admin key or a producers' key)"),
        404: refused("no such alert"),
    },
)
async def ack_alert(
    alert_id: str,
    key_name: AckerDep,
    registry: RegistryDep,
    body: Annotated[AckRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Acknowledge an alert (header ``X-API-Key``: an admin key, or a producers' key as for
    ``POST /events``): its record gains ``acked_by`` (the body's ``by``, else the key's name: an
    admin key's own, a producers' key ``key-<6 hex of its SHA-256>``),
    ``acked_at`` and ``acked_key`` (the key's name), and the audit log an ``ack`` entry. An alert
    already acknowledged keeps its first ack: the answer is its record either way."""
    by = body.by.strip() if body is not None and body.by and body.by.strip() else key_name
    alert, _ = await registry.ack_alert(alert_id, by=by, key=key_name)
    return alert


@router.get(
    "/stats",
    responses=answer(
        {
            "received": 1000,
            "accepted": 990,
            "deduplicated": 2,
            "rejected": 6,
            "late": 2,
            "models": {
                "default": {
                    "version": 12,
                    "events_seen": 990,
                    "events_learned": 985,
                    "warnings": [],
                    "race": None,
                    "promotions": 0,
                }
            },
            "warnings": [],
        }
    ),
)
async def stats(settings: SettingsDep, redis: RedisDep, registry: RegistryDep) -> dict[str, Any]:
    """What became of every event: received = accepted + deduplicated + rejected + late; and per
    model, events seen and learned, with warnings (a model that sees events but learns none), the
    race on (champion and challengers side by side) and the promotions so far."""
    latest: dict[str, tuple[int, SnapshotMeta]] = {}
    for name in await registry.model_names():
        version = await registry.alias_version(name, LATEST)
        if version is None:  # a model is in the registry once it has a version
            continue
        latest[name] = (version, await registry.version_meta(name, version))
    return {**await ingest_totals(redis, settings), **model_figures(latest)}


def model_figures(latest: Mapping[str, tuple[int, SnapshotMeta]]) -> dict[str, Any]:
    """Per model (its latest version and that version's metadata), events seen and learned, its
    warnings, the race on (see :func:`race_view`) and the promotions so far; and every model's
    warnings together, for a dashboard to show first."""
    models: dict[str, dict[str, Any]] = {
        name: {
            "version": version,
            "events_seen": meta["events_seen"],
            "events_learned": meta["events_learned"],
            # metadata published before warnings existed has none
            "warnings": meta.get("warnings", []),
            # nor a race or promotions, before retraining existed
            "race": race_view(meta),
            "promotions": meta.get("promotions", 0),
        }
        for name, (version, meta) in latest.items()
    }
    return {"models": models, "warnings": [w for model in models.values() for w in model["warnings"]]}


@router.get(
    "/devices/{device_id}/stats",
    responses={
        **answer(
            {
                "device_id": "sensor-001",
                "counts": {"temperature": 120},
                "watermark": 1790000000.0,
                "events": 120,
            }
        ),
        404: refused("no events seen from the device"),
    },
)
async def device_stats(device_id: str, settings: SettingsDep, redis: RedisDep) -> dict[str, Any]:
    """One device's counters and its newest event time."""
    state = await _device_state(device_id, settings, redis)
    return {
        "device_id": device_id,
        "counts": dict(state.counts),
        "watermark": state.watermark,
        "events": state.events,
    }


@router.get(
    "/devices/{device_id}/features",
    responses={
        **answer(
            {
                "device_id": "sensor-001",
                "features": {"temperature": 21.5, "temperature_mean_5": 21.1},
                "events": 120,
                "last_event_time": 1790000000.0,
                "feature_schema": "0123456789abcdef",
            }
        ),
        404: refused("no events seen from the device"),
    },
)
async def device_features(device_id: str, settings: SettingsDep, redis: RedisDep) -> dict[str, Any]:
    """The device's current feature vector (its last event's), as the stream computed it."""
    state = await _device_state(device_id, settings, redis)
    return {
        "device_id": device_id,
        "features": state.features,
        "events": state.events,
        "last_event_time": state.last_ts,
        "feature_schema": settings.features.schema_hash(),
    }


@router.get("/metrics", response_class=Response)
async def metrics(
    settings: SettingsDep, redis: RedisDep, store: ModelStoreDep, registry: RegistryDep
) -> Response:
    """Prometheus exposition of ingest counters and served-model figures."""
    models = [await _describe(name, store, registry) for name in await registry.model_names()]
    body = prometheus_text(await ingest_totals(redis, settings), models, await registry.alert_counts())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
