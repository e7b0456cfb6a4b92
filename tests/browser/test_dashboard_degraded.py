"""The dashboard's "degraded" banner in a real browser (Debian's chromium, driven by Playwright):
shown when the worker stopped publishing and while Redis is gone, hidden when each comes back.

The test starts and stops a Redis of its own (the API's), so the outage is real: the API answers
``/ready`` "degraded" and ``503`` for what it reads from Redis. Run by ``make test-browser``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from driftline.embedded import EmbeddedRedis
from driftline.models.learner import OnlineLearner
from driftline.settings import Settings
from tests.integration.test_api_serving import trained_learner

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = os.environ.get("DRIFTLINE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parents[2] / "build" / "artifacts"
#: How old the worker's last snapshot is made: past the page's STALE_AFTER_S (60 s).
STOPPED_FOR = timedelta(minutes=2)
#: What the page asks while Redis is gone and gets a 503 for: the event counters (every 2 s) and
#: the models (every 5 s, which it reads first: the alerts and histories after it are not asked).
#: /ready answers 200 "degraded"; the alert stream stays open, waiting the outage out.
FAILING_DURING_OUTAGE = {"/stats", "/models"}
#: Longest the page takes to show or hide the banner: its slower poll (5 s) and a margin.
BANNER_WITHIN_MS = 12_000


@contextlib.contextmanager
def publisher_clock_behind(by: timedelta) -> Iterator[None]:
    """The registry's clock (snapshot and audit times) set back by ``by``: what it publishes
    looks as a worker that last published that long ago left it."""

    class Behind(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) - by

    with mock.patch("driftline.models.registry.datetime", Behind):
        yield


def publish(settings: Settings, learner: OnlineLearner) -> int:
    """Publish ``learner`` as its next version (on a thread of its own: Playwright's sync API
    keeps an event loop running on this one)."""

    async def go() -> int:
        redis = Redis.from_url(settings.redis_url)
        try:
            return int((await settings.registry(redis).publish(learner))["version"])
        finally:
            await redis.aclose()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, go()).result()


@dataclass
class Problem:
    """Something the page met that a clean page does not: a console error, a page error, a failed
    request or an HTTP error; with when it came (``phase``) and which path it concerned."""

    phase: str
    kind: str
    path: str
    text: str


def test_the_banner_shows_a_stopped_worker_and_a_redis_outage_and_hides_when_they_recover(
    make_settings: Callable[..., Settings],
    start_api: Callable[[Settings], Any],
    wait_for: Callable[..., object],
    tmp_path: Path,
) -> None:
    redis = EmbeddedRedis(log_dir=tmp_path / "redis").start()
    try:
        settings = make_settings(redis_url=redis.url)
        with publisher_clock_behind(STOPPED_FOR):
            assert publish(settings, trained_learner(settings.default_model, 30)) == 1
        api = start_api(settings)

        def ready() -> str:
            return str(httpx.get(f"{api.url}/ready", timeout=2).json().get("status"))

        wait_for(lambda: ready() == "ready", 20, "the API to serve v1")

        # Here, not at the top: `make test` collects this file without playwright installed.
        from playwright.sync_api import sync_playwright

        phase = "worker stopped"
        problems: list[Problem] = []

        def note(kind: str, url: str, text: str) -> None:
            problems.append(Problem(phase, kind, urlsplit(url).path, text))

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: note("console", m.location.get("url", ""), m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: note("page error", "", str(e)))
            page.on("requestfailed", lambda r: note("request failed", r.url, str(r.failure)))
            page.on("response", lambda r: note(f"HTTP {r.status}", r.url, "") if r.status >= 400 else None)
            banner = page.locator("#degraded")

            def banner_says(text: str) -> None:
                page.wait_for_function(
                    "text => { const b = document.getElementById('degraded');"
                    " return !b.hidden && b.textContent.includes(text); }",
                    arg=text,
                    timeout=BANNER_WITHIN_MS,
                )

            def banner_hidden() -> None:
                page.wait_for_function("document.getElementById('degraded').hidden", timeout=BANNER_WITHIN_MS)

            # 1. The worker's last snapshot is two minutes old: the page says it stopped.
            page.goto(f"{api.url}/")
            page.wait_for_selector(".model h2")
            banner_says("no snapshot published for")
            assert "the worker stopped" in banner.inner_text()
            assert "cannot reach Redis" not in banner.inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-worker-stopped.png"), full_page=True)

            # It publishes again: the banner goes.
            assert publish(settings, trained_learner(settings.default_model, 40)) == 2
            phase = "worker back"
            banner_hidden()

            # 2. Redis goes away: the banner says so, the page keeps its figures.
            phase = "redis down"
            redis.stop()
            outage_started = time.monotonic()
            banner_says("cannot reach Redis")
            shown_after = time.monotonic() - outage_started
            # the event counters, read every 2 s, and the models, every 5 s: the API's message,
            # not its JSON, and nothing of Redis's own error (its address)
            banner_says("stats: HTTP 503, Redis is unavailable; retry shortly")
            banner_says("models: HTTP 503, Redis is unavailable; retry shortly")
            assert "{" not in banner.inner_text() and str(redis.port) not in banner.inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard-degraded.png"), full_page=True)
            assert banner.is_visible()
            assert page.locator(".model h2").count() == 1, "the model's card stays while Redis is away"

            # 3. Redis comes back (empty: it persists nothing): the banner goes.
            redis = EmbeddedRedis(port=redis.port, log_dir=tmp_path / "redis").start()
            back = time.monotonic()
            phase = "redis back"
            banner_hidden()
            hidden_after = time.monotonic() - back
            phase = "recovered"
            page.wait_for_timeout(5500)  # one more round of every poll: nothing fails any more
            assert banner.is_hidden(), banner.inner_text()
            browser.close()
    finally:
        redis.stop()

    print(
        f"banner shown {shown_after:.1f} s after Redis stopped, hidden {hidden_after:.1f} s after its return"
    )
    shown = json.dumps([vars(p) for p in problems], indent=1)
    # While Redis is away, and until the page has seen it back: 503s for what the page reads from
    # Redis, each once as a response and once as Chromium's console line; nothing else, ever.
    expected = [p for p in problems if p.phase in ("redis down", "redis back")]
    assert problems == expected, shown
    assert {(p.kind, p.path) for p in expected} == {
        (kind, path) for path in FAILING_DURING_OUTAGE for kind in ("HTTP 503", "console")
    }, shown
    assert all(
        p.text.startswith("Failed to load resource: the server responded with a status of 503")
        for p in expected
        if p.kind == "console"
    ), shown
