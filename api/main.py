"""The FastAPI app. Run it with ``driftline api`` (uvicorn, factory :func:`create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from driftline.api.errors import ErrorResponse, status_and_body
from driftline.api.model_store import LoaderThread, ModelStore
from driftline.api.publisher import EventPublisher
from driftline.api.routes import router
from driftline.core.errors import DriftlineError
from driftline.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How often the API checks the registry even without an announcement (pub/sub drops messages
# while disconnected); also the longest a shutdown waits for the follower.
FOLLOW_POLL_SECONDS = 5.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; the lifespan opens Redis, loads the newest snapshots and follows new ones."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        # Verifying and unpickling run in a worker thread: a large snapshot never stalls requests.
        store = ModelStore(
            settings.registry(redis), loader=LoaderThread(settings.registry, settings.redis_url)
        )
        app.state.settings = settings
        app.state.redis = redis
        app.state.model_store = store
        app.state.publisher = EventPublisher(settings)
        try:
            await store.refresh_all()
        except RedisError as exc:  # start anyway: /health says degraded, follow() retries
            log.warning("Redis unavailable at start (%s); models load when it answers", exc)
        stop_following = asyncio.Event()
        # Long-lived responses (GET /alerts/stream) end on it too (deps.app_stopping).
        app.state.stopping = stop_following
        follower = asyncio.create_task(
            store.follow(stop_following, FOLLOW_POLL_SECONDS), name="snapshot-follower"
        )
        try:
            yield
        finally:
            stop_following.set()
            follower.cancel()
            # Bounded: even if the cancellation is swallowed mid-read, the follower sees the
            # stop flag within one poll.
            _, pending = await asyncio.wait({follower}, timeout=FOLLOW_POLL_SECONDS + 3)
            if pending:
                log.warning("snapshot follower did not stop within %.0fs", FOLLOW_POLL_SECONDS + 3)
            await app.state.publisher.close()
            await redis.aclose()

    app = FastAPI(
        title="driftline",
        summary="Live predictions from online models that keep themselves correct.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.openapi = lambda: _openapi_with_one_error_shape(app)  # type: ignore[method-assign]
    for handled in (StarletteHTTPException, RequestValidationError, DriftlineError, RedisError):
        app.add_exception_handler(handled, _error)
    return app


#: What any route may answer besides what it documents: Redis down is a 503 wherever Redis is read.
ANY_ROUTE_ERRORS = {"503": "Redis (or the broker) unavailable; retry shortly"}


def _openapi_with_one_error_shape(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every 4xx/5xx answer in the one error shape (its own 422 included,
    which the handlers answer in that shape too), a 404 for every path with a parameter, and the
    503 any route may answer with Redis down."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in ANY_ROUTE_ERRORS.items():
                responses.setdefault(code, {"description": description})
            if "{" in path:
                responses.setdefault("404", {"description": "not found"})
            for code, response in responses.items():
                if code[0] in "45" and "example" not in response.get("content", {}).get(
                    "application/json", {}
                ):
                    response["content"] = error
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(
        {
            name: body
            for name, body in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            .pop("$defs", {})
            .items()
        }
    )
    components["ErrorResponse"] = {
        k: v
        for k, v in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").items()
        if k != "$defs"
    }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


async def _error(request: Request, exc: Exception) -> JSONResponse:
    """Every error in one shape (:mod:`driftline.api.errors`): HTTPException, validation, Redis
    down, driftline's own; an HTTPException's headers (``WWW-Authenticate``) kept."""
    code, body = status_and_body(exc, f"{request.method} {request.url.path}")
    headers = getattr(exc, "headers", None) if isinstance(exc, StarletteHTTPException) else None
    return JSONResponse(body, status_code=code, headers=headers)
