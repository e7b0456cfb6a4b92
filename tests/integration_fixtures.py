"""tests/integration's child-process fixtures (``start_worker``, ``start_api``, ``wait_for``...), for
the suites in other folders (tests/faults, tests/browser), whose conftests re-export them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def integration_conftest() -> ModuleType:
    """tests/integration/conftest.py, as the module pytest itself imports it as (so one copy)."""
    name = "tests.integration.conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parent / "integration" / "conftest.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
