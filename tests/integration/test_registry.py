"""The model registry against the real Redis: versions, aliases, promote and rollback, the audit
log, retention; and the API and the CLI reading the same registry."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from driftline.api.main import create_app
from driftline.cli import main as cli
from driftline.core.errors import RegistryError
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.registry import CHALLENGER, CHAMPION, LATEST
from driftline.models.specs import ModelSpec
from driftline.settings import Settings

from .conftest import on_registry

pytestmark = pytest.mark.integration

READING = {"device_id": "dev-1", "readings": {"temperature": 20.0}}


def learner_after(n: int, name: str = "default") -> OnlineLearner:
    learner = OnlineLearner.create(ModelSpec(name=name))
    for i in range(n):
        x = {"temperature": 15.0 + i % 10}
        learner.learn(FeatureRecord(name, "dev-1", f"e{i}", float(i), x, 0.5 * x["temperature"], 0, i), 0, i)
    return learner


def publish_versions(settings: Settings, count: int, name: str = "default") -> list[dict[str, Any]]:
    return [
        on_registry(settings, lambda r, n=n: r.publish(learner_after(10 * n, name)))
        for n in range(1, count + 1)
    ]


def test_a_snapshot_carries_what_an_operator_needs_to_know(make_settings: Any) -> None:
    settings = make_settings()
    meta = publish_versions(settings, 1)[0]
    assert meta["version"] == 1 and meta["model"] == "default" and meta["task"] == "regression"
    assert meta["spec"]["estimator"] == "linear_regression" and meta["river_version"]
    assert meta["events_learned"] == 10 and meta["metric"]["name"] == "MAE"
    assert set(meta["metrics"]["cumulative"]) == {"MAE", "RMSE", "R2"}
    assert meta["input_offsets"] == {"0": 9} and meta["source_positions"] == {"events/0": [9, 0]}
    assert meta["size_bytes"] > 1000 and meta["learn_us_per_event"] > 0 and meta["created_at"]
    learner, signed_meta = on_registry(settings, lambda r: r.load("default"))
    assert learner.events_learned == 10 and signed_meta["version"] == 1
    # the model's size is signed with it; the whole blob is a little larger
    blob = on_registry(settings, lambda r: r.redis.get(r._model_key("default", "blob", "1")))
    size = signed_meta["model_bytes"]
    assert size == meta["model_bytes"] and len(blob) == meta["size_bytes"] > size
    assert pickle.loads(blob[-size:]).events_learned == 10  # exactly the pickle's bytes


def test_promote_pins_the_champion_and_rollback_walks_back(make_settings: Any) -> None:
    settings = make_settings()
    publish_versions(settings, 4)
    assert on_registry(settings, lambda r: r.alias_version("default", CHAMPION)) == 4  # follows latest
    assert on_registry(settings, lambda r: r.promote("default", 2, reason="v2 is better")) == 2
    assert on_registry(settings, lambda r: r.promote("default", 3)) == 3
    publish_versions(settings, 1)  # a new latest does not move a pinned champion
    assert on_registry(settings, lambda r: r.aliases("default")) == {LATEST: 5, CHAMPION: 3}
    assert on_registry(settings, lambda r: r.rollback("default")) == 2
    assert on_registry(settings, lambda r: r.alias_version("default", CHAMPION)) == 2
    assert on_registry(settings, lambda r: r.rollback("default")) is None  # follows latest again
    assert on_registry(settings, lambda r: r.alias_version("default", CHAMPION)) == 5
    assert on_registry(settings, lambda r: r.rollback("default")) == 4  # from latest: the one before
    audit = on_registry(settings, lambda r: r.audit("default"))
    assert [e["action"] for e in audit] == ["rollback"] * 3 + ["publish", "promote", "promote"] + [
        "publish"
    ] * 4
    assert audit[-5]["reason"] == "v2 is better" and audit[-5]["alias"] == CHAMPION and audit[-5]["by"]


def test_challenger_and_errors(make_settings: Any) -> None:
    settings = make_settings()
    publish_versions(settings, 2)
    assert on_registry(settings, lambda r: r.promote("default", 1, alias=CHALLENGER)) == 1
    assert on_registry(settings, lambda r: r.aliases("default")) == {LATEST: 2, CHALLENGER: 1}
    with pytest.raises(RegistryError, match="no version 9"):
        on_registry(settings, lambda r: r.promote("default", 9))
    with pytest.raises(RegistryError, match="only promote to"):
        on_registry(settings, lambda r: r.promote("default", 1, alias=LATEST))
    with pytest.raises(RegistryError, match="has no versions"):
        on_registry(settings, lambda r: r.promote("nobody"))


def test_retention_keeps_the_newest_and_every_aliased_or_rollback_version(make_settings: Any) -> None:
    settings = make_settings(keep_versions=3)
    publish_versions(settings, 2)
    on_registry(settings, lambda r: r.promote("default", 1))
    on_registry(settings, lambda r: r.promote("default", 2))
    on_registry(settings, lambda r: r.promote("default", 2, alias=CHALLENGER))
    publish_versions(settings, 6)
    kept = [m["version"] for m in on_registry(settings, lambda r: r.versions("default"))]
    assert kept == [1, 2, 6, 7, 8]  # 1: a rollback target; 2: champion and challenger
    assert on_registry(settings, lambda r: r.rollback("default")) == 1
    with pytest.raises(RegistryError, match="removed by retention"):
        on_registry(settings, lambda r: r.promote("default", 4))


def test_history_keeps_every_publish_even_past_retention(make_settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("driftline.models.registry.AUDIT_PAGE", 2)  # so the log is walked back over pages
    settings = make_settings(keep_versions=2)
    publish_versions(settings, 4)
    on_registry(settings, lambda r: r.promote("default", 4))  # not a point: only publishes are
    history = on_registry(settings, lambda r: r.history("default"))
    assert [p["version"] for p in history] == [1, 2, 3, 4]
    assert [p["events_learned"] for p in history] == [10, 20, 30, 40]
    for point, n in zip(history, (10, 20, 30, 40), strict=True):
        learner = learner_after(n)
        assert point["metric"] == "MAE"
        assert point["value"] == learner.metric
        assert point["rolling"] == learner.evaluation.report()["rolling"]["MAE"]
    assert [p["version"] for p in on_registry(settings, lambda r: r.history("default", points=2))] == [3, 4]
    audit = on_registry(settings, lambda r: r.audit("default", count=10))
    assert [e["action"] for e in audit] == ["promote"] + ["publish"] * 4
    assert [e["id"] for e in audit] == sorted((e["id"] for e in audit), reverse=True)


def test_the_dashboard_draws_from_models_and_history(make_settings: Any) -> None:
    settings = make_settings()
    publish_versions(settings, 2)
    with TestClient(create_app(settings)) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'call("models")' in page.text and "/history" in page.text  # what the page reads
        assert client.get("/", follow_redirects=False).headers["location"] == "dashboard"
        body = client.get("/models/default/history").json()
        assert body["model"] == "default" and [p["version"] for p in body["points"]] == [1, 2]
        assert client.get("/models/nope/history").status_code == 404
        bad = client.get("/models/default/history", params={"points": 0})
        assert bad.status_code == 422 and "points" in bad.text


def test_the_api_serves_the_champion_and_follows_promote_and_rollback(make_settings: Any) -> None:
    settings = make_settings()
    publish_versions(settings, 3)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json=READING).json()["version"] == 3
        on_registry(settings, lambda r: r.promote("default", 1))
        assert wait_for(lambda: client.post("/predict", json=READING).json()["version"] == 1)
        on_registry(settings, lambda r: r.rollback("default"))
        assert wait_for(lambda: client.post("/predict", json=READING).json()["version"] == 3)
        model = client.get("/models/default").json()
        assert model["aliases"] == {LATEST: 3, CHAMPION: 3} and model["champion_pinned"] is False
        assert [e["action"] for e in model["audit"]][:2] == ["rollback", "promote"]
        assert [v["version"] for v in model["versions"]] == [1, 2, 3]


def test_the_cli_lists_shows_promotes_and_rolls_back(
    make_settings: Any, monkeypatch: Any, capsys: Any
) -> None:
    settings = make_settings()
    publish_versions(settings, 2)
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    from driftline.settings import get_settings

    get_settings.cache_clear()
    try:
        assert cli(["models", "list"]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert listing[0].split() == [
            "model",
            "task",
            "estimator",
            "latest",
            "champion",
            "challenger",
            "events",
            "metric",
            "versions",
            "status",
        ]
        assert listing[1].split()[:5] == ["default", "regression", "linear_regression", "2", "2"]
        assert cli(["models", "promote", "default", "1", "--reason", "canary"]) == 0
        assert "champion is now v1" in capsys.readouterr().out
        assert cli(["models", "show", "default"]) == 0
        shown = capsys.readouterr().out
        assert "champion v1 (pinned)" in shown and "canary" in shown
        assert cli(["models", "rollback", "default"]) == 0
        assert "follows latest again" in capsys.readouterr().out
        assert cli(["models", "promote", "default", "7"]) == 2
        assert "no version 7" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
