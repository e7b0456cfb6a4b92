"""What ``driftline models show`` and ``models diff`` make of a version's metadata and audit
entries, with no services: the metadata is built the way the registry publishes it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from driftline.core.errors import RegistryError
from driftline.model_commands import _pick_version, audit_row, diff_versions, lineage_lines
from driftline.models.specs import ModelSpec


def meta(version: int, *, mae: float, events: int, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A version's listing metadata, as ``ModelRegistry.publish`` writes it (lineage optional, as
    in a snapshot published before lineage existed)."""
    spec = ModelSpec(name="m", retrain={"margin": 0.05}).summary()
    out: dict[str, Any] = {
        "model": "m",
        "version": version,
        "task": "regression",
        "spec": spec,
        "estimator": spec["estimator"],
        "events_seen": events + 5,
        "events_learned": events,
        "labels": {"received": 0, "pending": 5, "expired": 0, "unmatched": 0},
        "metric": {"name": "MAE", "value": mae, "rolling": mae / 2},
        "metrics": {
            "labelled": events,
            "window": 1000,
            "cumulative": {"MAE": mae, "RMSE": 2 * mae, "R2": 0.5},
            "rolling": {"MAE": mae / 2, "RMSE": mae, "R2": 0.6},
        },
        "feature_schema": "9f2c0a",
        "learn_us_per_event": 80.0,
        "river_version": "0.26.1",
        "model_bytes": 9000 + version,
        "size_bytes": 12000 + version,
        "promotions": 0,
    }
    if lineage is not None:
        out["lineage"] = {
            "reason": "continued learning",
            "parent": version - 1 if version > 1 else None,
            "spec": spec,
            "params": {},
            "origin": {"reason": "created from its spec"},
            "promotions": 0,
            "source_positions_since_parent": {"events/0": [[99, 0], [199, 1]]},
            "events_learned_since_parent": 100,
            "learn_seconds_since_parent": 0.25,
            "model_bytes": 9000 + version,
            "driftline_version": "0.1.0",
            "river_version": "0.26.1",
            "git_commit": "0123456789abcdef0123",
            **lineage,
        }
        out["promotions"] = out["lineage"]["promotions"]
    return out


WON = {
    "reason": "challenger after alert m:error:events/0:150:0",
    "params": {"l2": 0.01},
    "promotions": 1,
    "origin": {
        "reason": "challenger after alert",
        "race": "m:race:events/0:150:0",
        "alert": "m:error:events/0:150:0",
        "params": {"l2": 0.01},
        "events_learned_at_promotion": 180,
    },
    "git_commit": "fedcba9876543210",
}


def test_lineage_says_why_a_version_exists_what_it_learned_since_its_parent_and_what_built_it() -> None:
    plain = lineage_lines(meta(2, mae=0.5, events=200, lineage={}))
    won = lineage_lines(meta(3, mae=0.4, events=300, lineage=WON))
    first = lineage_lines(
        meta(
            1,
            mae=0.6,
            events=100,
            lineage={"source_positions_since_parent": {"events/0": [[-1, -1], [99, 0]]}},
        )
    )

    assert plain == [
        "v2  continued learning, parent v1: +100 events (events/0 99:0 -> 199:1) in 0.25 s, model 9.0 kB",
        "    params {}; driftline 0.1.0, River 0.26.1, commit 0123456789ab",
    ]
    assert won[0].startswith("v3  challenger after alert m:error:events/0:150:0, parent v2: +100 events")
    assert won[1] == (
        '    params {"l2": 0.01}; won race m:race:events/0:150:0 at 180 events learned; promotions 1; '
        "driftline 0.1.0, River 0.26.1, commit fedcba987654"
    )
    assert first[0].startswith("v1  continued learning, no parent: +100 events (events/0 start -> 99:0)")


def test_a_version_published_before_lineage_existed_still_prints() -> None:
    assert lineage_lines(meta(1, mae=0.6, events=100)) == [
        "v1  no lineage (published before lineage was recorded): 100 events learned, model 9.0 kB, "
        "River 0.26.1"
    ]


