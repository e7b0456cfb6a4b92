"""Replay: rows become valid events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftline.cli import build_parser, main, replay_mapping
from driftline.core.errors import DriftlineError
from driftline.replay import ColumnMapping, read_rows, row_to_event, with_times
from driftline.streams.schema import SensorEvent

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_csv_rows_become_valid_events_with_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "plant.csv"
    path.write_text("site,time,kw,temp,hum,note\na,2026-01-01T00:00:00Z,2.5,21,,ok\nb,1767225600,3,22,40,x\n")
    rows, total = read_rows(str(path))
    mapping = ColumnMapping(str(path), device_column="site", time_column="time", target_column="kw")
    events = [row_to_event(row, i, mapping) for i, row in enumerate(rows)]
    assert total == 2
    assert events[0] == {
        "event_id": "plant-00000000",
        "device_id": "a",
        "ts": "2026-01-01T00:00:00+00:00",
        "readings": {"temp": 21.0, "hum": None},
        "target": 2.5,
    }
    assert events[1]["ts"] == "2026-01-01T00:00:00+00:00" and events[1]["readings"] == {
        "temp": 22.0,
        "hum": 40.0,
    }
    for event in events:
        SensorEvent.model_validate(event)


def test_jsonl_and_river_sources(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"v": 1.5, "y": 2}\n\n{"v": "n/a", "y": 3}\n')
    rows, total = read_rows(str(path))
    mapping = with_times(ColumnMapping(str(path), target_column="y"), total, now=AT)
    events = [row_to_event(r, i, mapping) for i, r in enumerate(rows)]
    assert total == 2
    assert [e["readings"] for e in events] == [{"v": 1.5}, {}]
    assert [e["ts"] for e in events] == ["2026-03-01T11:59:59+00:00", "2026-03-01T12:00:00+00:00"], (
        "rows one second apart without a time column, the last one now"
    )
    rows, total = read_rows("river:TrumpApproval")
    first = row_to_event(next(rows), 0, ColumnMapping("river:TrumpApproval", target_column="y"))
    assert total == 1001
    assert SensorEvent.model_validate(first).target == pytest.approx(43.75505)


def replayed(path: Path, *flags: str, now: datetime | None = None) -> list[dict]:
    """The events ``driftline replay PATH FLAGS`` would publish (times as ``replay`` sets them)."""
    args = build_parser().parse_args(["replay", str(path), *flags])
    rows, total = read_rows(str(path))
    mapping = with_times(replay_mapping(args), total, now=now)
    return [row_to_event(row, i, mapping) for i, row in enumerate(rows)]


def test_replayed_rows_without_a_time_column_end_now(tmp_path: Path) -> None:
    path = tmp_path / "meter.csv"
    path.write_text("temperature,power\n" + "".join(f"{20 + i},{i}\n" for i in range(5)))
    times = [datetime.fromisoformat(e["ts"]) for e in replayed(path, "--target-column", "power", now=AT)]
    assert times == [AT - timedelta(seconds=4 - i) for i in range(5)]

    before = datetime.now(UTC)
    times = [datetime.fromisoformat(e["ts"]) for e in replayed(path, "--step", "0.5")]
    after = datetime.now(UTC)
    assert before - timedelta(seconds=1) <= times[-1] <= after, "the last row is now"
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [timedelta(seconds=0.5)] * 4


def test_start_sets_the_first_rows_time(tmp_path: Path) -> None:
    path = tmp_path / "meter.jsonl"
    path.write_text("".join(json.dumps({"temperature": 20 + i}) + "\n" for i in range(3)))
    for start in ("2026-03-01T12:00:00Z", "2026-03-01T12:00:00", str(AT.timestamp())):
        events = replayed(path, "--start", start, now=datetime(2030, 1, 1, tzinfo=UTC))
        assert [e["ts"] for e in events] == [(AT + timedelta(seconds=i)).isoformat() for i in range(3)]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", str(path), "--start", "yesterday"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", str(path), "--step", "0"])


def test_a_time_column_is_kept_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meter.csv"
    path.write_text("t,temperature\n2020-05-01T00:00:00Z,20\n2020-05-01T00:10:00+02:00,21\n1000,22\n")
    events = replayed(path, "--time-column", "t", now=AT)
    assert [e["ts"] for e in events] == [
        "2020-05-01T00:00:00+00:00",
        "2020-05-01T00:10:00+02:00",
        "1970-01-01T00:16:40+00:00",
    ]
    assert [e["readings"] for e in events] == [
        {"temperature": 20.0},
        {"temperature": 21.0},
        {"temperature": 22.0},
    ]
    assert main(["replay", str(path), "--time-column", "t", "--start", "2026-01-01T00:00:00Z"]) == 2
    assert "--start" in capsys.readouterr().err


def test_rows_of_unknown_count_get_the_time_they_are_read() -> None:
    mapping = ColumnMapping("river:Something")
    assert with_times(mapping, None) == mapping
    before = datetime.now(UTC)
    times = [datetime.fromisoformat(row_to_event({"v": i}, i, mapping)["ts"]) for i in range(3)]
    assert before <= times[0] <= times[1] <= times[2] <= datetime.now(UTC)


def test_unknown_sources_say_why(tmp_path: Path) -> None:
    with pytest.raises(DriftlineError, match="no such file"):
        read_rows(str(tmp_path / "missing.csv"))
    with pytest.raises(DriftlineError, match="River has no dataset"):
        read_rows("river:NoSuchThing")
    (tmp_path / "a.parquet").write_bytes(b"")
    with pytest.raises(DriftlineError, match="use .csv"):
        read_rows(str(tmp_path / "a.parquet"))
