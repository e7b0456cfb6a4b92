"""Settings: read from DRIFTLINE_* variables, converted for Kafka and Faust, strict about secrets."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from driftline.settings import DEV_API_KEY, DEV_SECRET, Settings
from driftline.streams.features import FeatureSpec

GOOD_SECRET = "a-real-secret-of-32-characters!!"

SettingsFromEnv = Callable[..., Settings]


@pytest.fixture
def settings_from_env(monkeypatch: pytest.MonkeyPatch) -> SettingsFromEnv:
    """Settings read from exactly the given ``DRIFTLINE_*`` variables (no others, no .env file),
    and ``DRIFTLINE_ENV=dev`` unless given (without it, real secrets are required)."""
    for name in list(os.environ):
        if name.upper().startswith("DRIFTLINE_"):
            monkeypatch.delenv(name)

    def make(**env: str) -> Settings:
        if not any(name.upper() == "DRIFTLINE_ENV" for name in env):
            env = {"DRIFTLINE_ENV": "dev", **env}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Settings(_env_file=None)

    return make


def test_defaults_in_dev_mode(settings_from_env: SettingsFromEnv) -> None:
    s = settings_from_env(DRIFTLINE_ENV="dev")
    assert s.env == "dev"
    assert s.kafka_url == ""
    assert s.events_topic == "sensor-events"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.namespace == "driftline"
    assert s.secret_key.get_secret_value() == DEV_SECRET
    assert s.api_key_set() == frozenset({DEV_API_KEY})
    assert s.features == FeatureSpec()
    assert s.sim_drift_after is None


def test_driftline_variables_are_read_and_converted(settings_from_env: SettingsFromEnv) -> None:
    s = settings_from_env(
        DRIFTLINE_ENV="test",
        DRIFTLINE_KAFKA_URL="kafka://broker:9092",
        DRIFTLINE_EVENTS_PARTITIONS="8",
        DRIFTLINE_BATCH_WITHIN="0.25",
        DRIFTLINE_REDIS_URL="redis://cache:6380/2",
        DRIFTLINE_NAMESPACE="plant-a",
        DRIFTLINE_SECRET_KEY=GOOD_SECRET,
        DRIFTLINE_API_KEYS="k1, k2,,",
        DRIFTLINE_FEATURES='{"windows": [5, 20], "lags": [1, 2]}',
        DRIFTLINE_SIM_DRIFT_AFTER="500",
    )
    assert s.env == "test"
    assert s.kafka_url == "kafka://broker:9092"
    assert s.events_partitions == 8
    assert s.batch_within == 0.25
    assert s.redis_url == "redis://cache:6380/2"
    assert s.namespace == "plant-a"
    assert s.secret_key.get_secret_value() == GOOD_SECRET
    assert s.api_key_set() == frozenset({"k1", "k2"})
    assert s.features == FeatureSpec(windows=(5, 20), lags=(1, 2))
    assert s.sim_drift_after == 500


def test_variable_names_are_case_insensitive(settings_from_env: SettingsFromEnv) -> None:
    assert settings_from_env(driftline_target="energy").target == "energy"


def test_variables_without_the_prefix_are_ignored(settings_from_env: SettingsFromEnv) -> None:
    assert settings_from_env(TARGET="energy", ENV="prod").target == "power"


def test_arguments_win_over_the_environment(settings_from_env: SettingsFromEnv) -> None:
    settings_from_env(DRIFTLINE_TARGET="energy")
    assert Settings(target="kw", _env_file=None).target == "kw"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DRIFTLINE_EVENTS_PARTITIONS", "0"),
        ("DRIFTLINE_EVENTS_PARTITIONS", "many"),
        ("DRIFTLINE_ENV", "staging"),
        ("DRIFTLINE_NAMESPACE", "has space"),
        ("DRIFTLINE_WORKER_STAGES", "ingest,serve"),
        ("DRIFTLINE_FEATURES", '{"colour": "red"}'),
        ("DRIFTLINE_MAX_MESSAGE_BYTES", "100"),
    ],
)
def test_invalid_values_are_refused(settings_from_env: SettingsFromEnv, variable: str, value: str) -> None:
    with pytest.raises(ValidationError):
        settings_from_env(**{variable: value})


def test_settings_are_frozen(settings_from_env: SettingsFromEnv) -> None:
    s = settings_from_env()
    with pytest.raises(ValidationError):
        s.target = "other"  # type: ignore[misc]


# --- Kafka addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bootstrap", "faust"),
    [
        ("kafka://127.0.0.1:9092", "127.0.0.1:9092", "kafka://127.0.0.1:9092"),
        ("127.0.0.1:9092", "127.0.0.1:9092", "kafka://127.0.0.1:9092"),
        ("  kafka://broker:9092\n", "broker:9092", "kafka://broker:9092"),
        ("kafka://a:9092,kafka://b:9093", "a:9092,b:9093", "kafka://a:9092;kafka://b:9093"),
        ("a:9092,b:9093,c:9094", "a:9092,b:9093,c:9094", "kafka://a:9092;kafka://b:9093;kafka://c:9094"),
        ("kafka://a:9092,b:9093,", "a:9092,b:9093", "kafka://a:9092;kafka://b:9093"),
    ],
    ids=["single", "single-no-scheme", "surrounding-space", "two", "three-no-scheme", "mixed-trailing-comma"],
)
def test_kafka_url_converts_for_kafka_python_and_faust(url: str, bootstrap: str, faust: str) -> None:
    s = Settings(env="dev", kafka_url=url, _env_file=None)
    assert s.kafka_bootstrap == bootstrap
    assert s.faust_broker == faust


def test_kafka_url_from_the_environment_is_converted(settings_from_env: SettingsFromEnv) -> None:
    s = settings_from_env(DRIFTLINE_KAFKA_URL="kafka://a:1,kafka://b:2")
    assert (s.kafka_bootstrap, s.faust_broker) == ("a:1,b:2", "kafka://a:1;kafka://b:2")


# --- secrets ------------------------------------------------------------------------------------


def test_prod_refuses_the_default_secret(settings_from_env: SettingsFromEnv) -> None:
    with pytest.raises(ValidationError, match="DRIFTLINE_SECRET_KEY must be set to a real secret"):
        settings_from_env(DRIFTLINE_ENV="prod", DRIFTLINE_API_KEYS="prod-key")


def test_prod_refuses_the_default_secret_given_explicitly(settings_from_env: SettingsFromEnv) -> None:
    with pytest.raises(ValidationError, match="real secret"):
        settings_from_env(DRIFTLINE_ENV="prod", DRIFTLINE_SECRET_KEY=DEV_SECRET, DRIFTLINE_API_KEYS="k")


def test_prod_refuses_the_development_api_key(settings_from_env: SettingsFromEnv) -> None:
    with pytest.raises(
        ValidationError, match="DRIFTLINE_API_KEYS must be set and must not contain the development key"
    ):
        settings_from_env(
            DRIFTLINE_ENV="prod",
            DRIFTLINE_SECRET_KEY=GOOD_SECRET,
            DRIFTLINE_API_KEYS=f"prod-key,{DEV_API_KEY}",
        )


def test_prod_accepts_real_secrets(settings_from_env: SettingsFromEnv) -> None:
    s = settings_from_env(
        DRIFTLINE_ENV="prod",
        DRIFTLINE_SECRET_KEY=GOOD_SECRET,
        DRIFTLINE_API_KEYS="prod-key",
        DRIFTLINE_ADMIN_KEYS="ops:prod-admin-key",
    )
    assert s.env == "prod"
    assert s.secret_key.get_secret_value() == GOOD_SECRET


@pytest.mark.parametrize("env", ["dev", "test"])
def test_the_default_secret_is_fine_outside_prod(settings_from_env: SettingsFromEnv, env: str) -> None:
    assert settings_from_env(DRIFTLINE_ENV=env).secret_key.get_secret_value() == DEV_SECRET


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_a_secret_shorter_than_16_characters_is_refused(settings_from_env: SettingsFromEnv, env: str) -> None:
    with pytest.raises(ValidationError, match="DRIFTLINE_SECRET_KEY must be at least 16 characters"):
        settings_from_env(
            DRIFTLINE_ENV=env,
            DRIFTLINE_SECRET_KEY="x" * 15,
            DRIFTLINE_API_KEYS="k",
            DRIFTLINE_ADMIN_KEYS="a:k2",
        )


def test_a_secret_of_exactly_16_characters_is_accepted(settings_from_env: SettingsFromEnv) -> None:
    assert settings_from_env(DRIFTLINE_SECRET_KEY="x" * 16).secret_key.get_secret_value() == "x" * 16


def test_secrets_are_not_shown(settings_from_env: SettingsFromEnv) -> None:
    s = settings_from_env(
        DRIFTLINE_SECRET_KEY=GOOD_SECRET,
        DRIFTLINE_API_KEYS="visible-key",
        DRIFTLINE_ADMIN_KEYS="ops:visible-admin",
    )
    assert GOOD_SECRET not in repr(s) and "visible-key" not in repr(s)


# --- keys and hand-over -------------------------------------------------------------------------


def test_redis_keys_sit_under_the_namespace() -> None:
    assert Settings(env="dev", _env_file=None).keys.model("default") == "driftline:model:default"
    s = Settings(env="dev", namespace="test-1a2b", _env_file=None)
    assert s.keys.device("d1") == "test-1a2b:device:d1"
    assert s.keys.pattern() == "test-1a2b:*"


def test_as_env_makes_another_process_read_the_same_settings(settings_from_env: SettingsFromEnv) -> None:
    original = Settings(
        env="test",
        kafka_url="kafka://a:1,kafka://b:2",
        namespace="ns",
        secret_key=GOOD_SECRET,
        api_keys="k1,k2",
        features=FeatureSpec(windows=(3,)),
        sim_drift_after=10,
        _env_file=None,
    )
    assert settings_from_env(**original.as_env()) == original


@pytest.mark.parametrize("url", ["kafka://a:1, kafka://b:2", "kafka://a:1;kafka://b:2", "a:1,b:2,"])
def test_broker_lists_in_any_common_form(url: str) -> None:
    settings = Settings(env="dev", kafka_url=url, _env_file=None)
    assert settings.kafka_bootstrap == "a:1,b:2"
    assert settings.faust_broker == "kafka://a:1;kafka://b:2"


def test_the_default_cadence_serves_a_learned_event_within_two_seconds(
    settings_from_env: SettingsFromEnv,
) -> None:
    """An event waits up to ``batch_within`` in each stage, then for the snapshot that holds it
    (``snapshot_every_seconds`` and one check): with these defaults that bound is under the 2 s
    freshness target (issue 17); with the earlier 5 s and 0.5 s it was 6.5 s (bench/freshness.py)."""
    from driftline.streams.agents import snapshot_check_seconds

    s = settings_from_env()
    assert (s.snapshot_every_seconds, s.batch_within) == (1.0, 0.2)
    worst = 2 * s.batch_within + s.snapshot_every_seconds + snapshot_check_seconds(s.snapshot_every_seconds)
    assert worst < 2.0
