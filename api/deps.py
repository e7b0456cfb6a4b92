"""What routes receive: resources the lifespan opened, as ``Annotated`` dependencies.

Each is ``async def`` though it awaits nothing: FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hand-off per dependency per request (a tenth of ``/predict``'s time).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from driftline.api.model_store import ModelStore
from driftline.api.publisher import EventPublisher
from driftline.models.registry import ModelRegistry
from driftline.settings import Settings


async def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


async def get_model_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.model_store
    return store


async def get_registry(request: Request) -> ModelRegistry:
    store: ModelStore = request.app.state.model_store
    return store.registry


async def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


async def app_stopping(request: Request) -> asyncio.Event:
    """Set when the app shuts down: long-lived responses (the alert stream) end on it. An app
    whose lifespan has not run (a test's) never stops: a fresh event."""
    stopping: asyncio.Event | None = getattr(request.app.state, "stopping", None)
    return stopping if stopping is not None else asyncio.Event()


SettingsDep = Annotated[Settings, Depends(app_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
ModelStoreDep = Annotated[ModelStore, Depends(get_model_store)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
PublisherDep = Annotated[EventPublisher, Depends(get_publisher)]
StoppingDep = Annotated[asyncio.Event, Depends(app_stopping)]
