"""Schemathesis against the app's own OpenAPI schema (issue 16, acceptance 1): requests made from
the schema, to the app in-process (its lifespan run: the real Redis, a published model, the
session's broker), answer no 5xx, and every answer conforms to the schema: its status documented,
its content type and its body as the schema says.

Deterministic (derandomized) and bounded (``MAX_EXAMPLES`` per operation), to stay fast.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import hypothesis
import pytest
import schemathesis
from redis.asyncio import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from driftline.api.main import create_app
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings
from driftline.streams.checkpoint import save_checkpoint
from driftline.streams.features import DeviceState, featurize
from driftline.streams.ingest import FeatureRecord
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.integration

#: Examples per operation: enough to reach every route's branches that a schema can describe.
MAX_EXAMPLES = 20
#: The SSE stream never ends on its own: it is covered by the unit and integration tests.
NOT_FUZZED = "/alerts/stream"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


async def _prepare(settings: Settings) -> None:
    """A published model (learned on the stream's features) and a device with a state."""
    learner = OnlineLearner.create(ModelSpec(name=settings.default_model))
    state = DeviceState()
    for i in range(30):
        temperature = 15.0 + i % 10
        readings = {"temperature": temperature, "vibration": 0.1 * (i % 5)}
        x = featurize(state, readings, datetime(2026, 1, 1, 12, i, tzinfo=UTC), settings.features)
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
    redis = Redis.from_url(settings.redis_url)
    try:
        await settings.registry(redis).publish(learner)
        await save_checkpoint(redis, settings.keys, "t", "id", {}, {"dev-1": state})
    finally:
        await redis.aclose()


def test_every_operation_answers_within_its_schema_and_never_a_5xx(make_settings: SettingsFactory) -> None:
    # Operation by operation, in one test: schemathesis's pytest loader for a fixture's schema
    # does not run on pytest 9 (it reads a node attribute pytest removed).
    settings = make_settings()
    asyncio.run(_prepare(settings))
    key = {"X-API-Key": settings.api_keys.get_secret_value()}
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings)).exclude(path=NOT_FUZZED)
    failures: dict[str, str] = {}
    operations = calls = 0
    try:
        for loaded in schema.get_all_operations():
            assert isinstance(loaded, Ok), loaded  # the app's schema loads, every operation of it
            operation = loaded.ok()
            operations += 1

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def answers_within_the_schema(case: Any) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(headers=key, checks=CHECKS)

            try:
                answers_within_the_schema()
            except (Exception, BaseExceptionGroup) as exc:  # each operation tried; failures reported together
                failures[operation.label] = str(exc)[:2000]
    finally:
        asgi.shutdown_lifespans()  # the app's lifespan (Redis client, snapshot follower) ends here
    assert operations >= 20 and calls >= 5 * operations  # it did fuzz, every operation
    assert failures == {}


def test_the_schema_has_an_example_for_every_operations_request_and_answer() -> None:
    openapi = create_app(Settings(env="test", _env_file=None)).openapi()
    missing = []
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and not _has_example(body, openapi):
                missing.append(f"{method.upper()} {path} request")
            answer = operation["responses"].get("200") or operation["responses"].get("202") or {}
            content = answer.get("content", {}).get("application/json")
            if content is not None and not _has_example(content, openapi):
                missing.append(f"{method.upper()} {path} answer")
    assert missing == [], "\n".join(missing)


def _has_example(media: dict[str, Any], openapi: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    schema = media.get("schema", {})
    ref = schema.get("$ref") or next((s.get("$ref") for s in schema.get("anyOf", []) if "$ref" in s), None)
    if ref is None:
        return "examples" in schema or "example" in schema
    target = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return "examples" in target or "example" in target
