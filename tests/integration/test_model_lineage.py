"""Where each model version comes from and how its races went, against the real Redis: the
lineage and race events a racing learner publishes, read back by the registry (promotions for the
chart), the API (the race on, promotions with the history) and the CLI (``models show``,
``models diff``).

The learner races the way the worker's does: a periodic retraining spec, learned event by event
and published every 20 events, so some snapshots are taken mid-race and others record a spawn or
a promotion. No broker or worker is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from driftline.api.main import create_app
from driftline.cli import main as cli
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.registry import ModelRegistry
from driftline.models.specs import ModelSpec
from driftline.settings import Settings

from .conftest import on_registry

pytestmark = pytest.mark.integration

#: A race every 50 events learned, decided after 20 scored; the challenger starts untrained (no
#: buffer to warm-start on), so it learns only the regime the race starts in.
RACING = {
    "policy": "periodic",
    "every": 50,
    "min_events": 20,
    "max_events": 200,
    "window": 20,
    "margin": 0.0,
    "buffer": 0,
}


def race_and_publish(settings: Settings, events: int = 140, every: int = 20) -> OnlineLearner:
    """Learn ``events`` (y = t/2, then 3t - 20 from event 50 on, 60 - 2t from event 100 on),
    publishing every ``every``.

    Races spawn at 50 and 100 events learned and promote their challenger at 70 and 120: v3
    (60 events) is mid-race, v4 (80) records the first promotion, v6 (120) the second.
    """
    learner = OnlineLearner.create(ModelSpec(name="default", retrain=RACING))
    for i in range(events):
        x = {"temperature": 15.0 + i % 10}
        t = x["temperature"]
        y = 0.5 * t if i < 50 else (3.0 * t - 20 if i < 100 else 60 - 2.0 * t)
        learner.learn(FeatureRecord("default", "dev-1", f"e{i}", float(i), x, y, 0, i), 0, i)
        if i % every == every - 1:
            on_registry(settings, lambda r: r.publish(learner))
    return learner


@pytest.fixture
def cli_settings(make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings the ``driftline`` command reads too (through the environment)."""
    settings: Settings = make_settings()
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    from driftline.settings import get_settings

    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_each_snapshot_records_its_lineage_and_each_promotion_is_placed_where_it_happened(
    make_settings: Any,
) -> None:
    settings = make_settings()
    race_and_publish(settings)
    metas = {m["version"]: m for m in on_registry(settings, lambda r: r.versions("default"))}

    assert sorted(metas) == [1, 2, 3, 4, 5, 6, 7]
    first, promoted = metas[1]["lineage"], metas[4]["lineage"]
    assert (first["reason"], first["parent"], first["events_learned_since_parent"]) == (
        "continued learning",
        None,
        20,
    )
    assert first["source_positions_since_parent"] == {"events/0": [[-1, -1], [19, 0]]}
    assert (promoted["reason"], promoted["parent"]) == ("periodic challenger", 3)
    assert promoted["origin"]["events_learned_at_promotion"] == 70
    assert metas[3]["race"]["events"] == 10 and metas[4]["race"] is None  # v3 is mid-race

    on_registry(settings, lambda r: r.promote("default", 2, reason="canary"))
    promotions = on_registry(settings, lambda r: r.promotions("default"))

    assert [(p["kind"], p["version"], p["events_learned"]) for p in promotions] == [
        ("race", 4, 70),  # where the learner promoted, not where the snapshot was taken (80)
        ("race", 6, 120),
        ("manual", 2, 140),  # an operator's: at the newest publish before it
    ]
    race = promotions[0]
    assert (race["by"], race["reason"], race["winner"], race["previous"], race["alert"]) == (
        "driftline",
        "periodic",
        "challenger",
        3,
        None,
    )
    assert race["standings"]["events"] == 20 and race["standings"]["champion"] is not None
    assert [c["label"] for c in race["standings"]["challengers"]] == ["challenger"]
    assert (promotions[2]["reason"], promotions[2]["standings"]) == ("canary", None)
    # Within the span of the last publishes only, as the history's points are.
    assert [p["version"] for p in on_registry(settings, lambda r: r.promotions("default", points=1))] == [2]
    assert [p["version"] for p in on_registry(settings, lambda r: r.promotions("default", points=2))] == [
        6,
        2,
    ]


