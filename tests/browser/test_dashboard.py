"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a running
worker and API: it loads clean, its figures move while events flow, and a drift shows up.

Run by ``make test-browser`` (a machine may lack a browser); CI installs chromium and runs it."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from river.datasets import synth

from driftline.kafka import SensorProducer
from driftline.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = os.environ.get("DRIFTLINE_CHROMIUM", "/usr/bin/chromium")
#: Kept after the run (CI artifacts): what the page looked like once the drift alert was shown.
ARTIFACTS = Path(__file__).parents[2] / "build" / "artifacts"
SEA = {
    "name": "sea",
    "task": "classification",
    "estimator": "logistic_regression",
    "retrain": {"policy": "never"},
}
#: SEA concept 0, then concept 3: the error detector fires a few hundred events after the switch.
BEFORE, AFTER = 3000, 2000
WARM_UP = 300


def sea_events() -> list[dict[str, Any]]:
    rows = itertools.chain(
        itertools.islice(synth.SEA(variant=0, seed=7), BEFORE),
        itertools.islice(synth.SEA(variant=3, seed=8), AFTER),
    )
    start = datetime.now(UTC) - timedelta(seconds=(BEFORE + AFTER) / 100)
    return [
        {
            "event_id": f"sea-{i}",
            "device_id": "sea-1",
            "ts": (start + timedelta(seconds=i / 100)).isoformat(),
            "readings": {f"x{k}": float(v) for k, v in x.items()},
            "target": bool(y),
        }
        for i, (x, y) in enumerate(rows)
    ]


def stream(settings: Settings, events: list[dict[str, Any]], per_tick: int, tick: float) -> None:
    """``events`` at about ``per_tick / tick`` events/s, with one event in fifty not JSON (rejected)."""
    with SensorProducer(settings) as producer:
        for i in range(0, len(events), per_tick):
            for event in events[i : i + per_tick]:
                producer.send(event)
            for _ in range(per_tick // 50):
                producer.send_raw(b"sea-1", b"not json")
            producer.flush()
            time.sleep(tick)


def test_the_dashboard_shows_the_flow_and_a_drift_alert_live(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    start_api: Callable[[Settings], Any],
    wait_for: Callable[..., object],
) -> None:
    settings = make_settings(models=[SEA], features="raw", sensor_catalog="none")
    start_worker(settings)
    api = start_api(settings)
    events = sea_events()
    stream(settings, events[:WARM_UP], per_tick=WARM_UP, tick=0)

    def ready() -> bool:
        return httpx.get(f"{api.url}/ready", timeout=2).json().get("status") == "ready"

    wait_for(ready, 60, "the API to serve the first snapshot")

    # Here, not at the top: `make test` collects this file without playwright installed.
    from playwright.sync_api import sync_playwright

    key = next(iter(settings.api_key_set()))
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on(
            "console",
            lambda m: (
                problems.append(f"console {m.type}: {m.text} {m.location}") if m.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.method} {r.url} {r.failure}"))
        page.on(
            "response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
        )

        page.goto(f"{api.url}/")
        page.wait_for_selector(".model h2")
        assert page.locator("#degraded").is_hidden()

        feeder = threading.Thread(target=stream, args=(settings, events[WARM_UP:], 100, 0.1), daemon=True)
        feeder.start()
        # Live: events/s and the received count move while the events flow.
        rates: set[str] = set()
        received: set[str] = set()
        deadline = time.monotonic() + 30
        while feeder.is_alive() and time.monotonic() < deadline and (len(rates) < 3 or len(received) < 3):
            rates.add(page.inner_text("#rate-in"))
            received.add(page.inner_text("#total-received"))
            page.wait_for_timeout(500)
        rates.discard("–")
        assert len(rates) >= 2, f"events/s never changed while events flowed: {rates}"
        assert len(received) >= 3, f"the received count did not move: {received}"

        # The drift: the error detector's alert appears in the table, from the live stream.
        page.wait_for_selector("table.alerts td.sev-drift", timeout=40_000)
        feeder.join(30)
        page.wait_for_function(
            "document.getElementById('total-rejected').textContent !== '0'", timeout=10_000
        )

        # The device view: latest readings, features and the champion's prediction.
        page.fill("#device-id", "sea-1")
        page.click("#device-form button")
        page.wait_for_selector("#device .device-grid", timeout=10_000)
        device = page.inner_text("#device")
        assert "x0" in device and "sea v" in device, device
        assert page.locator("#device .scroll td", has_text="x2").count() == 1, device

        # Acknowledging with the operator's key (kept in localStorage, sent as X-API-Key).
        page.fill("#api-key", key)
        page.locator("table.alerts button.ack").first.click()
        page.wait_for_selector("table.alerts .acked", timeout=10_000)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(5500)  # one more model refresh: the chart shows the alert's mark
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert page.locator("#degraded").is_hidden(), page.inner_text("#degraded")
        assert page.locator(".model line.alert-mark").count() >= 1
        stored_key = page.evaluate("localStorage.getItem('driftline-api-key')")
        browser.close()
    assert stored_key == key
    assert problems == [], json.dumps(problems, indent=1)
