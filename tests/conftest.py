"""Shared fixtures. Unit tests need none of the services; integration tests ask for ``services``.

``services`` starts a fresh embedded Tansu broker for the session and uses the Redis at
``DRIFTLINE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) when it answers, else starts an
embedded one. If either cannot be had, the tests that need it fail: they never skip.
Every test gets its own Redis namespace and its own topic names, so tests never see each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driftline.embedded import EmbeddedBroker, EmbeddedRedis, redis_answers
from driftline.settings import Settings


@dataclass
class Services:
    kafka_url: str
    redis_url: str


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp("services")
    redis_url = os.environ.get("DRIFTLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    embedded_redis = None
    if not redis_answers(redis_url):
        embedded_redis = EmbeddedRedis(log_dir=Path(logs)).start()
        redis_url = embedded_redis.url
    broker = EmbeddedBroker(log_dir=Path(logs)).start()
    try:
        yield Services(kafka_url=broker.url, redis_url=redis_url)
    finally:
        broker.stop()
        if embedded_redis is not None:
            embedded_redis.stop()


SettingsFactory = Callable[..., Settings]

#: The admin key ``make_settings`` configures, and its name (what the audit log records).
TEST_ADMIN = "test-admin"
TEST_ADMIN_KEY = "test-admin-key-0123456789"


@pytest.fixture
def make_settings(services: Services, tmp_path_factory: pytest.TempPathFactory) -> SettingsFactory:
    """Settings pointing at the session's services, with a namespace, topics and a data directory
    of this test's own."""
    run = uuid.uuid4().hex[:8]
    data_dir = tmp_path_factory.mktemp(f"data-{run}")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "kafka_url": services.kafka_url,
            "redis_url": services.redis_url,
            "namespace": f"test-{run}",
            "worker_id": f"driftline-test-{run}",
            "events_topic": f"sensor-events-{run}",
            "features_topic": f"sensor-features-{run}",
            "dlq_topic": f"sensor-dlq-{run}",
            "labels_topic": f"sensor-labels-{run}",
            "alerts_topic": f"drift-alerts-{run}",
            "model_events_topic": f"model-events-{run}",
            "secret_key": "test-secret-key-0123456789",
            # Secrets of its own, as a deployment has: no warning about published ones in the
            # processes a test starts (their output is read).
            "api_keys": "test-api-key-0123456789",
            "admin_keys": f"{TEST_ADMIN}:{TEST_ADMIN_KEY}",
            "snapshot_every_events": 100,
            "snapshot_every_seconds": 1.0,
            "batch_within": 0.2,
            "data_dir": data_dir,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make
