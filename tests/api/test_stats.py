"""The Prometheus exposition: what an operator's alert rules can count on."""

from __future__ import annotations

from collections import Counter

from driftline.api.stats import prometheus_text, summarize


def test_the_exposition_counts_what_was_left_out_and_what_a_model_failed_on() -> None:
    ingest = summarize({0: Counter(received=5, accepted=5, labels_refused=2, readings_refused=7)})
    models = [
        {
            "name": "m",
            "served_version": 3,
            "refused_snapshots": 0,
            "meta": {"events_learned": 4, "records_failed": 1},
        }
    ]
    text = prometheus_text(ingest, models).decode()
    assert 'driftline_ingest_left_out_total{what="labels"} 2.0' in text
    assert 'driftline_ingest_left_out_total{what="readings"} 7.0' in text
    assert 'driftline_model_records_failed_total{model="m"} 1.0' in text
