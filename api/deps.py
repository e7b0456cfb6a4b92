"""What routes receive: resources the lifespan opened, as ``Annotated`` dependencies."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from driftline.api.model_store import ModelStore
from driftline.api.publisher import EventPublisher
from driftline.models.registry import ModelRegistry
from driftline.settings import Settings


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_redis(request: Request) -> Redis:
    redis: Redis = request.app.state.redis
    return redis


def get_model_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.model_store
    return store


def get_registry(request: Request) -> ModelRegistry:
    return get_model_store(request).registry


def get_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


def app_stopping(request: Request) -> asyncio.Event:
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
