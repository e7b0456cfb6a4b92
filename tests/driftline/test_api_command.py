"""``driftline api`` runs DRIFTLINE_API_WORKERS server processes, each built with the settings
the command was given (nothing is started: ``uvicorn.run`` is replaced)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from driftline.cli import main
from driftline.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Only the test's ``DRIFTLINE_*`` variables, restored after (the command exports its
    settings for the worker processes), no .env file, fresh process settings."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith("DRIFTLINE_")}
    monkeypatch.setattr(os, "environ", kept)
    monkeypatch.setenv("DRIFTLINE_ENV", "dev")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def test_one_worker_by_default_serves_the_app_built_from_the_commands_settings(
    served: list[tuple[Any, dict[str, Any]]],
) -> None:
    assert Settings(_env_file=None).api_workers == 1
    assert main(["api", "--port", "8125"]) == 0
    ((app, kwargs),) = served
    assert isinstance(app, FastAPI)
    assert kwargs["port"] == 8125 and "workers" not in kwargs


def test_several_workers_start_from_the_factory_with_the_commands_settings(
    monkeypatch: pytest.MonkeyPatch, served: list[tuple[Any, dict[str, Any]]]
) -> None:
    monkeypatch.setenv("DRIFTLINE_API_WORKERS", "2")
    monkeypatch.setenv("DRIFTLINE_NAMESPACE", "from-env")
    assert main(["api", "--port", "8126"]) == 0
    ((app, kwargs),) = served
    assert app == "driftline.api.main:create_app"
    assert kwargs["factory"] is True and kwargs["workers"] == 2 and kwargs["port"] == 8126
    # What each worker process's factory reads: the flags as well as the environment.
    get_settings.cache_clear()
    in_a_worker = get_settings()
    assert (in_a_worker.api_port, in_a_worker.namespace, in_a_worker.api_workers) == (8126, "from-env", 2)


def test_workers_must_be_at_least_one(monkeypatch: pytest.MonkeyPatch, served: list[Any]) -> None:
    monkeypatch.setenv("DRIFTLINE_API_WORKERS", "0")
    assert main(["api"]) != 0
    assert served == []
