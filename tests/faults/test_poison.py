"""Fault scenario 5: poison pills at 10% of a stream, of every kind a device or a gateway sends.

Each pill goes to the dead-letter topic with the reason it was refused for (a label a model
cannot learn: the label goes, the event is learned without it; a huge reading of a clipping
sensor is bounded and learned), and the good 90% are learned exactly as the in-process run
learns them. The long variant also races a clean run: the good events' rate must stay within
20% of it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from driftline.kafka import SensorProducer, ensure_topics
from driftline.settings import Settings
from driftline.simulator import SensorSimulator
from driftline.worker import worker_config
from tests.faults.conftest import (
    START,
    assert_same_learning,
    ingest_counters,
    newest_metas,
    read_dlq,
    reference_run,
    wait_until_seen,
)

pytestmark = pytest.mark.integration

DEVICE = "sensor-001"  # the simulator's first device: every message on one partition, in order
MAX_MESSAGE_BYTES = 64 * 1024


def _event(n: int, at: float, **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": f"poison-{n}",
        "device_id": DEVICE,
        "ts": at,
        "readings": {"temperature": 21.0, "humidity": 50.0, "vibration": 0.2, "voltage": 230.0},
        "target": 1.5,
    }
    return event | changes


def _json(n: int, at: float, **changes: Any) -> bytes:
    return json.dumps(_event(n, at, **changes)).encode()


def _nested(n: int, ts: float) -> bytes:
    depth = 5000  # far past any parser's recursion limit, far below the size limit
    return _json(n, ts).replace(b'"temperature": 21.0', b'"temperature": ' + b"[" * depth + b"]" * depth)


#: Each kind of pill: how to make the n-th one at event time ``ts``, and its reason in the DLQ
#: (``None``: not a rejection — the reading is bounded, and the event learned).
POISON: dict[str, tuple[Callable[[int, float], bytes], str | None]] = {
    "not_json": (lambda n, ts: b'{"event_id": "poison-%d", this is not JSON' % n, "not_json"),
    "schema_invalid": (lambda n, ts: _json(n, ts, readings="hot", extra=1), "invalid"),
    "deeply_nested": (_nested, "not_json"),
    "oversized": (
        lambda n, ts: _json(n, ts, metadata={"pad": "x" * 250}) + b" " * MAX_MESSAGE_BYTES,
        "too_large",
    ),
    "huge_reading_refused": (
        lambda n, ts: _json(n, ts, readings={"temperature": 21.0, "vibration": 1e200}),
        "out_of_range",
    ),
    "huge_reading_bounded": (lambda n, ts: _json(n, ts, readings={"temperature": 1e200}), None),
    "nan": (lambda n, ts: _json(n, ts, readings={"temperature": float("nan")}), "invalid"),
    "infinite": (lambda n, ts: _json(n, ts).replace(b"21.0", b"1e400"), "invalid"),
    "huge_label": (lambda n, ts: _json(n, ts, target=1e200), "label_type"),
    "text_label_for_regression": (lambda n, ts: _json(n, ts, target="high"), "label_type"),
    "unknown_sensor_flood": (
        lambda n, ts: _json(n, ts, readings={f"unknown_{k}": 1.0 for k in range(65)}),
        "invalid",
    ),
    "far_future": (lambda n, ts: _json(n, ts, ts=time.time() + 365 * 86400), "future"),
    "far_past": (lambda n, ts: _json(n, ts, ts=ts - 30 * 86400), "late"),
}


def poisoned_stream(
    good: int, seed: int, per_message: int = 9
) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """``good`` simulated events, a pill after every 9 of them (10% of the events are poison,
    every kind in turn), the good ones ``per_message`` to a message (a JSON array; 1: one event,
    a JSON object). Returns the messages and the pills (kind, bytes)."""
    events = list(
        SensorSimulator(devices=1, seed=seed, start=datetime.fromtimestamp(START, UTC)).events(good)
    )
    kinds = list(POISON)
    messages: list[bytes] = []
    pills: list[tuple[str, bytes]] = []
    for start in range(0, good, per_message):
        chunk = events[start : start + per_message]
        messages.append(json.dumps(chunk if per_message > 1 else chunk[0]).encode())
        if (start + len(chunk)) % 9:
            continue
        kind = kinds[len(pills) % len(kinds)]
        now = datetime.fromisoformat(chunk[-1]["ts"]).timestamp()  # the stream's time
        pill = POISON[kind][0](len(pills), now)
        messages.append(pill)
        pills.append((kind, pill))
    return messages, pills


def settings_for(make_settings: Any, tag: str = "", **overrides: Any) -> Settings:
    """The test's settings, with topics and a namespace of their own when ``tag`` is given (one
    test running several pipelines side by side)."""
    settings: Settings = make_settings(max_message_bytes=MAX_MESSAGE_BYTES, **overrides)
    if not tag:
        return settings
    names = ("events_topic", "features_topic", "dlq_topic", "labels_topic", "alerts_topic")
    renamed = {name: f"{getattr(settings, name)}-{tag}" for name in names}
    renamed |= {"model_events_topic": f"{settings.model_events_topic}-{tag}"}
    return settings.model_copy(
        update=renamed
        | {"namespace": f"{settings.namespace}-{tag}", "worker_id": f"{settings.worker_id}-{tag}"}
    )


def send(settings: Settings, messages: list[bytes]) -> None:
    with SensorProducer(settings) as producer:
        for message in messages:
            producer.send_raw(DEVICE.encode(), message)


@pytest.mark.parametrize("good", [2700], ids=["2700-good-300-poison"])
def test_poison_pills_are_dead_lettered_with_reasons_and_the_rest_learned_exactly(
    good: int, make_settings: Any, start_worker: Any
) -> None:
    settings = settings_for(make_settings)
    ensure_topics(settings)
    messages, pills = poisoned_stream(good, seed=8)
    send(settings, messages)
    start_worker(settings)
    reference = reference_run(settings, messages)
    learned_unlabelled = sum(1 for kind, _ in pills if POISON[kind][1] == "label_type")
    bounded = sum(1 for kind, _ in pills if POISON[kind][1] is None)
    total = good + learned_unlabelled + bounded
    found = wait_until_seen(settings, total, timeout=90)

    # the good events (and those whose label alone was refused) learned once, as in one process
    assert_same_learning(found, reference)
    assert found["default"]["events_seen"] == total
    assert found["default"]["events_learned"] == good + bounded
    counters = ingest_counters(settings)
    assert counters["balanced"], counters
    assert counters["totals"]["accepted"] == total
    assert counters["totals"]["clipped"] == bounded
    assert counters["totals"] == {k: reference.stage.totals()[k] for k in counters["totals"]}

    # every pill in the DLQ, as sent (up to the DLQ's size limit), with its own reason
    expected = Counter(reason for _, reason in (POISON[k] for k, _ in pills) if reason)
    dead = read_dlq(settings, sum(expected.values()))
    reasons = Counter(dict(r.headers)["dl-reason"].decode() for r in dead)
    assert reasons == expected == reference.reasons
    by_value = {r.value: dict(r.headers) for r in dead}
    for kind, pill in pills:
        reason = POISON[kind][1]
        if reason is None:
            continue
        headers = by_value.get(pill[: settings.dlq_max_bytes])
        assert headers is not None, f"{kind} pill not in the DLQ: {pill[:80]!r}"
        assert headers["dl-reason"].decode() == reason, kind
        assert headers["dl-message"], f"{kind}: every rejection says why"
        assert headers["dl-source"].decode().startswith(f"{settings.events_topic}:")


def learn_rate(settings: Settings, learned: int, start_worker: Any, wait_for: Any, timeout: float) -> float:
    """Events learned per second by a fresh worker on a stream already in the topic: from the
    moment it is assigned its partitions (its log says so) to the snapshot that holds the
    ``learned``-th event (the process's startup and the group join left out)."""
    worker = start_worker(settings)

    def assigned() -> bool:
        return worker.log_path.exists() and "ingest restored" in worker.log_path.read_text(errors="replace")

    def learned_now() -> int:
        return int(newest_metas(settings).get("default", {}).get("events_learned", 0))

    try:
        wait_for(assigned, timeout=60, what="the worker to be assigned its partitions", every=0.02)
        started = time.monotonic()
        wait_for(lambda: learned_now() >= learned, timeout=timeout, what=f"{learned} learned", every=0.05)
        return learned / (time.monotonic() - started)
    finally:
        worker.stop()  # an idle worker polls too: none may run beside the next measurement


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_poison_at_10_percent_keeps_the_good_events_within_20_percent_of_a_clean_runs_rate(
    make_settings: Any, start_worker: Any, wait_for: Any
) -> None:
    good, runs = int(os.environ.get("FAULTS_GOOD", 45_000)), int(os.environ.get("FAULTS_RUNS", 3))
    messages, pills = poisoned_stream(good, seed=9)
    poison = {pill for _, pill in pills}
    clean = [m for m in messages if m not in poison]
    bounded = sum(1 for kind, _ in pills if POISON[kind][1] is None)  # learned, clipped
    rates: dict[str, list[float]] = {"clean": [], "poisoned": []}
    for run in range(runs):  # alternated, so a slower moment of the machine hits both alike
        for name, stream, learned in (("clean", clean, good), ("poisoned", messages, good + bounded)):
            settings = settings_for(make_settings, f"{name}{run}")
            ensure_topics(settings)
            send(settings, stream)
            rates[name].append(learn_rate(settings, learned, start_worker, wait_for, timeout=600))
    clean_rate, poisoned_rate = (statistics.median(rates[k]) for k in ("clean", "poisoned"))
    print(f"events learned/s: clean {rates['clean']}, poisoned {rates['poisoned']}")
    assert poisoned_rate >= 0.8 * clean_rate, rates


def test_an_event_from_decades_ago_is_dead_lettered_even_from_a_new_device() -> None:
    """The far-past pill of the stream above is refused as late because its device has a
    watermark; from a device never seen before, the earliest event time bounds it."""
    stage = worker_config(Settings(_env_file=None, env="test")).ingest_stage()
    outcomes = stage.handle(_json(0, 0.0), 0, 0, int(time.time() * 1000))
    assert [type(o).__name__ for o in outcomes] == ["Rejection"], outcomes
