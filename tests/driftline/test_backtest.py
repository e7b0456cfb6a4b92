"""``driftline backtest``: the stream's own code, offline, on River's SEA with a concept change.

SEA's concept 3 for 3,000 events, then concept 2: a Hoeffding tree's error drifts after the
change, a challenger is spawned and promoted. No broker, no Redis.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from river.datasets import synth

from driftline.backtest import BacktestResult, choose_specs, run_backtest, write_outputs
from driftline.cli import main
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.settings import Settings, get_settings

SPEC = ModelSpec(name="sea", task="classification", estimator="river.tree.HoeffdingTreeClassifier")
T0 = 1_790_000_000.0
CHANGE = 3000


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DRIFTLINE_"):
            monkeypatch.delenv(name)
    # A development machine: the published development secrets stand in for unset ones.
    monkeypatch.setenv("DRIFTLINE_ENV", "dev")
    monkeypatch.chdir(tmp_path)  # no .env file of the checkout's
    get_settings.cache_clear()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"env": "dev", "features": "raw", "sensor_catalog": "none", "models": (SPEC,)}
    return Settings(_env_file=None, **{**values, **overrides})


@cache
def sea_rows() -> tuple[tuple[dict[int, float], bool], ...]:
    return tuple(
        itertools.chain(
            itertools.islice(synth.SEA(variant=3, seed=1), CHANGE),
            itertools.islice(synth.SEA(variant=2, seed=2), CHANGE),
        )
    )


def sea_events() -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"sea-{i:08d}",
            "device_id": "d",
            "ts": T0 + i,
            "readings": {"a": x[0], "b": x[1], "c": x[2]},
            "target": y,
        }
        for i, (x, y) in enumerate(sea_rows())
    ]


@pytest.fixture(scope="module")
def sea_result() -> BacktestResult:
    return run_backtest(sea_events(), [SPEC], settings(), source="sea")


def firing_drifts(result: BacktestResult) -> list[dict[str, Any]]:
    return result.models[0].drifts


def test_a_concept_change_is_alerted_and_a_challenger_promoted(sea_result: BacktestResult) -> None:
    assert sea_result.ingest["received"] == sea_result.ingest["accepted"] == 2 * CHANGE
    model = sea_result.models[0]
    assert model.events_seen == model.events_learned == 2 * CHANGE
    assert model.cumulative is not None and model.cumulative > 0.85
    [drift] = model.drifts
    assert drift["signal"] == "error" and CHANGE < drift["offset"] < CHANGE + 500
    assert drift["id"] == f"sea:error:events/0:{drift['offset']}:0", "event i is at events/0, offset i"
    assert drift["status"] == "resolved" and drift["resolved_by"], "the promotion resolved it"
    actions = [(e["action"], e["alert"]) for e in model.model_events]
    assert actions == [("spawn", drift["id"]), ("promote", drift["id"])]
    assert model.promotions[0]["offset"] > drift["offset"]
    assert model.series[-1]["offset"] == 2 * CHANGE - 1
    assert model.series[-1]["cumulative"] == model.cumulative
    assert model.series[-1]["rolling"] == model.rolling


def test_the_same_run_twice_gives_the_same_result(sea_result: BacktestResult) -> None:
    again = run_backtest(sea_events(), [SPEC], settings(), source="sea")
    assert again == sea_result
    assert again.to_json() | {"seconds": 0} == sea_result.to_json() | {"seconds": 0}


def test_it_equals_the_records_fed_straight_to_a_learner(sea_result: BacktestResult) -> None:
    # What the learn stage does with the records of one source partition, one event per message.
    learner = OnlineLearner.create(SPEC)
    schema = settings().features.schema_hash()
    for i, (x, y) in enumerate(sea_rows()):
        features = {"a": x[0], "b": x[1], "c": x[2]}
        record = FeatureRecord("sea", "d", f"sea-{i:08d}", T0 + i, features, y, 0, i, 0, (), (), schema)
        learner.learn_message(0, i, [record])
    model = sea_result.models[0]
    assert model.report == learner.evaluation.report()
    assert model.alerts == list({a.id: a.to_json() for a in learner.drift.outbox}.values())
    assert model.model_events == [e.to_json() for e in learner.model_events]
    assert (model.events_seen, model.events_learned) == (learner.events_seen, learner.events_learned)


def test_events_the_stream_refuses_are_counted_and_keep_their_offsets(sea_result: BacktestResult) -> None:
    good = sea_events()
    refused = [
        {"event_id": "bad", "device_id": "d", "ts": T0, "readings": {"a": "warm"}},  # invalid
        {**good[0], "event_id": "future", "ts": 4_000_000_000.0},  # far ahead of now
    ]
    late = {**good[0], "event_id": "late", "ts": T0 + 10 - 301}  # behind the watermark by > 300 s
    events = [*refused, *good[:11], late, good[0], *good[11:]]  # good[0] again: a duplicate
    result = run_backtest(events, [SPEC], settings(), source="sea")
    ingest = result.ingest
    assert (ingest["accepted"], ingest["rejected"], ingest["late"], ingest["deduplicated"]) == (
        2 * CHANGE,
        2,
        1,
        1,
    )
    assert (ingest["rejected:invalid"], ingest["rejected:future"]) == (1, 1)
    assert [(r["offset"], r["reason"]) for r in result.rejections] == [
        (0, "invalid"),
        (1, "future"),
        (13, "late"),
    ]
    model, clean = result.models[0], sea_result.models[0]
    assert model.report == clean.report, "the same events learned, in the same order"
    shifted = [a["offset"] - 4 for a in model.alerts], [e["offset"] - 4 for e in model.model_events]
    assert shifted == ([a["offset"] for a in clean.alerts], [e["offset"] for e in clean.model_events])
    assert [a["position"] for a in model.alerts] == [a["position"] for a in clean.alerts]


def test_a_json_and_a_png_are_written(sea_result: BacktestResult, tmp_path: Path) -> None:
    json_path, png_path = write_outputs(sea_result, tmp_path / "out", stamp="t")
    assert json_path == tmp_path / "out" / "backtest-t.json"
    written = json.loads(json_path.read_text())
    assert written["models"][0]["metric"]["value"] == sea_result.models[0].cumulative
    assert written["models"][0]["alerts"][0]["id"] == sea_result.models[0].alerts[0]["id"]
    assert [e["action"] for e in written["models"][0]["model_events"]] == ["spawn", "promote"]
    assert png_path == tmp_path / "out" / "backtest-t.png"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_by_name_inline_or_every_configured_one() -> None:
    other = ModelSpec(name="lr", task="classification", estimator="logistic_regression")
    configured = settings(models=(SPEC, other))
    assert choose_specs(configured) == [SPEC, other]
    assert choose_specs(configured, names=["lr"]) == [other]
    inline = '[{"name": "x", "task": "classification", "estimator": "hoeffding_tree_classifier"}]'
    assert [s.name for s in choose_specs(configured, ["sea"], [inline])] == ["sea", "x"]


def write_sea_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t", "a", "b", "c", "y"])
        for i, (x, y) in enumerate(sea_rows()[:rows]):
            out.writerow([T0 + i, x[0], x[1], x[2], y])
    return path


def test_the_command_prints_a_table_and_says_where_the_files_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRIFTLINE_FEATURES", "raw")
    monkeypatch.setenv("DRIFTLINE_SENSOR_CATALOG", "none")
    monkeypatch.setenv("DRIFTLINE_MODELS", json.dumps([SPEC.summary()]))
    source = write_sea_csv(tmp_path / "sea.csv", 400)
    other = '{"name": "other", "task": "classification", "estimator": "hoeffding_tree_classifier"}'
    flags = ["--time-column", "t", "--target-column", "y", "--model", "sea", "--spec", other]
    assert main(["backtest", str(source), *flags]) == 0
    out, err = capsys.readouterr()
    assert "400 events, 400 accepted" in out
    table = out.splitlines()[2:5]
    assert table[0].split() == [
        "model",
        "estimator",
        "metric",
        "cumulative",
        "rolling",
        "learned",
        "drifts",
        "promotions",
    ]
    assert [row.split()[0] for row in table[1:]] == ["sea", "other"]
    assert "400/400" in err, "the progress bar"
    written = sorted((tmp_path / ".driftline").iterdir())
    assert [p.suffix for p in written] == [".json", ".png"]
    assert f"wrote {written[0].relative_to(tmp_path)} and {written[1].relative_to(tmp_path)}" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--spec", '{"name": "m", "estimator": "nope"}'], "--spec: model 'm': unknown estimator 'nope'"),
        (
            ["--spec", '{"name": "m", "task": "anomaly"}'],
            "--spec: model 'm': estimator 'linear_regression' is",
        ),
        (["--spec", '{"name": "m", "colour": 1}'], "--spec: colour: Extra inputs are not permitted"),
        (["--spec", "{name: m}"], "--spec is not valid JSON"),
        (["--model", "nope"], "no configured model 'nope' (DRIFTLINE_MODELS has: default)"),
        (["--model", "default", "--model", "default"], "model 'default' given twice"),
        (["--time-column", "t", "--start", "2026-01-01T00:00:00Z"], "--start sets the times"),
        (["--device-column", "site"], "sea.csv: row 0 has no column 'site'"),
    ],
)
def test_bad_input_is_one_clean_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    source = write_sea_csv(tmp_path / "sea.csv", 3)
    assert main(["backtest", str(source), *flags]) == 2
    out, err = capsys.readouterr()
    error = [line for line in err.splitlines() if line.startswith("driftline: error:")]
    assert len(error) == 1 and message in error[0], err
    assert "Traceback" not in err and not list(tmp_path.glob(".driftline/backtest-*"))


@pytest.mark.parametrize(
    ("source", "message"), [("river:Nope", "River has no dataset 'Nope'"), ("x.csv", "no such file")]
)
def test_a_source_that_cannot_be_read_is_one_clean_line(
    capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    assert main(["backtest", source]) == 2
    assert message in capsys.readouterr().err
