"""Configuration: one frozen `Settings`, read from the environment once and validated as a whole."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import marshmallow as ma
from environs import Env, EnvValidationError

from svc.service import find_service

__all__ = ["ConfigError", "Details", "Environment", "LogFormat", "Settings", "load_settings"]

# Used in development/test only, where a random key would differ between workers.
DEVELOPMENT_SECRET_KEY = "svc-development-key-not-for-production-use-0000"  # noqa: S105
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "changethis", "change-me", "change_me", "secret", "password", "default", "test", "dev", "development"}
)
DATABASE_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
MASK = "********"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: `OTEL_TRACES_SAMPLER` values (OpenTelemetry's built-in samplers).
TRACES_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    STAGING = "staging"
    PRODUCTION = "production"

    @property
    def is_deployed(self) -> bool:
        """Staging and production: secrets are mandatory and nothing is started implicitly."""
        return self in (Environment.STAGING, Environment.PRODUCTION)


class Details(StrEnum):
    """`HEALTH_SHOW_DETAILS`: who sees health details (outputs, observed values) and may scrape `/metrics`."""

    ALWAYS = "always"
    WHEN_AUTHORIZED = "when_authorized"
    NEVER = "never"

    @property
    def public(self) -> bool:
        """Everyone sees details and metrics: no token is asked for."""
        return self is Details.ALWAYS


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class ConfigError(Exception):
    """Raised with every invalid variable at once; the text never contains a value."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = dict(sorted(errors.items()))
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"svc: invalid configuration ({len(self.errors)} variable(s)):"]
        lines += [f"  - {name}: {' '.join(messages)}" for name, messages in self.errors.items()]
        return "\n".join(lines)


def _package_version() -> str:
    try:
        return version("svc")
    except PackageNotFoundError:
        return "0.0.0"


def _secret(**kw: Any) -> Any:
    return field(repr=False, metadata={"secret": True}, **kw)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The service's whole configuration. Build it with `load_settings()`; defaults live here."""

    app_env: Environment = Environment.DEVELOPMENT
    app_version: str = field(default_factory=_package_version)
    # None means "start the embedded PostgreSQL" (development/test only).
    database_url: str | None = _secret(default=None)
    secret_key: str = _secret(default=DEVELOPMENT_SECRET_KEY)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.CONSOLE
    access_log: bool = True
    max_body_bytes: int = 1_048_576
    embedded_pg_dir: Path = Path(".data/postgres")
    # The service built on svc (`module:attribute` of an svc.service.Service); None: the foundation alone.
    service: str | None = None

    # A pool that never closes what it opens: overflow connections are closed on check-in, so under load
    # they were reopened all the time (about 40 a second at 64 concurrent requests). Requests beyond the
    # pool wait up to db_pool_timeout for a connection instead.
    db_pool_size: int = 10
    db_max_overflow: int = 0
    db_pool_timeout: float = 5.0
    db_pool_recycle: int = 1800
    db_connect_timeout: float = 5.0
    db_command_timeout: float = 30.0
    db_statement_cache_size: int = 100
    db_application_name: str = "svc"

    health_db_timeout: float = 0.8
    health_db_warn_ms: float = 100.0
    health_db_cache_ttl: float = 1.0
    health_show_details: Details = Details.ALWAYS
    health_token: str | None = _secret(default=None)

    # Host header values accepted (Starlette's TrustedHost patterns, e.g. "*.example.com"); "*" accepts any.
    allowed_hosts: tuple[str, ...] = ("*",)
    # Peers (IP addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed: load balancers.
    trusted_proxies: tuple[str, ...] = ()
    metrics_enabled: bool = True
    # Where prometheus-client's multiprocess files live; None: a directory the service manages.
    metrics_dir: Path | None = None
    db_slow_query_ms: float = 200.0
    # After SIGTERM, readiness fails but requests are still served this long before uvicorn stops
    # accepting: time for a load balancer (Kubernetes endpoints) to stop sending new ones.
    shutdown_drain_seconds: float = 0.0

    # Connection limits of svc.protocol.HttpProtocol (uvicorn --http svc.protocol:HttpProtocol): see that module.
    http_max_head_bytes: int = 32_768
    http_head_timeout: float = 10.0
    http_keepalive_timeout: float = 5.0
    http_max_pipelined: int = 16
    http_max_connections: int = 1_000

    # OpenTelemetry (the standard OTEL_* variables): spans are exported when an endpoint is set (`tracing`).
    otel_service_name: str = "svc"
    otel_exporter_otlp_endpoint: str | None = None
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float | None = None
    otel_sdk_disabled: bool = False

    def __post_init__(self) -> None:
        # Options given as plain strings (dataclasses.replace in tests, code building Settings) become their enums.
        object.__setattr__(self, "app_env", Environment(self.app_env))
        object.__setattr__(self, "log_format", LogFormat(self.log_format))
        object.__setattr__(self, "health_show_details", Details(self.health_show_details))

    @property
    def is_development(self) -> bool:
        return self.app_env is Environment.DEVELOPMENT

    @property
    def tracing(self) -> bool:
        """Whether spans are made and exported: an OTLP endpoint is set and the SDK is not disabled."""
        return self.otel_exporter_otlp_endpoint is not None and not self.otel_sdk_disabled

    def masked(self) -> dict[str, Any]:
        """The effective configuration by variable name, with secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "database_url" and value is not None:
                value = mask_url(value)
            elif f.metadata.get("secret") and value is not None:
                value = MASK
            elif isinstance(value, (Path, StrEnum)):
                value = str(value)
            out[f.name.upper()] = value
        return out


def mask_url(url: str) -> str:
    """`url` with its password replaced by a mask."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{MASK}@{netloc}"))


