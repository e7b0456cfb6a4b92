"""The browser tests' harness: Debian's chromium driven by Playwright, against a worker and an API
started as for the integration tests (tests/integration's own fixtures)."""

from __future__ import annotations

from tests.integration_fixtures import integration_conftest

_shared = integration_conftest()
start_worker = _shared.start_worker
start_api = _shared.start_api
wait_for = _shared.wait_for
pytest_runtest_makereport = _shared.pytest_runtest_makereport  # failed tests show worker logs