def race_entry(action: str, standings: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A model event's audit entry as the registry's stream holds it: every value text."""
    entry = {
        "id": "1-0",
        "action": action,
        "model": "m",
        "version": "4",
        "at": "2026-11-22T10:00:00+00:00",
        "by": "driftline",
        "race": "m:race:events/0:150:0",
        "reason": "drift",
        "source": "events/0",
        "offset": "150",
        "index": "0",
        "event_time": "1790000000.0",
        "standings": json.dumps(standings),
        "alert": "m:error:events/0:150:0",
        "winner": "null",
        **fields,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()}


def test_audit_rows_show_the_champion_and_challengers_metrics_and_why_a_race_began_or_ended() -> None:
    search = {
        "events": 600,
        "champion": 0.5,
        "challengers": [
            {"label": "candidate 1", "params": {"l2": 0.0}, "metric": 0.42, "events": 600},
            {"label": "candidate 2", "params": {"l2": 0.1}, "metric": 0.47, "events": 600},
        ],
    }
    spawn = audit_row(
        race_entry(
            "spawn",
            {"events": 0, "warm_started": 80, "champion": None, "challengers": [{"label": "challenger"}]},
            why="error drift m:error:events/0:150:0: challenger warm-started on 80 events since the change",
        ),
        "MAE",
    )
    promote = audit_row(
        race_entry(
            "promote",
            search,
            reason="search",
            alert="null",
            winner="candidate 1",
            previous="3",
            why="candidate 1 beat the champion by at least 2% over 600 events",
        ),
        "MAE",
    )
    retire = audit_row(race_entry("retire", {**search, "champion": 0.4}, why="no challenger won"), "MAE")
    publish = audit_row(
        {
            "action": "publish",
            "version": "4",
            "metric": json.dumps({"name": "MAE", "value": 0.5, "rolling": 0.25}),
            "events_learned": "100",
        }
    )
    manual = audit_row(
        {"action": "promote", "version": "2", "alias": "champion", "by": "ana", "reason": "canary"}
    )

    assert spawn["metrics"] == "nothing scored yet; 1 challenger warm-started on 80 events"
    assert spawn["reason"] == (
        "drift (alert m:error:events/0:150:0): error drift m:error:events/0:150:0: challenger "
        "warm-started on 80 events since the change"
    )
    assert promote["metrics"] == "MAE over 600 events: champion 0.5, candidate 1 0.42 (won), candidate 2 0.47"
    assert (
        promote["reason"]
        == "search: candidate 1 beat the champion by at least 2% over 600 events; v3 served before"
    )
    assert (promote["alias"], promote["by"]) == ("champion", "driftline")
    assert retire["metrics"] == "MAE over 600 events: champion 0.4, candidate 1 0.42, candidate 2 0.47"
    assert retire["reason"] == "drift (alert m:error:events/0:150:0): no challenger won"
    assert publish["metrics"] == "MAE=0.5 (rolling 0.25)"
    assert (manual["metrics"], manual["reason"], manual["by"]) == (None, "canary", "ana")


def rows_of(text: str) -> dict[str, str]:
    """The diff's rows by field name (marked ``* `` when the versions differ)."""
    return {line[2:].split("  ")[0]: line for line in text.splitlines() if line[:2] in ("* ", "  ")}


def test_diff_marks_what_differs_and_says_whether_each_metric_got_better() -> None:
    older = meta(2, mae=0.5, events=200, lineage={})
    newer = meta(3, mae=0.4, events=300, lineage=WON)
    newer["spec"] = {**newer["spec"], "rolling_window": 500}

    text = diff_versions(older, newer)
    rows = rows_of(text)

    assert text.startswith("model m: v2 vs v3 (* marks what differs)")
    assert rows["estimator"].startswith("  ") and rows["feature schema"].startswith("  ")
    assert rows["params.l2"].startswith("* ") and rows["params.l2"].split()[-2:] == ["-", "0.01"]
    assert rows["spec.rolling_window"].startswith("* ")
    assert rows["spec.rolling_window"].split()[-2:] == ["1000", "500"]
    assert "spec.retrain.margin" not in rows  # the same in both: counted, not listed
    assert "(the spec's " in text and "other fields are the same)" in text
    assert rows["lineage reason"].startswith("* ")
    assert rows["origin"].endswith("challenger after alert (m:race:events/0:150:0)")
    assert rows["git commit"].startswith("* ")
    assert rows["MAE (cumulative)"].endswith("-0.1 (-20.0%) better")
    assert rows["MAE (rolling)"].endswith("-0.05 (-20.0%) better")
    assert rows["metrics.cumulative.R2"].startswith("  ") and "metrics.cumulative.MAE" not in rows
    assert rows["metrics.cumulative.RMSE"].endswith("better")
    assert rows["events learned"].endswith("+100 (+50.0%)")
    assert rows["labels pending"].startswith("  ")


def test_diff_of_a_version_without_lineage_shows_what_it_has_and_a_version_against_itself() -> None:
    old = meta(1, mae=0.6, events=100)
    rows = rows_of(diff_versions(old, meta(2, mae=0.5, events=200, lineage={})))
    same = rows_of(diff_versions(old, old))

    assert rows["lineage reason"].split()[-3:] == ["-", "continued", "learning"]
    assert rows["River"].startswith("  ")  # known either way: the metadata has it
    assert all(line.startswith("  ") for line in same.values())


def test_versions_are_picked_by_number_or_alias_and_anything_else_is_a_clear_error() -> None:
    metas = {v: meta(v, mae=0.5, events=100 * v) for v in (1, 2, 5)}
    aliases = {"latest": 5, "challenger": 2}

    assert _pick_version("m", "2", aliases, metas)["version"] == 2
    assert _pick_version("m", "v1", aliases, metas)["version"] == 1
    assert _pick_version("m", "latest", aliases, metas)["version"] == 5
    assert _pick_version("m", "champion", aliases, metas)["version"] == 5  # follows latest
    assert _pick_version("m", "challenger", aliases, metas)["version"] == 2
    with pytest.raises(RegistryError, match=r"no version 3 .*stored versions: v1, v2, v5"):
        _pick_version("m", "3", aliases, metas)
    with pytest.raises(RegistryError, match="no challenger alias set"):
        _pick_version("m", "challenger", {"latest": 5}, metas)
    with pytest.raises(RegistryError, match="'newest' is not a version number or an alias"):
        _pick_version("m", "newest", aliases, metas)