def normalise_database_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg:// and return the asyncpg form.

    Raises ValueError with a message that never contains the URL itself.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError:
        raise ValueError("Not a valid URL.") from None
    if parts.scheme not in DATABASE_SCHEMES:
        raise ValueError("Scheme must be postgres://, postgresql:// or postgresql+asyncpg://.")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not (parts.hostname or any(k == "host" for k, _ in query)):
        raise ValueError("A host is required.")
    # libpq spells TLS as sslmode; asyncpg reads ssl.
    query = [("ssl" if k == "sslmode" else k, v) for k, v in query]
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", query=urlencode(query)))


def _check_secret_key(value: str) -> list[str]:
    problems = []
    if len(value) < 32:
        problems.append("Must be at least 32 characters.")
    if value.strip().lower() in PLACEHOLDER_SECRETS or re.fullmatch(r"(change|replace)[-_ ]?(me|this).*", value, re.I):
        problems.append("Must not be a placeholder value.")
    if len(set(value)) <= 1:
        problems.append("Must not be a single repeated character.")
    return problems


def _log_level(value: str) -> None:
    if value.upper() not in LOG_LEVELS:
        raise ma.ValidationError(f"Must be one of: {', '.join(LOG_LEVELS)}.")


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_PATTERN = re.compile(rf"(?:\*\.)?{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?|\[[0-9A-Fa-f:.]+\]")


def _host_patterns(value: list[str]) -> None:
    # A port or a stray character would make an entry that never matches: every request refused.
    for pattern in value:
        if pattern.strip() != "*" and not _HOST_PATTERN.fullmatch(pattern.strip()):
            raise ma.ValidationError(
                'Each entry must be a host name ("api.example.com", no port), "*.example.com", an IP address or "*".'
            )


def _entries(values: list[str] | None) -> tuple[str, ...]:
    return tuple(entry.strip() for entry in values or () if entry.strip())


def _networks(value: list[str]) -> None:
    for entry in value:
        if not entry.strip():
            continue
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ma.ValidationError("Each entry must be an IP address or network (10.0.0.0/8, ::1).") from None


