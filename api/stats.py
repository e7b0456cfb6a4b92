"""Counters for people (``GET /stats``) and for Prometheus (``GET /metrics``), read from Redis.

The ingest stage checkpoints its counters per partition with its offsets; the API adds the
partitions up, so the figures are the whole deployment's and survive worker restarts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.asyncio import Redis

from driftline.settings import Settings
from driftline.streams.checkpoint import load_stats
from driftline.streams.ingest import COUNTERS, LABELS_REFUSED, READINGS_REFUSED


async def ingest_totals(redis: Redis, settings: Settings) -> dict[str, Any]:
    """Counters of the current events topic, added up over partitions, with the identity checked."""
    topic_id = await redis.hget(settings.keys.topics(), settings.events_topic)
    per_partition = (
        await load_stats(
            redis,
            settings.keys,
            settings.events_topic,
            topic_id.decode() if isinstance(topic_id, bytes) else topic_id,
        )
        if topic_id
        else {}
    )
    return summarize(per_partition)


def summarize(per_partition: dict[int, Counter[str]]) -> dict[str, Any]:
    """Totals, rejections by reason, and whether the accounting identity holds.

    Examples
    --------
    >>> s = summarize({0: Counter(received=3, accepted=1, rejected=1, late=1, **{"rejected:invalid": 1})})
    >>> s["totals"]["received"], s["rejected_by_reason"], s["balanced"]
    (3, {'invalid': 1}, True)
    """
    totals: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
    for counts in per_partition.values():
        totals.update(counts)
    by_reason = {k.split(":", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("rejected:")}
    plain = {k: totals[k] for k in COUNTERS}
    balanced = plain["received"] == (
        plain["accepted"] + plain["deduplicated"] + plain["rejected"] + plain["late"]
    )
    return {
        "totals": plain,
        # Outside the identity: parts of accepted events left out, each dead-lettered.
        "left_out": {"labels": totals[LABELS_REFUSED], "readings": totals[READINGS_REFUSED]},
        "rejected_by_reason": by_reason,
        "balanced": balanced,
        "partitions": {str(p): dict(c) for p, c in sorted(per_partition.items())},
    }


class _Snapshot:
    """A one-shot Prometheus collector over figures already read."""

    def __init__(
        self,
        ingest: dict[str, Any],
        models: list[dict[str, Any]],
        alerts: dict[tuple[str, str, str, str], int] | None = None,
    ) -> None:
        self.ingest = ingest
        self.models = models
        self.alerts = alerts or {}

    def collect(self) -> Any:
        events = CounterMetricFamily(
            "driftline_ingest_events", "Events by outcome of the ingest stage", labels=["outcome"]
        )
        for outcome in ("received", "accepted", "deduplicated", "rejected", "late"):
            events.add_metric([outcome], self.ingest["totals"][outcome])
        yield events
        readings = CounterMetricFamily(
            "driftline_ingest_readings_fixed", "Readings imputed or clipped by cleaning", labels=["fix"]
        )
        readings.add_metric(["imputed"], self.ingest["totals"]["imputed"])
        readings.add_metric(["clipped"], self.ingest["totals"]["clipped"])
        yield readings
        left_out = CounterMetricFamily(
            "driftline_ingest_left_out",
            "Parts of accepted events left out (each dead-lettered): labels unfit for a model, "
            "readings beyond a device's sensors or the strict catalog",
            labels=["what"],
        )
        for what, count in self.ingest["left_out"].items():
            left_out.add_metric([what], count)
        yield left_out
        rejected = CounterMetricFamily(
            "driftline_ingest_rejected", "Rejected events by reason", labels=["reason"]
        )
        for reason, count in self.ingest["rejected_by_reason"].items():
            rejected.add_metric([reason], count)
        yield rejected
        learned = GaugeMetricFamily(
            "driftline_model_events_learned", "Events the served snapshot has learned", labels=["model"]
        )
        version = GaugeMetricFamily("driftline_model_version", "Version being served", labels=["model"])
        metric = GaugeMetricFamily(
            "driftline_model_metric",
            "Prequential metrics of the served snapshot (cumulative and rolling)",
            labels=["model", "metric", "window"],
        )
        labels = GaugeMetricFamily(
            "driftline_model_labels",
            "Labels of the served snapshot: received, pending, expired, unmatched",
            labels=["model", "state"],
        )
        scores = GaugeMetricFamily(
            "driftline_model_anomaly_score",
            "Distribution of an anomaly model's scores",
            labels=["model", "stat"],
        )
        failed = CounterMetricFamily(
            "driftline_model_records_failed",
            "Records the model failed on in the learn stage (dead-lettered as learn_failed)",
            labels=["model"],
        )
        refused = CounterMetricFamily(
            "driftline_snapshots_refused",
            "Snapshots the API refused (bad signature or unreadable)",
            labels=["model"],
        )
        for model in self.models:
            meta = model["meta"] or {}
            if meta:
                learned.add_metric([model["name"]], meta.get("events_learned", 0))
                failed.add_metric([model["name"]], meta.get("records_failed", 0))
                version.add_metric([model["name"]], model["served_version"])
                report = meta.get("metrics", {})
                for window in ("cumulative", "rolling"):
                    for name, value in report.get(window, {}).items():
                        if value is not None:
                            metric.add_metric([model["name"], name, window], value)
                for state, count in meta.get("labels", {}).items():
                    labels.add_metric([model["name"], state], count)
                for stat, value in report.get("scores", {}).items():
                    if value is not None:
                        scores.add_metric([model["name"], stat], value)
            refused.add_metric([model["name"]], model["refused_snapshots"])
        yield from (learned, failed, version, metric, labels, scores, refused)
        drift = CounterMetricFamily(
            "driftline_drift_alerts",
            "Drift alerts recorded (firing, and resolved)",
            labels=["model", "signal", "severity", "status"],
        )
        for key, count in sorted(self.alerts.items()):
            drift.add_metric([*key], count)
        yield drift


def prometheus_text(
    ingest: dict[str, Any],
    models: list[dict[str, Any]],
    alerts: dict[tuple[str, str, str, str], int] | None = None,
) -> bytes:
    """The exposition; ``alerts`` counts drift alerts by (model, signal, severity, status)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(ingest, models, alerts))
    return generate_latest(registry)
