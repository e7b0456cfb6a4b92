"""Secrets: required unless in explicit dev mode, loud when the published ones are used, never
served beyond this machine; and docker-compose passes exactly what prod needs."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from driftline.cli import main
from driftline.core.errors import ConfigurationError
from driftline.settings import DEV_API_KEY, DEV_SECRET, Settings, get_settings, is_loopback

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
SECRET = "a-real-secret-of-32-characters!!"
ADMIN = "ops:a-real-admin-key"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ``DRIFTLINE_*`` variable and no .env file but the test's own; fresh process settings."""
    for name in list(os.environ):
        if name.upper().startswith("DRIFTLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def set_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# --- required unless dev ------------------------------------------------------------------------


def test_the_default_mode_is_prod_and_needs_both_secrets() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    message = str(refused.value)
    assert "DRIFTLINE_SECRET_KEY must be set to a real secret" in message
    assert "DRIFTLINE_API_KEYS must be set" in message
    assert "DRIFTLINE_ENV=dev" in message  # says how to get a development machine going


def test_a_missing_secret_is_named_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {"DRIFTLINE_API_KEYS": "prod-key"})
    with pytest.raises(ValidationError, match="DRIFTLINE_SECRET_KEY must be set") as refused:
        Settings(_env_file=None)
    assert "DRIFTLINE_API_KEYS" not in str(refused.value)
    set_env(monkeypatch, {"DRIFTLINE_SECRET_KEY": SECRET, "DRIFTLINE_API_KEYS": ""})
    with pytest.raises(ValidationError, match="DRIFTLINE_API_KEYS must be set"):
        Settings(_env_file=None)


def test_the_cli_says_which_variable_is_missing_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "DRIFTLINE_SECRET_KEY must be set" in err


def test_prod_with_real_secrets_uses_no_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {"DRIFTLINE_SECRET_KEY": SECRET, "DRIFTLINE_API_KEYS": "k1,k2", "DRIFTLINE_ADMIN_KEYS": ADMIN},
    )
    settings = Settings(_env_file=None)
    assert settings.env == "prod" and settings.dev_secrets() == []


@pytest.mark.parametrize("env", ["dev", "test"])
def test_explicit_dev_or_test_mode_may_use_the_development_secrets(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    set_env(monkeypatch, {"DRIFTLINE_ENV": env})
    settings = Settings(_env_file=None)
    assert settings.secret_key.get_secret_value() == DEV_SECRET
    assert settings.api_key_set() == {DEV_API_KEY}
    assert settings.dev_secrets() == ["DRIFTLINE_SECRET_KEY", "DRIFTLINE_API_KEYS", "DRIFTLINE_ADMIN_KEYS"]


# --- loud when used ------------------------------------------------------------------------------


def test_a_process_using_the_development_secrets_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_env(monkeypatch, {"DRIFTLINE_ENV": "dev", "DRIFTLINE_SECRET_KEY": SECRET})
    with caplog.at_level(logging.WARNING, logger="driftline.settings"):
        get_settings()
        get_settings()  # read once: warned once
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "DEVELOPMENT SECRETS" in text and "DRIFTLINE_API_KEYS" in text
    assert "DRIFTLINE_SECRET_KEY" not in text  # that one is real


def test_real_secrets_give_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_env(
        monkeypatch,
        {
            "DRIFTLINE_ENV": "dev",
            "DRIFTLINE_SECRET_KEY": SECRET,
            "DRIFTLINE_API_KEYS": "k",
            "DRIFTLINE_ADMIN_KEYS": ADMIN,
        },
    )
    with caplog.at_level(logging.WARNING, logger="driftline.settings"):
        get_settings()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_driftline_up_runs_in_dev_mode_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr("driftline.supervisor.run_up", lambda settings, *a, **k: seen.append(settings) or 0)
    with caplog.at_level(logging.WARNING, logger="driftline.settings"):
        assert main(["up"]) == 0
    assert seen[0].env == "dev" and os.environ["DRIFTLINE_ENV"] == "dev"  # the children inherit it
    assert any("DEVELOPMENT SECRETS" in r.getMessage() for r in caplog.records)


def test_driftline_up_keeps_a_mode_set_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {"DRIFTLINE_ENV": "prod"})
    monkeypatch.setattr("driftline.supervisor.run_up", lambda *a, **k: pytest.fail("must not start"))
    assert main(["up"]) == 2  # prod without secrets: refused, not silently made dev