def _otlp_endpoint(value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError:
        raise ma.ValidationError("Not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ma.ValidationError("Must be an http:// or https:// URL with a host (OTLP/HTTP).")


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read the environment (and `env_file` in the working directory, if present) into `Settings`.

    Real environment variables win over the file. Raises `ConfigError` naming every bad
    variable at once.
    """
    env = Env(eager=False)
    if env_file is not None:
        env.read_env(env_file, recurse=False)
    d = Settings()
    app_env = env.enum("APP_ENV", default=d.app_env, enum=Environment, by_value=True)
    deployed = isinstance(app_env, Environment) and app_env.is_deployed
    values: dict[str, Any] = {
        "app_env": app_env,
        "app_version": env.str("APP_VERSION", default=d.app_version, validate=ma.validate.Length(1, 64)),
        "database_url": env.str("DATABASE_URL", default=None),
        "secret_key": env.str("SECRET_KEY", default=None),
        "log_level": env.str("LOG_LEVEL", default=d.log_level, validate=_log_level),
        "log_format": env.enum(
            "LOG_FORMAT",
            default=LogFormat.JSON if deployed or app_env is Environment.TEST else LogFormat.CONSOLE,
            enum=LogFormat,
            by_value=True,
        ),
        "access_log": env.bool("ACCESS_LOG", default=d.access_log),
        "max_body_bytes": env.int("MAX_BODY_BYTES", default=d.max_body_bytes, validate=ma.validate.Range(1, 1 << 30)),
        "embedded_pg_dir": env.path("EMBEDDED_PG_DIR", default=d.embedded_pg_dir),
        "service": env.str("SERVICE", default=None),
        "db_pool_size": env.int("DB_POOL_SIZE", default=d.db_pool_size, validate=ma.validate.Range(1, 1_000)),
        "db_max_overflow": env.int("DB_MAX_OVERFLOW", default=d.db_max_overflow, validate=ma.validate.Range(0, 1_000)),
        "db_pool_timeout": env.float(
            "DB_POOL_TIMEOUT", default=d.db_pool_timeout, validate=ma.validate.Range(0.01, 300)
        ),
        "db_pool_recycle": env.int("DB_POOL_RECYCLE", default=d.db_pool_recycle, validate=ma.validate.Range(1, 86_400)),
        "db_connect_timeout": env.float(
            "DB_CONNECT_TIMEOUT", default=d.db_connect_timeout, validate=ma.validate.Range(0.01, 300)
        ),
        "db_command_timeout": env.float(
            "DB_COMMAND_TIMEOUT", default=d.db_command_timeout, validate=ma.validate.Range(0.01, 86_400)
        ),
        "db_statement_cache_size": env.int(
            "DB_STATEMENT_CACHE_SIZE", default=d.db_statement_cache_size, validate=ma.validate.Range(0, 100_000)
        ),
        "db_application_name": env.str(
            "DB_APPLICATION_NAME", default=d.db_application_name, validate=ma.validate.Length(1, 63)
        ),
        "health_db_timeout": env.float(
            "HEALTH_DB_TIMEOUT", default=d.health_db_timeout, validate=ma.validate.Range(0.01, 30)
        ),
        "health_db_warn_ms": env.float(
            "HEALTH_DB_WARN_MS", default=d.health_db_warn_ms, validate=ma.validate.Range(0.1, 60_000)
        ),
        "health_db_cache_ttl": env.float(
            "HEALTH_DB_CACHE_TTL", default=d.health_db_cache_ttl, validate=ma.validate.Range(0, 3_600)
        ),
        "health_show_details": env.enum(
            "HEALTH_SHOW_DETAILS",
            default=Details.WHEN_AUTHORIZED if deployed else Details.ALWAYS,
            enum=Details,
            by_value=True,
        ),
        "health_token": env.str("HEALTH_TOKEN", default=None),
        "allowed_hosts": tuple(
            p.strip() for p in env.list("ALLOWED_HOSTS", default=list(d.allowed_hosts), validate=_host_patterns) or ()
        ),
        "trusted_proxies": _entries(env.list("TRUSTED_PROXIES", default=[], validate=_networks)),
        "metrics_enabled": env.bool("METRICS_ENABLED", default=d.metrics_enabled),
        "metrics_dir": env.path("METRICS_DIR", default=None),
        "db_slow_query_ms": env.float(
            "DB_SLOW_QUERY_MS", default=d.db_slow_query_ms, validate=ma.validate.Range(0, 3_600_000)
        ),
        "shutdown_drain_seconds": env.float(
            "SHUTDOWN_DRAIN_SECONDS",
            default=5.0 if deployed else d.shutdown_drain_seconds,
            validate=ma.validate.Range(0, 300),
        ),
        "http_max_head_bytes": env.int(
            "HTTP_MAX_HEAD_BYTES", default=d.http_max_head_bytes, validate=ma.validate.Range(1_024, 1 << 20)
        ),
        "http_head_timeout": env.float(
            "HTTP_HEAD_TIMEOUT", default=d.http_head_timeout, validate=ma.validate.Range(0.1, 300)
        ),
        "http_keepalive_timeout": env.float(
            "HTTP_KEEPALIVE_TIMEOUT", default=d.http_keepalive_timeout, validate=ma.validate.Range(0.1, 3_600)
        ),
        "http_max_pipelined": env.int(
            "HTTP_MAX_PIPELINED", default=d.http_max_pipelined, validate=ma.validate.Range(1, 1_000)
        ),
        "http_max_connections": env.int(
            "HTTP_MAX_CONNECTIONS", default=d.http_max_connections, validate=ma.validate.Range(1, 1_000_000)
        ),
        "otel_service_name": env.str(
            "OTEL_SERVICE_NAME", default=d.otel_service_name, validate=ma.validate.Length(1, 255)
        ),
        "otel_exporter_otlp_endpoint": env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default=None, validate=_otlp_endpoint),
        "otel_traces_sampler": env.str(
            "OTEL_TRACES_SAMPLER", default=d.otel_traces_sampler, validate=ma.validate.OneOf(TRACES_SAMPLERS)
        ),
        "otel_traces_sampler_arg": env.float("OTEL_TRACES_SAMPLER_ARG", default=None, validate=ma.validate.Range(0, 1)),
        "otel_sdk_disabled": env.bool("OTEL_SDK_DISABLED", default=d.otel_sdk_disabled),
    }
    try:
        env.seal()
        errors: dict[str, list[str]] = {}
    except EnvValidationError as exc:
        errors = {name: list(messages) for name, messages in exc.error_messages.items()}  # type: ignore[union-attr]

    _check_together(values, errors, app_env)
    if errors:
        raise ConfigError(errors)
    return Settings(**values)


def _check_together(values: dict[str, Any], errors: dict[str, list[str]], app_env: Any) -> None:
    """The checks that need more than one variable, or more than a variable's own value; `values` normalised."""
    deployed = isinstance(app_env, Environment) and app_env.is_deployed
    if values["log_level"]:
        values["log_level"] = values["log_level"].upper()
    if values["database_url"]:
        try:
            values["database_url"] = normalise_database_url(values["database_url"])
        except ValueError as exc:
            errors.setdefault("DATABASE_URL", []).append(str(exc))
    else:
        values["database_url"] = None
        if deployed:
            errors.setdefault("DATABASE_URL", []).append(f"Required when APP_ENV is {app_env}.")

    if values["secret_key"] is None:
        if deployed:
            errors.setdefault("SECRET_KEY", []).append(f"Required when APP_ENV is {app_env}.")
        values["secret_key"] = DEVELOPMENT_SECRET_KEY
    elif deployed and (problems := _check_secret_key(values["secret_key"])):
        errors.setdefault("SECRET_KEY", []).extend(problems)

    if values["service"] is not None and (problem := find_service(values["service"])) is not None:
        errors.setdefault("SERVICE", []).append(problem)

    token = values["health_token"]
    if token is not None and len(token) < 16:
        errors.setdefault("HEALTH_TOKEN", []).append("Must be at least 16 characters.")


def load_settings_or_exit() -> Settings:
    """`load_settings()` for a process starting up (a command, a server, alembic).

    An invalid configuration ends the process with exit status 1 and the error's message on
    stderr (`SystemExit` carrying the message, which Python prints), never a traceback.
    """
    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(exc.render()) from None
