"""Configuration: read once, validated as a whole, secrets never echoed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from svc.settings import DEVELOPMENT_SECRET_KEY, ConfigError, Environment, Settings, load_settings

pytestmark = pytest.mark.usefixtures("isolated_env")

GOOD_KEY = "k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789"
SECRET_PASSWORD = "pa55-w0rd-that-must-not-leak"


def config_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> ConfigError:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return info.value


def test_development_defaults_need_no_variables() -> None:
    settings = load_settings()
    assert settings.app_env is Environment.DEVELOPMENT
    assert settings.database_url is None
    assert settings.secret_key == DEVELOPMENT_SECRET_KEY
    assert settings.log_format == "console"
    assert settings.health_show_details == "always"


def test_test_environment_logs_json_and_shows_details(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "test")
    settings = load_settings()
    assert (settings.log_format, settings.health_show_details) == ("json", "always")


@pytest.mark.parametrize("app_env", ["staging", "production"])
def test_deployed_environments_require_database_url_and_secret_key(
    monkeypatch: pytest.MonkeyPatch, app_env: str
) -> None:
    error = config_error(monkeypatch, APP_ENV=app_env)
    assert set(error.errors) == {"DATABASE_URL", "SECRET_KEY"}
    assert "DATABASE_URL" in str(error)
    assert "SECRET_KEY" in str(error)


def test_deployed_defaults_are_json_logs_and_guarded_details(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc@db.internal/svc")
    monkeypatch.setenv("SECRET_KEY", GOOD_KEY)
    settings = load_settings()
    assert settings.log_format == "json"
    assert settings.health_show_details == "when_authorized"
    assert settings.secret_key == GOOD_KEY


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("short-but-random-Xy7", "at least 32 characters"),
        ("changeme", "placeholder"),
        ("changethis-changethis-changethis-changethis", "placeholder"),
        ("secret", "placeholder"),
        ("a" * 40, "single repeated character"),
    ],
)
def test_production_rejects_weak_secret_keys_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, key: str, rule: str
) -> None:
    error = config_error(monkeypatch, APP_ENV="production", DATABASE_URL="postgresql://u@h/db", SECRET_KEY=key)
    assert list(error.errors) == ["SECRET_KEY"]
    assert rule in str(error)
    assert key not in str(error)


@pytest.mark.parametrize(
    "url",
    ["postgres://u:p@db:5433/app", "postgresql://u:p@db:5433/app", "postgresql+asyncpg://u:p@db:5433/app"],
)
def test_database_url_schemes_are_normalised_to_asyncpg(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().database_url == "postgresql+asyncpg://u:p@db:5433/app"


def test_sslmode_becomes_asyncpg_ssl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/app?sslmode=require")
    assert load_settings().database_url == "postgresql+asyncpg://u@db/app?ssl=require"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        (f"mysql://u:{SECRET_PASSWORD}@db/app", "Scheme must be"),
        (f"postgresql://u:{SECRET_PASSWORD}@/app", "host is required"),
        (f"postgresql://u:{SECRET_PASSWORD}@db:99999/app", "Not a valid URL"),
    ],
)
def test_invalid_database_urls_are_rejected_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, url: str, rule: str
) -> None:
    error = config_error(monkeypatch, DATABASE_URL=url)
    assert list(error.errors) == ["DATABASE_URL"]
    assert rule in str(error)
    assert SECRET_PASSWORD not in str(error)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    error = config_error(
        monkeypatch,
        APP_ENV="production",
        DATABASE_URL="mysql://x@y/z",
        SECRET_KEY="changeme",
        LOG_LEVEL="LOUD",
        LOG_FORMAT="xml",
        DB_POOL_SIZE="0",
        DB_POOL_TIMEOUT="soon",
        HEALTH_DB_TIMEOUT="-1",
        HEALTH_SHOW_DETAILS="sometimes",
    )
    assert set(error.errors) == {
        "DATABASE_URL",
        "SECRET_KEY",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "DB_POOL_SIZE",
        "DB_POOL_TIMEOUT",
        "HEALTH_DB_TIMEOUT",
        "HEALTH_SHOW_DETAILS",
    }
    text = str(error)
    assert text.startswith("svc: invalid configuration (8 variable(s)):")
    assert all(f"  - {name}: " in text for name in error.errors)


def test_an_unknown_environment_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    error = config_error(monkeypatch, APP_ENV="prod")
    assert list(error.errors) == ["APP_ENV"]


def test_masked_configuration_hides_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://svc:{SECRET_PASSWORD}@db/app")
    monkeypatch.setenv("SECRET_KEY", GOOD_KEY)
    monkeypatch.setenv("HEALTH_TOKEN", "health-token-0123456789")
    settings = load_settings()
    masked = settings.masked()
    rendered = f"{masked} {settings!r}"
    for secret in (SECRET_PASSWORD, GOOD_KEY, "health-token-0123456789"):
        assert secret not in rendered
    assert masked["DATABASE_URL"] == "postgresql+asyncpg://svc:********@db/app"
    assert masked["SECRET_KEY"] == masked["HEALTH_TOKEN"] == "********"
    assert masked["DB_POOL_SIZE"] == Settings().db_pool_size


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_dotenv_in_working_directory_is_read(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text("LOG_LEVEL=warning\nDB_POOL_SIZE=7\n")
    settings = load_settings()
    assert (settings.log_level, settings.db_pool_size) == ("WARNING", 7)


def test_real_environment_wins_over_dotenv(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_env / ".env").write_text("DB_POOL_SIZE=7\n")
    monkeypatch.setenv("DB_POOL_SIZE", "9")
    assert load_settings().db_pool_size == 9


def test_dotenv_in_a_parent_folder_is_ignored(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_env / ".env").write_text("DB_POOL_SIZE=7\n")
    child = isolated_env / "child"
    child.mkdir()
    monkeypatch.chdir(child)
    assert load_settings().db_pool_size == Settings().db_pool_size


def test_invalid_values_in_dotenv_are_reported_like_real_ones(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text("DB_POOL_SIZE=many\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert list(info.value.errors) == ["DB_POOL_SIZE"]


def test_allowed_hosts_entries_are_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", "api.example.com, *.example.org ,127.0.0.1,[::1]")
    assert load_settings().allowed_hosts == ("api.example.com", "*.example.org", "127.0.0.1", "[::1]")


@pytest.mark.parametrize(
    "value",
    ["api.example.com:8443", "*.", "*example.com", "a.*.com", "evil.com?.example.com", "evil.com/x", "a b.com", ""],
)
def test_allowed_hosts_entries_that_could_never_match_are_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    error = config_error(monkeypatch, ALLOWED_HOSTS=f"ok.example.com,{value}")
    assert list(error.errors) == ["ALLOWED_HOSTS"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_SERVICE_NAME", ""),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_SDK_DISABLED", "perhaps"),
        # A thread-local runtime context would give every request on the event loop's thread the same span.
        ("OTEL_PYTHON_CONTEXT", "threadlocal_context"),
    ],
)
def test_invalid_opentelemetry_variables_are_reported(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    error = config_error(monkeypatch, **{name: value})
    assert list(error.errors) == [name]
