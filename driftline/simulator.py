"""Simulated sensors: realistic multi-sensor readings from N devices, with an optional concept drift.

Each device has its own baseline; temperature follows a daily cycle, humidity moves against it,
vibration is noisy and positive, voltage hovers around the mains value. The target, ``power``
(kW), depends on the readings; after ``drift_after`` events that dependence changes — the kind of
change an online model must notice and adapt to.

Event ids carry a run id (``sensor-001-<run>-00000001``), random unless given: the readings of a
seed are the same in every run, but the ids of two runs never collide, so a second run against
a Redis that remembers the first run's ids is learned, not counted as duplicates.
"""

from __future__ import annotations

import math
import random
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from driftline.settings import Settings

SENSORS = ("temperature", "humidity", "vibration", "voltage")


def power_before_drift(r: dict[str, float]) -> float:
    return 0.8 + 0.05 * r["temperature"] + 1.5 * r["vibration"] - 0.01 * r["humidity"]


def power_after_drift(r: dict[str, float]) -> float:
    # e.g. a cooling unit swapped: temperature now lowers the draw, vibration matters far more
    return 3.0 - 0.04 * r["temperature"] + 4.0 * r["vibration"] + 0.02 * r["humidity"]


def new_run_id() -> str:
    """A short id for one simulator run: 8 random hex digits (independent of the seed).

    >>> len(new_run_id()), new_run_id() != new_run_id()
    (8, True)
    """
    return secrets.token_hex(4)


class SensorSimulator:
    """Deterministic readings from ``devices`` devices, taking turns.

    Examples
    --------
    >>> sim = SensorSimulator(devices=2, seed=1, start=datetime(2026, 1, 1, tzinfo=UTC), run_id="r1")
    >>> [(e["device_id"], e["event_id"]) for e in sim.events(3)]  # doctest: +NORMALIZE_WHITESPACE
    [('sensor-001', 'sensor-001-r1-00000001'), ('sensor-002', 'sensor-002-r1-00000001'),
     ('sensor-001', 'sensor-001-r1-00000002')]
    >>> sorted(sim.next_event()["readings"])
    ['humidity', 'temperature', 'vibration', 'voltage']
    """

    def __init__(
        self,
        devices: int,
        seed: int = 7,
        drift_after: int | None = None,
        missing_rate: float = 0.02,
        start: datetime | None = None,
        step_seconds: float = 1.0,
        run_id: str | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        #: Part of every event id, so that no two runs' ids collide; it draws nothing from ``rng``.
        self.run_id = run_id if run_id is not None else new_run_id()
        self.device_ids = [f"sensor-{i + 1:03d}" for i in range(devices)]
        self.baselines = {d: self.rng.uniform(-3, 3) for d in self.device_ids}
        self.drift_after = drift_after
        self.missing_rate = missing_rate
        # Default: a day ago, so that generating events faster than real time (tests, backfills)
        # never produces event times in the future, which the stream refuses.
        self.start = start or datetime.now(UTC) - timedelta(days=1)
        self.step = timedelta(seconds=step_seconds)
        self.sent = 0
        self.sequence = dict.fromkeys(self.device_ids, 0)

    @property
    def drifted(self) -> bool:
        return self.drift_after is not None and self.sent >= self.drift_after

    def next_event(self) -> dict[str, Any]:
        rng = self.rng
        device = self.device_ids[self.sent % len(self.device_ids)]
        ts = self.start + self.step * self.sent
        hour = ts.hour + ts.minute / 60
        daily = math.sin(2 * math.pi * (hour - 9) / 24)
        temperature = 21 + self.baselines[device] + 6 * daily + rng.gauss(0, 0.5)
        values = {
            "temperature": temperature,
            "humidity": min(100.0, max(0.0, 55 - 1.5 * (temperature - 21) + rng.gauss(0, 2))),
            "vibration": abs(rng.gauss(0.3 + 0.02 * self.baselines[device], 0.12)),
            "voltage": 230 + rng.gauss(0, 1.5),
        }
        relation = power_after_drift if self.drifted else power_before_drift
        power = relation(values) + rng.gauss(0, 0.05)
        readings: dict[str, float | None] = {
            name: (None if rng.random() < self.missing_rate else round(value, 4))
            for name, value in values.items()
        }
        self.sequence[device] += 1
        self.sent += 1
        return {
            "event_id": f"{device}-{self.run_id}-{self.sequence[device]:08d}",
            "device_id": device,
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "readings": readings,
            "target": round(power, 4),
        }

    def events(self, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            yield self.next_event()


def run_simulator(
    settings: Settings,
    count: int | None = None,
    rate: float | None = None,
    progress: bool = True,
    run_id: str | None = None,
) -> int:
    """Publish simulated events at ``rate`` per second (``count`` of them, or until interrupted).

    ``run_id`` goes into every event id (default: a new random one, so runs never collide).
    """
    from driftline.kafka import SensorProducer

    rate = rate or settings.sim_rate
    # Live: event time advances with the wall clock, one event every 1/rate seconds.
    sim = SensorSimulator(
        settings.sim_devices,
        seed=settings.sim_seed,
        drift_after=settings.sim_drift_after,
        start=datetime.now(UTC),
        step_seconds=1 / rate,
        run_id=run_id,
    )
    if progress:
        print(
            f"simulate: run {sim.run_id}: event ids {sim.device_ids[0]}-{sim.run_id}-00000001, ...",
            file=sys.stderr,
            flush=True,
        )
    producer = SensorProducer(settings)
    started = time.monotonic()
    next_report = started + 5
    try:
        while count is None or sim.sent < count:
            producer.send(sim.next_event())
            # pace against the start time, so the rate holds however long a send takes
            delay = started + sim.sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if progress and time.monotonic() >= next_report:
                next_report += 5
                elapsed = time.monotonic() - started
                print(
                    f"simulate: {sim.sent} events sent, {sim.sent / elapsed:.1f}/s, "
                    f"drift: {'yes' if sim.drifted else 'no'}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        producer.flush()
        producer.close()
    return sim.sent