# --- never served beyond this machine ------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``uvicorn.run`` was asked to serve (nothing is started)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_the_api_refuses_a_public_address_with_development_secrets(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    served: list[dict[str, Any]],
    host: str,
) -> None:
    set_env(monkeypatch, {"DRIFTLINE_ENV": "dev"})
    assert main(["api", "--host", host]) == 2
    err = capsys.readouterr().err.strip()
    assert served == []
    (error,) = [line for line in err.splitlines() if line.startswith("driftline: error:")]  # one line
    assert f"refusing to serve the API on {host}" in error
    assert "DRIFTLINE_SECRET_KEY and DRIFTLINE_API_KEYS" in error


def test_the_api_refuses_a_public_address_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]]
) -> None:
    set_env(
        monkeypatch, {"DRIFTLINE_ENV": "dev", "DRIFTLINE_SECRET_KEY": SECRET, "DRIFTLINE_API_HOST": "0.0.0.0"}
    )
    assert main(["api"]) == 2 and served == []  # the development API key alone is enough to refuse


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_the_api_serves_loopback_with_development_secrets(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]], host: str
) -> None:
    set_env(monkeypatch, {"DRIFTLINE_ENV": "dev"})
    assert main(["api", "--host", host, "--port", "8123"]) == 0
    assert [(c["host"], c["port"]) for c in served] == [(host, 8123)]


def test_the_api_serves_any_address_with_real_secrets(
    monkeypatch: pytest.MonkeyPatch, served: list[dict[str, Any]]
) -> None:
    set_env(
        monkeypatch,
        {"DRIFTLINE_SECRET_KEY": SECRET, "DRIFTLINE_API_KEYS": "prod-key", "DRIFTLINE_ADMIN_KEYS": ADMIN},
    )
    assert main(["api", "--host", "0.0.0.0"]) == 0
    assert served[0]["host"] == "0.0.0.0"


def test_the_bind_check_can_be_called_without_the_cli() -> None:
    settings = Settings(env="dev", _env_file=None)
    settings.check_api_bind()  # the default host is loopback
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        settings.check_api_bind("10.0.0.5")
    assert not is_loopback("") and is_loopback("[::1]") and is_loopback("127.8.9.10")


# --- docker compose ------------------------------------------------------------------------------

#: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")

#: What an operator passes (from the shell or compose's .env file): example values.
OPERATOR_ENV = {
    "DRIFTLINE_SECRET_KEY": "0123456789abcdef" * 4,
    "DRIFTLINE_API_KEYS": "ops-key-1,ops-key-2",
    "DRIFTLINE_ADMIN_KEYS": "ops:ops-admin-key-1",
}


class MissingVariable(Exception):
    pass


