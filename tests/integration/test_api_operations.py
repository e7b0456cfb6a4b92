"""What a client that only speaks HTTP does, against the real Redis and broker: predicts in
batches, sends labels, and (an operator, with an admin key) promotes and rolls back."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer

from driftline.api.main import create_app
from driftline.kafka import ensure_topics
from tests.conftest import TEST_ADMIN, TEST_ADMIN_KEY
from tests.integration.test_api_serving import READING, publish, trained_learner

pytestmark = pytest.mark.integration


def predicted_version(client: TestClient, want: int, timeout: float = 10.0) -> int:
    """The champion's version once ``/predict`` answers with ``want`` (the follower swaps it)."""
    deadline = time.monotonic() + timeout
    while True:
        version = int(client.post("/predict", json=READING).json()["version"])
        if version == want or time.monotonic() > deadline:
            return version
        time.sleep(0.05)


def test_batch_predict_then_promote_and_roll_back_over_http_recorded_with_the_admins_name(
    make_settings: Any,
) -> None:
    settings = make_settings()
    learner = trained_learner(settings.default_model)
    for _ in range(3):  # versions 1, 2, 3: the champion follows the latest
        publish(settings, learner)
    producer_key = {"X-API-Key": settings.api_keys.get_secret_value()}
    admin = {"X-API-Key": TEST_ADMIN_KEY}
    with TestClient(create_app(settings)) as client:
        batch = client.post(
            "/predict",
            json=[
                READING,
                {"features": {"temperature": 20.0}},
                {"device_id": "d"},
                {**READING, "version": 1},
            ],
            headers=producer_key,
        )
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["status"] for r in results] == [200, 200, 422, 200]
        assert [r.get("version") for r in results] == [3, 3, None, 1]
        assert all(r["age_seconds"] >= 0 and r["created_at"] for r in results if r["status"] == 200)

        refused = client.post("/models/default/promote", json={"version": 1}, headers=producer_key)
        promoted = client.post(
            "/models/default/promote", json={"version": 1, "reason": "v3 drifts"}, headers=admin
        )
        assert refused.status_code == 401
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {
            "model": "default",
            "alias": "champion",
            "version": 1,
            "follows_latest": False,
            "by": TEST_ADMIN,
            "reason": "v3 drifts",
        }
        assert predicted_version(client, 1) == 1

        rolled_back = client.post("/models/default/rollback", json={"reason": "v1 was worse"}, headers=admin)
        assert rolled_back.status_code == 200, rolled_back.text
        assert (rolled_back.json()["version"], rolled_back.json()["follows_latest"]) == (3, True)
        assert predicted_version(client, 3) == 3

        audit = client.get("/audit", params={"model": "default", "limit": 2}).json()["entries"]
        versions = client.get("/models/default/versions").json()["versions"]
    assert [(e["action"], e["by"], e["reason"]) for e in audit] == [
        ("rollback", TEST_ADMIN, "v1 was worse"),
        ("promote", TEST_ADMIN, "v3 drifts"),
    ]
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert all("lineage" in v for v in versions)


def test_labels_over_http_reach_the_labels_topic_acknowledged_and_bad_ones_are_refused(
    make_settings: Any,
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    key = {"X-API-Key": settings.api_keys.get_secret_value()}
    with TestClient(create_app(settings)) as client:
        sent = client.post(
            "/labels",
            json=[
                {"event_id": "e1", "label": 2.5},
                {"event_id": "e2", "label": True, "model": "default"},
                {"x": 1},
            ],
            headers=key,
        )
        bad = client.post("/labels", json={"event_id": "e3"}, headers=key)
    assert sent.status_code == 202, sent.text
    assert (sent.json()["accepted"], sent.json()["rejected"]) == (2, 1)
    assert bad.status_code == 422 and bad.json()["error"]["details"]["rejected"] == 1
    consumer = KafkaConsumer(
        settings.labels_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + 15
    while len(records) < 2 and time.monotonic() < deadline:
        records.extend(consumer)
    consumer.close()
    # acknowledged before the 202: both are there, keyed by their event, as the labels topic takes them
    assert sorted((r.key, json.loads(r.value)) for r in records) == [
        (b"e1", {"event_id": "e1", "label": 2.5}),
        (b"e2", {"event_id": "e2", "label": True, "model": "default"}),
    ]
