"""``driftline replay``: publish a CSV / JSON-lines file, or a dataset shipped with River, as events.

How users backfill history and how benchmarks feed real data. Columns map to the event contract:
a device column (or one constant device), a time column (ISO or epoch seconds), a target column;
every other numeric column becomes a reading. Event ids are derived from the source and row
number, so replaying a file twice is deduplicated.

Times: a time column's values are kept as they are. Without one, rows get times ``step`` seconds
apart (one by default) *ending now*: the last row gets the moment the replay starts, so no row is
refused as from the future (more than ``DRIFTLINE_MAX_FUTURE_SECONDS`` ahead of its broker
timestamp) and, the rows being in order, none is late. ``start`` sets the first row's time
instead. When the number of rows is not known in advance, each row gets the time it is read.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from driftline.core.errors import DriftlineError
from driftline.settings import Settings


@dataclass(frozen=True)
class ColumnMapping:
    """Which source columns make up an event."""

    source: str
    device_column: str | None = None
    device: str = "replay"
    time_column: str | None = None
    target_column: str | None = None
    id_column: str | None = None
    #: Time of row 0 when there is no time column; None: see :func:`with_times`.
    start: datetime | None = None
    #: Seconds between consecutive rows when there is no time column.
    step: float = 1.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str) and value.strip():
        try:
            number = float(value)
        except ValueError:
            return None
        return number if number == number and abs(number) != float("inf") else None
    return None


def parse_time(value: Any) -> datetime:
    """A time column's value (or ``--start``) as an aware datetime: ISO-8601 or epoch seconds;
    a time without a zone is UTC.

    >>> parse_time("2026-03-01T12:00:00Z"), parse_time("0").isoformat()
    (datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc), '1970-01-01T00:00:00+00:00')
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    number = _number(value)
    if number is not None:
        return datetime.fromtimestamp(number, tz=UTC)
    text = str(value).strip()
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _time(value: Any) -> str:
    return parse_time(value).isoformat()


def with_times(mapping: ColumnMapping, total: int | None, now: datetime | None = None) -> ColumnMapping:
    """The mapping a replay of ``total`` rows uses: without a time column or a start, rows end now.

    The first row gets ``now - step * (total - 1)`` (``now`` to the whole second below), so the
    last one gets ``now``. Kept as it is when the source has its own times, a start was given, or
    the count is unknown (then each row gets the time it is read: never in the future either).

    >>> at = datetime(2026, 5, 1, 12, 0, 0, 700_000, tzinfo=UTC)
    >>> with_times(ColumnMapping("x.csv"), 3, now=at).start.isoformat()
    '2026-05-01T11:59:58+00:00'
    """
    if mapping.time_column or mapping.start is not None or total is None:
        return mapping
    end = (now or datetime.now(UTC)).replace(microsecond=0)
    return replace(mapping, start=end - timedelta(seconds=mapping.step * max(total - 1, 0)))


def _row_time(index: int, mapping: ColumnMapping) -> str:
    if mapping.start is None:
        return datetime.now(UTC).isoformat()
    return (mapping.start + timedelta(seconds=mapping.step * index)).isoformat()


def row_to_event(row: dict[str, Any], index: int, mapping: ColumnMapping) -> dict[str, Any]:
    """One source row as a sensor event.

    Examples
    --------
    >>> m = ColumnMapping("plant.csv", device_column="site", time_column="t", target_column="kw")
    >>> row_to_event({"site": "a", "t": "0", "kw": "2.5", "temp": "21", "note": "ok"}, 7, m)
    ... # doctest: +NORMALIZE_WHITESPACE
    {'event_id': 'plant-00000007', 'device_id': 'a', 'ts': '1970-01-01T00:00:00+00:00',
     'readings': {'temp': 21.0}, 'target': 2.5}
    """
    skip = {mapping.device_column, mapping.time_column, mapping.target_column, mapping.id_column}
    readings = {
        str(k): _number(v)
        for k, v in row.items()
        if k not in skip and (_number(v) is not None or v in (None, ""))
    }
    event: dict[str, Any] = {
        "event_id": (
            str(row[mapping.id_column])
            if mapping.id_column
            else f"{Path(mapping.source).stem.replace(':', '-')}-{index:08d}"
        ),
        "device_id": str(row[mapping.device_column]) if mapping.device_column else mapping.device,
        "ts": _time(row[mapping.time_column]) if mapping.time_column else _row_time(index, mapping),
        "readings": readings,
    }
    if mapping.target_column:
        event["target"] = _label(row.get(mapping.target_column))
    return event