def test_the_api_shows_the_race_on_and_the_promotions_with_the_history(make_settings: Any) -> None:
    settings = make_settings()
    race_and_publish(settings, events=110)  # v5 (100 events) and the latest, mid-race
    with TestClient(create_app(settings)) as client:
        history = client.get("/models/default/history").json()
        model = client.get("/models/default").json()
        stats = client.get("/stats").json()

    assert [p["version"] for p in history["points"]] == [1, 2, 3, 4, 5]
    assert [(p["kind"], p["version"], p["events_learned"]) for p in history["promotions"]] == [
        ("race", 4, 70)
    ]
    race = model["race"]
    assert race["version"] == 5 and race["reason"] == "periodic" and race["events"] == 0
    assert (race["metric"], race["bigger_is_better"], race["min_events"], race["margin"]) == (
        "MAE",
        False,
        20,
        0.0,
    )
    assert [c["label"] for c in race["challengers"]] == ["challenger"]
    assert model["promotions"] == 1
    assert stats["models"]["default"]["race"] == race and stats["models"]["default"]["promotions"] == 1


def test_models_show_prints_each_versions_lineage_and_how_each_race_went(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    race_and_publish(cli_settings, events=110)
    # A snapshot published before lineage existed has none in its listing.
    key = cli_settings.keys.model("default", "meta")

    async def forget_lineage(registry: ModelRegistry) -> None:
        meta = json.loads(await registry.redis.hget(key, "1"))
        del meta["lineage"]
        await registry.redis.hset(key, "1", json.dumps(meta))

    on_registry(cli_settings, forget_lineage)

    assert cli(["models", "show", "default"]) == 0
    shown = capsys.readouterr().out

    lines = shown.splitlines()
    assert any(line.startswith("race on (periodic): nothing scored yet") for line in lines)
    assert any(
        line.startswith("v1  no lineage (published before lineage was recorded): 20 events learned")
        for line in lines
    )
    v4 = next(i for i, line in enumerate(lines) if line.startswith("v4  "))
    assert lines[v4].startswith("v4  periodic challenger, parent v3: +20 events (events/0 59:0 -> 79:0) in ")
    assert "won race default:race:events/0:49:0 at 70 events learned; promotions 1" in lines[v4 + 1]
    assert "driftline 0.1.0, River " in lines[v4 + 1]
    promote = next(line for line in lines if " promote " in line)
    assert "champion  driftline  MAE over 20 events: champion " in promote
    assert "challenger " in promote and "(won)" in promote
    assert "periodic: challenger beat the champion by at least 0% over 20 events; v3 served before" in promote
    spawns = [line for line in lines if " spawn " in line]
    assert len(spawns) == 2 and all("warm-started on" in line for line in spawns)
    assert "periodic retraining after 50 events learned" in spawns[-1]


def test_models_diff_sets_two_versions_side_by_side_and_refuses_what_is_not_there(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    race_and_publish(cli_settings, events=80)

    assert cli(["models", "diff", "default", "2", "latest"]) == 0
    out = capsys.readouterr().out
    rows = {line[2:].split("  ")[0]: line for line in out.splitlines() if line[:2] in ("* ", "  ")}

    assert out.startswith("model default: v2 vs v4 (* marks what differs)")
    assert rows["estimator"].startswith("  ") and rows["git commit"].startswith("  ")
    assert rows["lineage reason"].startswith("* ") and "periodic challenger" in rows["lineage reason"]
    assert rows["parent"].split()[-2:] == ["v1", "v3"]
    assert rows["events learned"].split()[-4:] == ["40", "80", "+40", "(+100.0%)"]
    assert rows["MAE (cumulative)"].startswith("* ") and rows["MAE (cumulative)"].endswith(
        ("better", "worse")
    )
    assert "(the spec's " in out and "other fields are the same)" in out

    assert cli(["models", "diff", "default", "2", "9"]) == 2
    assert "model 'default' has no version 9" in capsys.readouterr().err
    assert cli(["models", "diff", "nope", "1", "2"]) == 2
    assert "no model named 'nope': known models are default" in capsys.readouterr().err
    assert cli(["models", "diff", "default", "challenger", "1"]) == 2
    assert "has no challenger alias set" in capsys.readouterr().err
