"""A new user's configuration says what it does: presets, an explicit catalog, startup lines.

Each test sets ``DRIFTLINE_*`` variables as a user would and reads what ``driftline config`` (the
lines a worker logs at startup) or the settings make of them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from driftline.cli import main
from driftline.settings import Settings
from driftline.streams.catalog import DEFAULT_CATALOG
from driftline.streams.features import DeviceState, FeatureSpec, featurize


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DRIFTLINE_"):
            monkeypatch.delenv(name)
    # A development machine: the published development secrets stand in for unset ones.
    monkeypatch.setenv("DRIFTLINE_ENV", "dev")
    monkeypatch.chdir(tmp_path)  # no .env file of the checkout's
    from driftline.settings import get_settings

    get_settings.cache_clear()


def config_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> tuple[int, str, str]:
    from driftline.settings import get_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    code = main(["config"])
    out, err = capsys.readouterr()
    return code, out, err


def test_raw_preset_learns_from_the_readings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_FEATURES", "raw")
    spec = Settings(_env_file=None).features
    features = featurize(DeviceState(), {"a": 1.0, "b": 2.0}, datetime(2026, 1, 1, tzinfo=UTC), spec)
    assert features == {"a": 1.0, "b": 2.0}


def test_a_preset_can_be_tuned_key_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_FEATURES", '{"preset": "raw", "lags": [1, 2]}')
    spec = Settings(_env_file=None).features
    assert spec.lags == (1, 2) and spec.windows == () and not spec.time_of_day
    assert spec.describe() == "custom"


def test_default_preset_is_the_default_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_FEATURES", "default")
    assert Settings(_env_file=None).features == FeatureSpec()


def test_an_unknown_preset_is_a_configuration_error_that_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = config_output(monkeypatch, capsys, DRIFTLINE_FEATURES="rw")
    assert code == 2
    assert "DRIFTLINE_FEATURES: unknown features preset 'rw'" in err and "raw" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["", "none", "{}", " none "])
def test_no_catalog_is_explicit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, out, _ = config_output(monkeypatch, capsys, DRIFTLINE_SENSOR_CATALOG=value)
    assert code == 0
    assert Settings(_env_file=None).catalog() == {}
    assert "sensor catalog: none (readings pass unchecked" in out


def test_the_simulators_catalog_is_the_named_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = config_output(monkeypatch, capsys)
    assert Settings(_env_file=None).catalog() == DEFAULT_CATALOG
    assert "sensor catalog: simulator's: humidity, temperature, vibration, voltage" in out
    monkeypatch.setenv("DRIFTLINE_SENSOR_CATALOG", "simulator")
    assert Settings(_env_file=None).catalog() == DEFAULT_CATALOG


def test_a_bad_catalog_fails_at_startup_not_at_the_first_event(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = config_output(monkeypatch, capsys, DRIFTLINE_SENSOR_CATALOG='{"t": {"min": 5, "max": 1}}')
    assert code == 2 and "DRIFTLINE_SENSOR_CATALOG cannot be read" in err and "min 5.0 is above max" in err


def test_config_says_each_models_task_target_estimator_features_and_the_catalog(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = config_output(
        monkeypatch,
        capsys,
        DRIFTLINE_FEATURES="raw",
        DRIFTLINE_SENSOR_CATALOG="none",
        DRIFTLINE_MODELS='[{"name": "m", "task": "regression", "target": "y",'
        ' "estimator": "linear_regression"},'
        ' {"name": "odd", "task": "anomaly", "estimator": "half_space_trees",'
        ' "features": ["vib*"]}]',
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "model 'm': regression of 'y' (its reading, else the event's target field), "
        "estimator linear_regression, features all of the raw preset, metric MAE; "
        "retrains on drift (a challenger must beat it by 2% over 500 to 5,000 events)"
    )
    assert lines[1].startswith(
        "model 'odd': anomaly of 'power' (the event's target field, else its "
        "reading), estimator half_space_trees, "
        "features matching vib* of the raw preset"
    )
    assert lines[2].startswith("features: raw (the readings only), ")
    assert lines[3] == "sensor catalog: none (readings pass unchecked; a missing one takes its last value)"


def test_runtime_data_goes_under_one_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).data_dir.as_posix() == ".driftline"  # ignored by git
    monkeypatch.setenv("DRIFTLINE_DATA_DIR", "/var/lib/driftline")
    assert Settings(_env_file=None).data_dir.as_posix() == "/var/lib/driftline"
    assert Settings(_env_file=None).as_env()["DRIFTLINE_DATA_DIR"] == "/var/lib/driftline"