def _label(value: Any) -> float | bool | str | None:
    """A target as the event contract takes it: a class stays a class, a number a number."""
    if isinstance(value, bool):
        return value
    number = _number(value)
    if number is not None:
        return number
    return str(value) if value not in (None, "") else None


def read_rows(source: str) -> tuple[Iterator[dict[str, Any]], int | None]:
    """Rows of a CSV/JSON-lines file or of ``river:<Dataset>``, and their count when known."""
    if source.startswith("river:"):
        from river import datasets

        name = source.split(":", 1)[1]
        dataset_class = getattr(datasets, name, None)
        if dataset_class is None:
            raise DriftlineError(f"River has no dataset {name!r}")
        dataset = dataset_class()
        rows = ({**x, "y": y} for x, y in dataset)
        return rows, getattr(dataset, "n_samples", None)
    path = Path(source)
    if not path.exists():
        raise DriftlineError(f"no such file: {source}")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            total = max(sum(1 for _ in f) - 1, 0)
        return _csv_rows(path), total
    if path.suffix in {".jsonl", ".json", ".ndjson"}:
        with path.open() as f:
            total = sum(1 for line in f if line.strip())
        return (json.loads(line) for line in path.open() if line.strip()), total
    raise DriftlineError(f"cannot replay {source}: use .csv, .jsonl or river:<Dataset>")


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as f:
        yield from csv.DictReader(f)


class Progress:
    """A one-line progress bar on stderr, redrawn at most five times a second."""

    def __init__(self, total: int | None, label: str = "replay") -> None:
        self.total, self.label = total, label
        self.started = time.monotonic()
        self.drawn = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn < 0.2:
            return
        self.drawn = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            width = 30
            filled = int(width * done / self.total)
            eta = (self.total - done) / rate if rate else 0
            line = (
                f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{rate:,.0f}/s eta {eta:,.0f}s"
            )
        else:
            line = f"{self.label} {done} rows {rate:,.0f}/s"
        print(f"\r{line}", end="\n" if force else "", file=sys.stderr, flush=True)


def replay(
    settings: Settings,
    source: str,
    mapping: ColumnMapping,
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    batch: int = 1,
) -> int:
    """Publish ``source`` in row order; returns how many events were sent.

    ``batch`` > 1 sends consecutive rows of one device as one message (a JSON array), as a
    gateway would: far cheaper for the broker and the stream, and the order is kept.
    Without a time column, rows end now unless ``mapping.start`` says otherwise (:func:`with_times`).
    """
    from driftline.kafka import SensorProducer

    rows, total = read_rows(source)
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    mapping = with_times(mapping, total)
    _warn_if_ahead(mapping, total, settings.max_future_seconds)
    bar = Progress(total) if progress else None
    sent = 0
    started = time.monotonic()
    with SensorProducer(settings) as producer:
        pending: list[dict[str, Any]] = []
        for index, row in enumerate(_limited(rows, limit)):
            event = row_to_event(row, index, mapping)
            if batch <= 1:
                producer.send(event)
            else:
                if pending and (len(pending) >= batch or pending[0]["device_id"] != event["device_id"]):
                    producer.send_batch(pending)
                    pending = []
                pending.append(event)
            sent += 1
            if rate:
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if bar:
                bar.update(sent)
        if pending:
            producer.send_batch(pending)
    if bar:
        bar.update(sent, force=True)
    return sent


def _warn_if_ahead(mapping: ColumnMapping, total: int | None, max_future_seconds: float) -> None:
    """Say so when a given start puts rows further ahead of now than the stream accepts."""
    if mapping.time_column or mapping.start is None or not total:
        return
    last = mapping.start + timedelta(seconds=mapping.step * (total - 1))
    limit = datetime.now(UTC) + timedelta(seconds=max_future_seconds)
    if last > limit:
        print(
            f"replay: warning: the last row's time ({last.isoformat()}) is more than "
            f"DRIFTLINE_MAX_FUTURE_SECONDS ({max_future_seconds:g} s) ahead of now; rows published "
            "that far ahead of their broker timestamp are refused as 'future'",
            file=sys.stderr,
            flush=True,
        )


def _limited(rows: Iterable[dict[str, Any]], limit: int | None) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            return
        yield row
