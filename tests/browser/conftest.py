"""The browser tests' harness: Debian's chromium driven by Playwright, against a worker and an API
started as for the integration tests (tests/integration's own fixtures)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _integration_conftest() -> ModuleType:
    """tests/integration/conftest.py, as the module pytest itself imports it as (so one copy)."""
    name = "tests.integration.conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parents[1] / "integration" / "conftest.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_shared = _integration_conftest()
start_worker = _shared.start_worker
start_api = _shared.start_api
wait_for = _shared.wait_for
pytest_runtest_makereport = _shared.pytest_runtest_makereport  # failed tests show worker logs
