"""The FastAPI app. Run it with ``driftline api`` (uvicorn, factory :func:`create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from driftline.api.model_store import LoaderThread, ModelStore
from driftline.api.publisher import EventPublisher
from driftline.api.routes import router
from driftline.core.errors import (
    DriftlineError,
    FeatureSchemaMismatch,
    ModelNotReady,
    RegistryError,
    ServiceUnavailable,
    SnapshotError,
)
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
    app.add_exception_handler(DriftlineError, _driftline_error)
    app.add_exception_handler(RedisError, _redis_error)
    return app


async def _driftline_error(request: Request, exc: Exception) -> JSONResponse:
    code = status.HTTP_400_BAD_REQUEST
    detail = str(exc)
    if isinstance(exc, FeatureSchemaMismatch):
        code = status.HTTP_409_CONFLICT
    if isinstance(exc, RegistryError):
        code = status.HTTP_404_NOT_FOUND
    if isinstance(exc, ModelNotReady | SnapshotError | ServiceUnavailable):
        code = status.HTTP_503_SERVICE_UNAVAILABLE
    if isinstance(exc, ServiceUnavailable):
        # The service's address and its client's error are for the operator's log, not for
        # whoever called (the read endpoints take anonymous callers).
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        detail = f"{exc.service} is unreachable; retry shortly"
    return JSONResponse({"detail": detail}, status_code=code)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    # Redis's own message names its address: logged here, never sent.
    log.warning("%s %s: Redis unavailable: %r", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "Redis is unavailable; retry shortly"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
    )
