"""Configuration: one frozen `Settings`, read from the environment once and validated as a whole."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit

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
    # they are reopened all the time. Requests beyond the pool wait up to db_pool_timeout for a connection.
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

    # Migrations (svc.migrations): how long one may wait for a lock (every query that needs the table queues
    # behind the wait) and run a statement (0: no limit), and how often a lock timeout is tried again.
    migration_lock_timeout: float = 0.1
    migration_statement_timeout: float = 0.0
    migration_lock_retries: int = 5
    # OpenTelemetry (the standard OTEL_* variables): spans are exported when an endpoint is set (`tracing`).
    otel_service_name: str = "svc"
    otel_exporter_otlp_endpoint: str | None = None
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float | None = None
    otel_sdk_disabled: bool = False
    # OpenTelemetry's runtime context: only the contextvars one follows asyncio's tasks (svc.otel relies on it).
    otel_python_context: str = "contextvars_context"

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
    """`url` with its password masked wherever it is given: before the host, or as a `password` parameter.

    A URL that does not parse is masked whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{MASK}"
    query = []
    for item in parts.query.split("&"):
        name = item.partition("=")[0]
        query.append(f"{name}={MASK}" if unquote(name) == "password" else item)
    return _unsplit(parts.scheme, f"{userinfo}{at}{hostport}", parts.path, "&".join(query), parts.fragment)


def _unsplit(scheme: str, netloc: str, path: str, query: str, fragment: str = "") -> str:
    """`urlunsplit`, except that an empty authority is kept (`postgresql:///db?host=/dir`), as libpq and SQLAlchemy read it."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")


# libpq's connection parameters that have a place in the URL itself: moved there from the query.
_IN_URL = ("user", "password", "host", "port", "dbname")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# What to set instead of a parameter svc refuses, where there is something.
_INSTEAD = {
    "connect_timeout": "DB_CONNECT_TIMEOUT",
    "application_name": "DB_APPLICATION_NAME",
    "command_timeout": "DB_COMMAND_TIMEOUT",
    "statement_cache_size": "DB_STATEMENT_CACHE_SIZE",
    "prepared_statement_cache_size": "DB_STATEMENT_CACHE_SIZE",
    # asyncpg reads libpq's variables for these.
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
}
# A parameter's name is repeated in a message only when it looks like one (not, say, a pasted secret).
_PARAMETER_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_TCP_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")


def normalise_database_url(url: str) -> str:
    """`url` in the one form every consumer reads: the engine, the probe, the schema check, migrations.

    That form is `postgresql+asyncpg://user:password@host:port/database?host=/dir&ssl=mode`: the
    user, password, host, port and database in the URL itself, wherever they were given (libpq's
    `user`, `password`, `host`, `port` and `dbname` query parameters are moved there), a unix-socket
    directory (a host starting with `/`) as the `host` query parameter, which SQLAlchemy's asyncpg
    dialect and `svc.postgres` both read, and libpq's `sslmode` as asyncpg's `ssl`. Every other
    parameter is refused by name: none would reach every connection the service makes. Idempotent.

    Raises ValueError with a message that never contains a value from the URL (parameter names aside).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("Not a valid URL.") from None
    if parts.scheme not in DATABASE_SCHEMES:
        raise ValueError("Scheme must be postgres://, postgresql:// or postgresql+asyncpg://.")
    given = _from_authority_and_path(parts, port)
    if any("=" not in item for item in parts.query.split("&") if item):
        raise ValueError("Each query parameter must be name=value.")
    twice: set[str] = set()
    unsupported: list[str] = []
    for name, value in _query(parts.query):
        key = "ssl" if name == "sslmode" else name  # libpq spells it sslmode, asyncpg ssl
        if key not in (*_IN_URL, "ssl"):
            unsupported.append(name)
        elif value and key in given:
            twice.add(name)
        elif value:  # libpq reads an empty value as not given
            given[key] = value
    problems = _unsupported(unsupported)
    if twice:
        problems.append(f"Given twice: {', '.join(sorted(twice))}.")
    problems += _invalid(given)
    if problems:
        raise ValueError(" ".join(problems))
    return _canonical(given)


def _query(query: str) -> list[tuple[str, str]]:
    """A URL's query parameters as libpq reads them: percent-decoded (a `+` is a plus sign, not a space)."""
    return [
        (unquote(name), unquote(value)) for name, _, value in (item.partition("=") for item in query.split("&") if item)
    ]


def _from_authority_and_path(parts: SplitResult, port: int | None) -> dict[str, str]:
    """The parameters a URL gives before its query, by libpq name, percent-decoded; empty ones left out."""
    hostport = parts.netloc.rpartition("@")[2]
    # As written (urlsplit lower-cases it), and decoded: a unix-socket directory may be given so.
    host = hostport[1 : hostport.find("]")] if hostport.startswith("[") else hostport.partition(":")[0]
    given = {
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),  # empty, as the embedded server's URL has it: no password
        "host": unquote(host),
        "port": "" if port is None else str(port),
        "dbname": unquote(parts.path[1:]),
    }
    return {name: value for name, value in given.items() if value}