def interpolate(value: str, operator: Mapping[str, str]) -> str:
    """A value of the compose file as compose substitutes it from the operator's environment."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        given = operator.get(name)
        unset = given is None or (op.startswith(":") and given == "")
        if op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op.endswith("-") and unset:
            return arg
        return given or ""

    return INTERPOLATION.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def compose_services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def driftline_services() -> list[str]:
    """The services that run driftline (built from this repository), not Kafka or Redis."""
    return [name for name, service in compose_services().items() if "build" in service]


def service_environment(name: str, operator: Mapping[str, str]) -> dict[str, str]:
    environment = compose_services()[name].get("environment") or {}
    if isinstance(environment, list):  # the KEY=value form
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolate(str(value), operator) for key, value in environment.items()}


def test_compose_runs_driftline_as_worker_api_and_simulator() -> None:
    assert sorted(driftline_services()) == ["api", "simulator", "worker"]


@pytest.mark.parametrize("service", driftline_services())
def test_each_compose_service_validates_with_exactly_the_environment_compose_passes(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    environment = service_environment(service, OPERATOR_ENV)
    set_env(monkeypatch, environment)
    settings = Settings(_env_file=None)  # the image sets nothing else (Dockerfile)
    assert settings.env == "prod" and settings.dev_secrets() == []
    assert settings.secret_key.get_secret_value() == OPERATOR_ENV["DRIFTLINE_SECRET_KEY"]
    assert settings.api_key_set() == {"ops-key-1", "ops-key-2"}
    command = compose_services()[service]["command"]
    if "--host" in command:
        settings.check_api_bind(command[command.index("--host") + 1])  # 0.0.0.0 in the container


@pytest.mark.parametrize("variable", sorted(OPERATOR_ENV))
@pytest.mark.parametrize("service", driftline_services())
def test_compose_refuses_to_start_without_the_operators_secrets(service: str, variable: str) -> None:
    assert f"${{{variable}:?" in COMPOSE.read_text()  # compose's required-variable syntax
    without = {k: v for k, v in OPERATOR_ENV.items() if k != variable}
    for operator in (without, {**without, variable: ""}):
        with pytest.raises(MissingVariable, match=variable):
            service_environment(service, operator)


def test_interpolation_follows_compose() -> None:
    given: Callable[[str], str] = lambda text: interpolate(text, {"A": "a", "E": ""})  # noqa: E731
    assert [given(t) for t in ("${A}", "${B:-x}", "${E:-x}", "${E-x}", "$${A}", "${A:?no}")] == [
        "a",
        "x",
        "x",
        "",
        "${A}",
        "a",
    ]
    with pytest.raises(MissingVariable):
        given("${E:?set E}")


def test_a_command_beside_a_running_dev_stack_takes_its_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from driftline.cli import _settings
    from driftline.running import write_stack_file

    # _settings sets DRIFTLINE_ENV itself: registered here, so it is gone again after the test.
    monkeypatch.setenv("DRIFTLINE_ENV", "registered")
    monkeypatch.delenv("DRIFTLINE_ENV")
    # No stack: prod, and no secrets, so the settings are refused.
    with pytest.raises(ValidationError, match="DRIFTLINE_SECRET_KEY"):
        _settings()
    # A dev `driftline up` (`make run`) running from this folder: its mode, with no export.
    write_stack_file(
        tmp_path / ".driftline", kafka_url="kafka://127.0.0.1:9", redis_url="redis://x", env="dev"
    )
    assert _settings().env == "dev"
    # Stopped (Ctrl-C): `driftline reset`, which the README says to run now, is still in its mode.
    from driftline.running import remove_stack_file

    remove_stack_file(tmp_path / ".driftline")
    monkeypatch.setenv("DRIFTLINE_ENV", "registered")
    monkeypatch.delenv("DRIFTLINE_ENV")
    get_settings.cache_clear()
    assert _settings().env == "dev"
    # Saying otherwise wins.
    monkeypatch.setenv("DRIFTLINE_ENV", "prod")
    get_settings.cache_clear()
    with pytest.raises(ValidationError, match="DRIFTLINE_SECRET_KEY"):
        _settings()


# --- several snapshot keys (rotation) ----------------------------------------------------------

OLD_SECRET = "the-old-secret-of-32-characters!"


def test_several_snapshot_keys_first_signs_all_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "DRIFTLINE_SECRET_KEY": f"{SECRET}, {OLD_SECRET}",
            "DRIFTLINE_API_KEYS": "prod-key-0123456789",
            "DRIFTLINE_ADMIN_KEYS": ADMIN,
        },
    )
    settings = Settings(_env_file=None)
    assert settings.secret_keys() == (SECRET.encode(), OLD_SECRET.encode())
    assert settings.dev_secrets() == []
    registry = settings.registry(None)  # type: ignore[arg-type]  # no call reaches Redis here
    assert registry.key_ring.keys == (SECRET.encode(), OLD_SECRET.encode())
    assert Settings(_env_file=None, **{"secret_key": SECRET}).secret_keys() == (SECRET.encode(),)


@pytest.mark.parametrize("env", ["prod", "dev"])
def test_every_snapshot_key_must_be_long_enough(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    set_env(
        monkeypatch,
        {
            "DRIFTLINE_ENV": env,
            "DRIFTLINE_SECRET_KEY": f"{SECRET},short",
            "DRIFTLINE_API_KEYS": "prod-key",
            "DRIFTLINE_ADMIN_KEYS": ADMIN,
        },
    )
    with pytest.raises(
        ValidationError, match="at least 16 characters \\(each of its comma-separated keys\\)"
    ):
        Settings(_env_file=None)


def test_a_snapshot_key_named_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {
            "DRIFTLINE_SECRET_KEY": f"{SECRET},{SECRET}",
            "DRIFTLINE_API_KEYS": "prod-key",
            "DRIFTLINE_ADMIN_KEYS": ADMIN,
        },
    )
    with pytest.raises(ValidationError, match="names a key twice"):
        Settings(_env_file=None)


def test_the_development_secret_is_refused_in_prod_even_as_a_verification_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verifying key forges as well as the signing one: the published secret is refused there too."""
    set_env(
        monkeypatch,
        {
            "DRIFTLINE_SECRET_KEY": f"{SECRET},{DEV_SECRET}",
            "DRIFTLINE_API_KEYS": "prod-key",
            "DRIFTLINE_ADMIN_KEYS": ADMIN,
        },
    )
    with pytest.raises(ValidationError, match="DRIFTLINE_SECRET_KEY must be set to a real secret"):
        Settings(_env_file=None)
    set_env(monkeypatch, {"DRIFTLINE_ENV": "dev"})
    assert Settings(_env_file=None).dev_secrets() == ["DRIFTLINE_SECRET_KEY"]
