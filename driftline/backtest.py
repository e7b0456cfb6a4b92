"""``driftline backtest``: the stream's own clean → featurize → learn → drift → retrain, offline.

A file (or ``river:<Dataset>``) is read with the same column mapping as ``driftline replay`` and
run through the very code the worker runs, in-process, without a broker or Redis:

- each event is serialized as :class:`~driftline.kafka.SensorProducer` publishes it and handed to
  :class:`~driftline.streams.ingest.IngestStage` (validate, dedupe, time checks, catalog,
  imputation, features), built from the settings as the worker builds it
  (:func:`driftline.worker.worker_config`);
- each feature record crosses the features hop's encoding (DLF2) and reaches
  :meth:`~driftline.models.learner.OnlineLearner.learn_message`, which predicts, scores, learns,
  watches for drift and races challengers.

One source partition is emulated: event ``i`` of the source is at ``events/0``, offset ``i``,
index 0 (one event per message), and records reach each learner in that order. So a drift alert
or a promotion gets the id and position it gets live when the file is replayed into a fresh
deployment whose events all go to one partition (one device, or ``--device``). Events the stream
would dead-letter are skipped and counted the same way (``rejected:<reason>``, ``late``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from driftline.core import records
from driftline.core.errors import DriftlineError
from driftline.core.records import FeatureRecord
from driftline.models.learner import OnlineLearner
from driftline.models.specs import ModelSpec
from driftline.replay import ColumnMapping, read_rows, row_to_event, with_times
from driftline.settings import Settings
from driftline.streams.cleaning import Rejection
from driftline.worker import worker_config

#: The one source partition a backtest emulates, and the features partition its learners read.
SOURCE_PARTITION = 0
FEATURES_PARTITION = 0
#: Rejected events kept with their reason in a result (all of them are counted).
MAX_REJECTIONS_KEPT = 100


@dataclass
class ModelResult:
    """What one model did over the whole source."""

    name: str
    task: str
    estimator: str
    #: The headline metric's name (MAE, Accuracy, ...).
    metric: str
    spec: dict[str, Any]
    events_seen: int
    events_learned: int
    labels: dict[str, int]
    #: :meth:`~driftline.models.evaluation.Evaluation.report`: every metric, cumulative and rolling.
    report: dict[str, Any]
    #: Each drift alert once, in its final state (a resolution replaces the firing record, as in
    #: Redis), in the order they were raised.
    alerts: list[dict[str, Any]]
    #: Spawns, promotions and retirements, in order (:class:`~driftline.models.retrain.ModelEvent`).
    model_events: list[dict[str, Any]]
    #: The headline metric over the source: ``{"offset", "events_learned", "cumulative", "rolling"}``.
    series: list[dict[str, Any]]

    @property
    def cumulative(self) -> float | None:
        value: float | None = self.report["cumulative"].get(self.metric)
        return value

    @property
    def rolling(self) -> float | None:
        value: float | None = self.report["rolling"].get(self.metric)
        return value

    @property
    def drifts(self) -> list[dict[str, Any]]:
        """Alerts on the model's error (or an anomaly model's score), not feature warnings."""
        return [a for a in self.alerts if a["severity"] == "drift"]

    @property
    def promotions(self) -> list[dict[str, Any]]:
        return [e for e in self.model_events if e["action"] == "promote"]


@dataclass
class BacktestResult:
    """A backtest's outcome: the ingest counters and each model's result."""

    source: str
    #: The settings' ingest side: features preset (and its hash), catalog, target.
    setup: dict[str, Any]
    #: The ingest stage's counters: received == accepted + deduplicated + rejected + late, plus
    #: ``imputed``, ``clipped`` and ``rejected:<reason>``.
    ingest: dict[str, int]
    #: The first rejected or late events: offset, reason, message.
    rejections: list[dict[str, Any]]
    models: list[ModelResult]
    #: Wall-clock seconds the run took (not part of the result's equality).
    seconds: float = field(default=0.0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "setup": self.setup,
            "ingest": self.ingest,
            "rejections": self.rejections,
            "seconds": round(self.seconds, 3),
            "models": [
                {
                    "name": m.name,
                    "task": m.task,
                    "estimator": m.estimator,
                    "metric": {"name": m.metric, "value": m.cumulative, "rolling": m.rolling},
                    "spec": m.spec,
                    "events_seen": m.events_seen,
                    "events_learned": m.events_learned,
                    "labels": m.labels,
                    "metrics": m.report,
                    "alerts": m.alerts,
                    "model_events": m.model_events,
                    "series": m.series,
                }
                for m in self.models
            ],
        }


# --- choosing the models ---------------------------------------------------------------------
def choose_specs(
    settings: Settings, names: Sequence[str] = (), inline: Sequence[str] = ()
) -> list[ModelSpec]:
    """The specs a backtest runs: the configured models named in ``names`` and the specs given
    as JSON in ``inline`` (an object, or a list of them); neither: every configured model.

    A name not configured, a spec that is not valid, or a name given twice raises
    :class:`DriftlineError` with a one-line reason.

    >>> settings = Settings(env="dev", _env_file=None)
    >>> [s.name for s in choose_specs(settings, inline=['{"name": "a", "estimator": "arf_regressor"}'])]
    ['a']
    >>> choose_specs(settings, names=["nope"])
    Traceback (most recent call last):
    ...
    driftline.core.errors.DriftlineError: no configured model 'nope' (DRIFTLINE_MODELS has: default)
    """
    configured = {spec.name: spec for spec in settings.model_specs()}
    chosen: list[ModelSpec] = []
    for name in names:
        if name not in configured:
            raise DriftlineError(
                f"no configured model {name!r} (DRIFTLINE_MODELS has: {', '.join(configured)})"
            )
        chosen.append(configured[name])
    for text in inline:
        chosen += parse_specs(text)
    if not names and not inline:
        chosen = list(configured.values())
    seen = [spec.name for spec in chosen]
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise DriftlineError(
            f"model {', '.join(map(repr, twice))} given twice: each model needs its own name"
        )
    return chosen


def parse_specs(text: str) -> list[ModelSpec]:
    """A ``--spec``: one model spec as JSON, or a JSON list of them.

    >>> parse_specs('{"name": "m", "estimator": "nope"}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftline.core.errors.DriftlineError: --spec: model 'm': unknown estimator 'nope': use one of ...
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DriftlineError(f"--spec is not valid JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    try:
        return [ModelSpec.model_validate(item) for item in items]
    except ValidationError as exc:
        reasons = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            reasons.append(f"{where}: {message}" if where else message)
        raise DriftlineError(f"--spec: {'; '.join(reasons)}") from None


# --- the source ------------------------------------------------------------------------------
def source_events(
    source: str, mapping: ColumnMapping, limit: int | None = None
) -> tuple[Iterator[dict[str, Any]], int | None]:
    """The events ``driftline replay SOURCE`` would publish with ``mapping``, and how many.

    The same rows, the same event ids and the same times (without a time column or a start:
    ``step`` seconds apart, the last one now, as :func:`driftline.replay.with_times` decides).
    """
    rows, total = read_rows(source)
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    mapping = with_times(mapping, total)

    def events() -> Iterator[dict[str, Any]]:
        for index, row in enumerate(itertools.islice(rows, limit)):
            try:
                yield row_to_event(row, index, mapping)
            except KeyError as exc:  # a mapping that does not fit the file: say where
                raise DriftlineError(f"{source}: row {index} has no column {exc.args[0]!r}") from None
            except ValueError as exc:
                raise DriftlineError(f"{source}: row {index}: {exc}") from None

    return events(), total


# --- the run ---------------------------------------------------------------------------------
def run_backtest(
    events: Iterable[dict[str, Any]],
    specs: Sequence[ModelSpec],
    settings: Settings,
    *,
    source: str = "",
    progress: Callable[[int], None] | None = None,
    every: int = 100,
) -> BacktestResult:
    """Run ``events`` (sensor events as dicts, in order) through the stream's code for ``specs``.

    The ingest stage is the worker's for these settings, fed the configured models plus
    ``specs`` (a spec replaces a configured model of its name): the readings that are some
    model's label are left out of every model's features, as live. Only ``specs`` learn.
    ``progress`` is called with the number of events handled so far; the headline metric is
    sampled every ``every`` events (and after the last) for :attr:`ModelResult.series`.

    >>> events = [{"event_id": f"e{i}", "device_id": "d", "ts": 1.7e9 + i, "readings": {"x": float(i)},
    ...            "target": 2.0 * i} for i in range(3)]
    >>> spec = ModelSpec(name="m", retrain={"policy": "never"})
    >>> settings = Settings(env="dev", features="raw", sensor_catalog="none", _env_file=None)
    >>> result = run_backtest(events, [spec], settings)
    >>> result.ingest["accepted"], result.models[0].events_learned, result.models[0].metric
    (3, 3, 'MAE')
    """
    if not specs:
        raise DriftlineError("no model to backtest")
    every = max(1, every)
    config = worker_config(settings)
    fed = {spec.name: spec for spec in config.specs} | {spec.name: spec for spec in specs}
    stage = config.ingest_stage(tuple(fed.values()))
    learners = {spec.name: OnlineLearner.create(spec) for spec in specs}
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in learners}
    rejections: list[dict[str, Any]] = []
    started = time.monotonic()
    offset = -1
    for offset, event in enumerate(events):
        # The bytes SensorProducer.send publishes; the broker's timestamp is "now" (future check).
        raw = json.dumps(event).encode()
        for outcome in stage.handle(raw, SOURCE_PARTITION, offset, timestamp_ms=None):
            if isinstance(outcome, FeatureRecord):
                learner = learners.get(outcome.model)
                if learner is not None:
                    # Through the features hop's encoding: the records exactly as the learn stage reads them.
                    message = records.decode(records.encode(outcome.model, [outcome]))
                    try:
                        learner.learn_message(FEATURES_PARTITION, offset, message)
                    except Exception as exc:  # the live learn stage would stop on it too
                        raise DriftlineError(
                            f"model {outcome.model!r} failed on event {offset} ({outcome.event_id}): "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
            elif isinstance(outcome, Rejection) and len(rejections) < MAX_REJECTIONS_KEPT:
                rejections.append(
                    {
                        "offset": offset,
                        "event_id": event.get("event_id"),
                        "reason": outcome.reason,
                        "message": outcome.message,
                    }
                )
        if (offset + 1) % every == 0:
            _sample(learners, series, offset)
        if progress is not None:
            progress(offset + 1)
    if offset >= 0 and (offset + 1) % every:
        _sample(learners, series, offset)
    return BacktestResult(
        source=source,
        setup={
            "target": config.target,
            "features": settings.features.describe(),
            "feature_schema": settings.features.schema_hash(),
            "sensor_catalog": sorted(config.catalog),
            "source": f"events/{SOURCE_PARTITION}, one event per message",
        },
        ingest={name: int(count) for name, count in stage.totals().items()},
        rejections=rejections,
        models=[_model_result(learner, series[name]) for name, learner in learners.items()],
        seconds=time.monotonic() - started,
    )


def _headline(learner: OnlineLearner) -> tuple[float | None, float | None]:
    report = learner.evaluation.report()
    name = learner.spec.metric_name
    return report["cumulative"][name], report["rolling"][name]


def _sample(learners: dict[str, OnlineLearner], series: dict[str, list[dict[str, Any]]], offset: int) -> None:
    for name, learner in learners.items():
        cumulative, rolling = _headline(learner)
        series[name].append(
            {
                "offset": offset,
                "events_learned": learner.events_learned,
                "cumulative": cumulative,
                "rolling": rolling,
            }
        )


def _model_result(learner: OnlineLearner, series: list[dict[str, Any]]) -> ModelResult:
    alerts: dict[str, dict[str, Any]] = {}
    for alert in learner.drift.take_outbox():
        alerts[alert.id] = alert.to_json()  # a resolution replaces its firing record, as in Redis
    return ModelResult(
        name=learner.name,
        task=learner.spec.task,
        estimator=learner.spec.estimator,
        metric=learner.spec.metric_name,
        spec=learner.spec.summary(),
        events_seen=learner.events_seen,
        events_learned=learner.events_learned,
        labels={  # as in a snapshot's summary
            "received": learner.labels_received,
            "pending": len(learner.pending),
            "expired": learner.labels_expired,
            "unmatched": learner.labels_unmatched,
        },
        report=learner.evaluation.report(),
        alerts=list(alerts.values()),
        model_events=[event.to_json() for event in learner.take_model_events()],
        series=series,
    )


# --- output ----------------------------------------------------------------------------------
def _value(value: float | None) -> str:
    return "no data yet" if value is None else f"{value:.4f}"


def format_report(result: BacktestResult, most: int = 20) -> str:
    """The table (a row per model), the ingest counts, then each model's drifts and model events."""
    ingest = result.ingest
    reasons = ", ".join(
        f"{name.removeprefix('rejected:')} {count}"
        for name, count in sorted(ingest.items())
        if name.startswith("rejected:") and count
    )
    lines = [
        f"{result.source or 'backtest'}: {ingest['received']} events, {ingest['accepted']} accepted, "
        f"{ingest['rejected']} rejected{f' ({reasons})' if reasons else ''}, {ingest['late']} late, "
        f"{ingest['deduplicated']} duplicates; {result.seconds:.1f} s",
        "",
    ]
    header = ["model", "estimator", "metric", "cumulative", "rolling", "learned", "drifts", "promotions"]
    rows = [
        [
            m.name,
            m.estimator,
            m.metric,
            _value(m.cumulative),
            _value(m.rolling),
            str(m.events_learned),
            str(len(m.drifts)),
            str(len(m.promotions)),
        ]
        for m in result.models
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for m in result.models:
        lines += ["", f"{m.name}: drift alerts"]
        lines += _listed(
            [
                f"  event {a['offset']}: {a['signal']} ({a['detector']}), position {a['position']}"
                f"{'' if a['change_point'] is None else ', change point ' + str(a['change_point'])}, "
                f"{a['status']}  {a['id']}"
                for a in m.alerts
            ],
            most,
        )
        lines += [f"{m.name}: spawns, promotions, retirements"]
        lines += _listed([f"  event {e['offset']}: {e['action']}: {e['why']}" for e in m.model_events], most)
    return "\n".join(lines)


def _listed(lines: list[str], most: int) -> list[str]:
    if not lines:
        return ["  none"]
    more = len(lines) - most
    return lines[:most] + ([f"  ... and {more} more (see the JSON)"] if more > 0 else [])


def write_outputs(result: BacktestResult, out: Path, stamp: str | None = None) -> tuple[Path, Path]:
    """Write ``out/backtest-<stamp>.json`` and the plot ``.png`` next to it."""
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"backtest-{stamp}.json"
    json_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    png_path = out / f"backtest-{stamp}.png"
    plot(result, png_path)
    return json_path, png_path


def plot(result: BacktestResult, path: Path) -> None:
    """Each model's headline metric (cumulative and rolling) over the source's events, with its
    drift alerts and promotions marked."""
    import matplotlib  # imported here: only a backtest draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(result.models)
    figure, axes = plt.subplots(count, 1, figsize=(11, 2.8 * count), sharex=True, squeeze=False)
    for ax, m in zip(axes[:, 0], result.models, strict=True):
        at = [p["offset"] for p in m.series]
        ax.plot(at, [p["cumulative"] for p in m.series], color="tab:blue", linewidth=1.2, label="cumulative")
        ax.plot(
            at,
            [p["rolling"] for p in m.series],
            color="tab:cyan",
            linewidth=1,
            label=f"rolling ({m.spec.get('rolling_window')} events)",
        )
        for k, a in enumerate(m.drifts):
            ax.axvline(
                a["offset"], color="tab:red", linestyle="--", linewidth=1, label="drift" if k == 0 else None
            )
        for k, a in enumerate(a for a in m.alerts if a["severity"] == "warning"):
            ax.axvline(
                a["offset"],
                color="tab:orange",
                linestyle=":",
                linewidth=0.8,
                label="feature warning" if k == 0 else None,
            )
        for k, e in enumerate(m.promotions):
            ax.axvline(e["offset"], color="tab:green", linewidth=1.5, label="promotion" if k == 0 else None)
        ax.set_title(f"{m.name}: {m.estimator} ({m.task})", fontsize=10, loc="left")
        ax.set_ylabel(m.metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel(f"event ({result.source or 'source'})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