def _unsupported(names: list[str]) -> list[str]:
    """The message refusing these parameters, by name, saying what to set instead where there is something."""
    if not names:
        return []
    shown = sorted({name for name in names if _PARAMETER_NAME.fullmatch(name)})
    others = sum(1 for name in names if name not in shown)
    listed = ", ".join([*shown, *([f"{others} more"] if others else [])])
    advice = [f"use {_INSTEAD[name]} instead of {name}" for name in shown if name in _INSTEAD]
    if refused := [name for name in shown if name not in _INSTEAD]:
        advice.append(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not supported")
    return [f"Unsupported parameter(s) {listed}: {'; '.join(advice) or 'not supported'}."]


def _invalid(given: dict[str, str]) -> list[str]:
    problems = []
    host = given.get("host")
    if host is None:
        problems.append("A host is required.")
    elif "," in host:
        problems.append("Several hosts are not supported.")
    elif not (host.startswith("/") or _TCP_HOST.fullmatch(host)):
        problems.append("The host must be a host name, an IP address or a unix-socket directory.")
    if "port" in given and not (given["port"].isdigit() and 1 <= int(given["port"]) <= 65_535):
        problems.append("The port must be a number from 1 to 65535.")
    if given.get("ssl", "disable") not in SSL_MODES:
        problems.append(f"sslmode must be one of {', '.join(SSL_MODES)}.")
    return problems


def _canonical(given: dict[str, str]) -> str:
    """The URL of `given` (validated parameters by libpq name, `ssl` for sslmode) in the canonical form."""
    userinfo = quote(given.get("user", ""), safe="")
    if "password" in given:
        userinfo += ":" + quote(given["password"], safe="")
    host, query = given["host"], []
    if host.startswith("/"):  # a unix-socket directory
        host, query = "", [("host", host)]
    elif ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if "ssl" in given:
        query.append(("ssl", given["ssl"]))
    netloc = f"{userinfo}@{host}" if userinfo else host
    if "port" in given:
        netloc += f":{int(given['port'])}"
    path = "/" + quote(given["dbname"], safe="") if "dbname" in given else ""
    return _unsplit("postgresql+asyncpg", netloc, path, urlencode(query, quote_via=quote))


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
    # No entry, a port or a stray character would make a list that never matches: every request refused.
    if not any(pattern.strip() for pattern in value):
        raise ma.ValidationError(
            'Must name at least one host, or "*" for any: an empty list would refuse every request.'
        )
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


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ma.ValidationError("Must not be empty (it would mean the working directory): unset it for the default.")


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
        "metrics_dir": env.str("METRICS_DIR", default=None, validate=_not_blank),
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
        "migration_lock_timeout": env.float(
            "MIGRATION_LOCK_TIMEOUT", default=d.migration_lock_timeout, validate=ma.validate.Range(0.001, 3_600)
        ),
        "migration_statement_timeout": env.float(
            "MIGRATION_STATEMENT_TIMEOUT", default=d.migration_statement_timeout, validate=ma.validate.Range(0, 86_400)
        ),
        "migration_lock_retries": env.int(
            "MIGRATION_LOCK_RETRIES", default=d.migration_lock_retries, validate=ma.validate.Range(0, 100)
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
        "otel_python_context": env.str(
            "OTEL_PYTHON_CONTEXT", default=d.otel_python_context, validate=ma.validate.OneOf([d.otel_python_context])
        ),
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

    if values["metrics_dir"] is not None:
        values["metrics_dir"] = Path(values["metrics_dir"])

    if values["health_token"] is not None and (problems := _check_health_token(values["health_token"])):
        errors.setdefault("HEALTH_TOKEN", []).extend(problems)


def _check_health_token(token: str) -> list[str]:
    """What keeps `token` from ever matching a request's `Authorization: Bearer` header (empty: nothing)."""
    problems = []
    if len(token) < 16:
        problems.append("Must be at least 16 characters.")
    # HTTP drops whitespace around a header value, and a header cannot carry control characters, so such
    # a token could never be sent: refused rather than trimmed, so that what is configured is what is compared.
    if token != token.strip() or any(ord(c) < 32 or ord(c) == 127 for c in token):
        problems.append(
            "Must not begin or end with whitespace (such as a secret file's trailing newline) "
            "or hold control characters: no request could send it."
        )
    return problems


def load_settings_or_exit() -> Settings:
    """`load_settings()` for a process starting up (a command, a server, alembic).

    An invalid configuration ends the process with exit status 1 and the error's message on
    stderr (`SystemExit` carrying the message, which Python prints), never a traceback.
    """
    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(exc.render()) from None
