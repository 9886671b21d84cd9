"""Configuration that validates must work at run time (issue 18, items 4 to 8): whatever `load_settings` accepts
works everywhere, and the rest is refused at start-up by the variable's name (a URL's parameters by theirs), never
with a value.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from svc.embedded import EmbeddedPostgres
from svc.settings import ConfigError, load_settings, mask_url, normalise_database_url
from tests.conftest import ROOT, UvicornProcess, asyncpg_dsn, scrubbed_environ

# The characters a URL must escape, and a `+` (a space in a form, a plus sign to libpq), a space and a `#`.
PASSWORD = "Pa55 w0rd+@/%&=?#-libpq"
Q_PASSWORD = quote(PASSWORD, safe="")
SECRET = "s3cret-value-7f3a9c"  # a value of a refused parameter: never repeated


def config_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> ConfigError:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None)
    return info.value


def svc(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`python -m svc ARGS` in `cwd`, with only the given variables of the service's (APP_ENV=test unless given)."""
    env = scrubbed_environ()
    env.update(PYTHONPATH=str(ROOT), APP_ENV="test", LOG_FORMAT="json")
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "svc", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# -- DATABASE_URL: one canonical form (items 4 and 5) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("postgresql://u:p@db:5433/app", "postgresql+asyncpg://u:p@db:5433/app"),
        ("postgresql://u@db/app?sslmode=verify-full", "postgresql+asyncpg://u@db/app?ssl=verify-full"),
        ("postgresql://u@db/app?ssl=require", "postgresql+asyncpg://u@db/app?ssl=require"),
        (f"postgresql://u@db/app?password={Q_PASSWORD}", f"postgresql+asyncpg://u:{Q_PASSWORD}@db/app"),
        (
            f"postgresql:///app?host=127.0.0.1&port=5433&user=u&password={Q_PASSWORD}",
            f"postgresql+asyncpg://u:{Q_PASSWORD}@127.0.0.1:5433/app",
        ),
        ("postgres://?host=db&dbname=app&user=u", "postgresql+asyncpg://u@db/app"),
        ("postgresql://u@/app?host=/run/postgresql", "postgresql+asyncpg://u@/app?host=%2Frun%2Fpostgresql"),
        ("postgresql:///app?host=/run/pg&port=5433", "postgresql+asyncpg://:5433/app?host=%2Frun%2Fpg"),
        ("postgresql://%2Frun%2Fpg/app", "postgresql+asyncpg:///app?host=%2Frun%2Fpg"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql+asyncpg://postgres@/postgres?host=%2Ftmp%2Fpg"),
        ("postgresql:///app?host=::1&user=u", "postgresql+asyncpg://u@[::1]/app"),
        ("postgresql://u@db/my%20app?user=", "postgresql+asyncpg://u@db/my%20app"),
    ],
    ids=[
        "plain",
        "sslmode",
        "ssl",
        "password parameter",
        "everything in the query",
        "no path",
        "socket directory",
        "socket directory and port",
        "encoded socket directory",
        "embedded server",
        "ipv6 parameter",
        "empty parameter",
    ],
)
def test_libpq_parameters_move_into_the_url_every_consumer_reads(url: str, canonical: str) -> None:
    assert normalise_database_url(url) == canonical
    assert normalise_database_url(canonical) == canonical
    if Q_PASSWORD in url:  # read back as the engine, the probe and migrations read it (svc/postgres.py)
        assert make_url(canonical).password == PASSWORD


# (URL, what the message must say): each value is SECRET, and appears nowhere.
REFUSED = [
    (
        f"postgresql://u@db/app?connect_timeout=1{SECRET}&options=-c%20statement_timeout%3D{SECRET}",
        "Unsupported parameter(s) connect_timeout, options: use DB_CONNECT_TIMEOUT instead of connect_timeout; "
        "options is not supported.",
    ),
    (
        f"postgresql://u@db/app?application_name={SECRET}",
        "Unsupported parameter(s) application_name: use DB_APPLICATION_NAME instead of application_name.",
    ),
    (
        f"postgresql://u@db/app?target_session_attrs={SECRET}&sslrootcert=/{SECRET}",
        "Unsupported parameter(s) sslrootcert, target_session_attrs: use PGSSLROOTCERT instead of sslrootcert; "
        "target_session_attrs is not supported.",
    ),
    (
        f"postgresql://u@db/app?prepared_statement_cache_size=0&{SECRET.upper()}=1",
        "Unsupported parameter(s) prepared_statement_cache_size, 1 more: use DB_STATEMENT_CACHE_SIZE",
    ),
    (f"postgresql://u:{SECRET}@db/app?password={SECRET}", "Given twice: password."),
    (f"postgresql://u@db/app?user={SECRET}&dbname={SECRET}", "Given twice: dbname, user."),
    (f"postgresql://u@db/app?ssl=require&sslmode={SECRET}", "Given twice: sslmode."),
    (f"postgresql:///app?host=a,{SECRET}", "Several hosts are not supported."),
    (f"postgresql:///app?host={SECRET}!", "The host must be a host name, an IP address or a unix-socket directory."),
    (f"postgresql:///app?host=db&port={SECRET}", "The port must be a number from 1 to 65535."),
    (f"postgresql://u@db/app?sslmode={SECRET}", "sslmode must be one of disable, allow, prefer, require,"),
    (f"postgresql://u@db/app?{SECRET}", "Each query parameter must be name=value."),
    (f"postgresql:///app?user={SECRET}", "A host is required."),
]
REFUSED_IDS = [
    "connect_timeout and options",
    "application_name",
    "other libpq parameters",
    "driver parameters",
    "password twice",
    "user and database twice",
    "ssl twice",
    "several hosts",
    "bad host",
    "bad port",
    "bad sslmode",
    "no value",
    "no host",
]


@pytest.mark.usefixtures("isolated_env")
@pytest.mark.parametrize(("url", "message"), REFUSED, ids=REFUSED_IDS)
def test_a_parameter_that_would_not_reach_every_connection_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    error = config_error(monkeypatch, DATABASE_URL=url)
    assert list(error.errors) == ["DATABASE_URL"]
    assert f"  - DATABASE_URL: {message}" in str(error)
    assert SECRET.lower() not in str(error).lower()


@pytest.mark.e2e
@pytest.mark.parametrize(("url", "message"), REFUSED[:5], ids=REFUSED_IDS[:5])
def test_check_config_refuses_such_a_parameter_by_name_without_its_value(
    tmp_path: Path, url: str, message: str
) -> None:
    result = svc("check-config", cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 1
    assert f"  - DATABASE_URL: {message}" in result.stderr
    assert SECRET.lower() not in (result.stdout + result.stderr).lower()


@pytest.mark.usefixtures("isolated_env")
@pytest.mark.parametrize(
    "url",
    [f"postgresql://svc:{Q_PASSWORD}@db/app", f"postgresql://svc@db/app?password={Q_PASSWORD}"],
    ids=["before the host", "as a parameter"],
)
def test_the_password_is_masked_wherever_it_was_given(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    masked = load_settings(env_file=None).masked()["DATABASE_URL"]
    assert masked == "postgresql+asyncpg://svc:********@db/app"
    assert mask_url(url).count("********") == 1
    for text in (masked, mask_url(url)):
        assert PASSWORD not in text
        assert Q_PASSWORD not in text


@pytest.mark.e2e
def test_check_config_masks_a_password_given_as_a_parameter(tmp_path: Path) -> None:
    result = svc("check-config", cwd=tmp_path, DATABASE_URL=f"postgresql://svc@db/app?password={Q_PASSWORD}")
    assert result.returncode == 0, result.stderr
    assert "postgresql+asyncpg://svc:********@db/app" in result.stdout
    assert Q_PASSWORD not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# Every accepted libpq form, end to end: migrations, the health probe (and schema check), and a session.

ROLE = "svc_libpq"


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A private PostgreSQL that checks the password of role ROLE (PASSWORD, SCRAM) on its unix socket; its URL."""
    # Not under pytest's basetemp: see tests/conftest.py (the server's own user must reach the directory).
    parent = Path(tempfile.mkdtemp(prefix="svc-test-libpq-"))
    server = EmbeddedPostgres(parent / "pg")
    try:
        url = server.start()

        async def configure() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
                hba = Path(await conn.fetchval("SHOW hba_file"))
                hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())  # noqa: ASYNC240 - set-up
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

        asyncio.run(configure())
        yield make_url(normalise_database_url(url)).set(username=ROLE, password=PASSWORD).render_as_string(False)
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)


def libpq_url(url: str, layout: str) -> str:
    """The database of `url` (any accepted form) written in one of libpq's layouts."""
    parts = make_url(url)
    socket = parts.query.get("host")
    params = {
        "host": socket if isinstance(socket, str) else parts.host,
        "port": parts.port,
        "user": parts.username,
        "password": parts.password,
        "dbname": parts.database,
    }

    def query(*names: str) -> str:
        return "&".join(f"{name}={quote(str(params[name]), safe='')}" for name in names if params[name] is not None)

    if layout == "everything in the query":
        return "postgresql://?" + query("host", "port", "user", "password", "dbname")
    if layout == "database in the path":
        return f"postgresql:///{parts.database}?" + query("host", "port", "user", "password")
    user = quote(str(parts.username), safe="")
    host = "" if isinstance(socket, str) else f"{parts.host}:{parts.port or 5432}"
    located = query("host") if isinstance(socket, str) else ""
    if layout == "password as a parameter":
        return f"postgres://{user}@{host}/{parts.database}?{located}&" + query("password")
    assert layout.startswith("sslmode=")
    secret = f":{quote(str(parts.password), safe='')}" if parts.password else ""
    return f"postgresql://{user}{secret}@{host}/{parts.database}?{located}&{layout}"


LAYOUTS = ["everything in the query", "database in the path", "password as a parameter", "sslmode=disable"]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("server", "layout"),
    [("password_server", layout) for layout in LAYOUTS] + [("database_url", "everything in the query")],
)
def test_every_accepted_libpq_form_works_for_migrations_the_probe_and_sessions(
    request: pytest.FixtureRequest, uvicorn: Callable[..., UvicornProcess], tmp_path: Path, server: str, layout: str
) -> None:
    url = libpq_url(request.getfixturevalue(server), layout)
    migrated = svc("migrate", cwd=tmp_path, DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stderr
    app = uvicorn("--factory", app="tests.apps:create_test_app", wait=False, DATABASE_URL=url)
    app.wait_ready("/health/ready", timeout=20)  # the probe and the schema check reached the database
    with httpx.Client(base_url=app.base_url, timeout=10) as client:
        assert client.get("/hold").status_code == 200  # a session on the pool
        assert client.get("/health/db").json()["status"] in ("pass", "warn")
    assert app.stop() == 0
    assert PASSWORD not in app.output() + migrated.stderr + migrated.stdout


def test_the_password_server_refuses_a_wrong_password(password_server: str) -> None:
    wrong = make_url(password_server).set(password="not-" + PASSWORD).render_as_string(False)

    async def connect() -> None:
        await asyncpg.connect(asyncpg_dsn(wrong))

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect())


# -- ALLOWED_HOSTS, HEALTH_TOKEN, METRICS_DIR: values that could never work (items 6, 7 and 8) ----------------------------

UNWORKABLE = [
    ("ALLOWED_HOSTS", "", 'Must name at least one host, or "*" for any'),
    ("ALLOWED_HOSTS", " , ,", 'Must name at least one host, or "*" for any'),
    ("HEALTH_TOKEN", "health-token-0123456789\n", "Must not begin or end with whitespace"),
    ("HEALTH_TOKEN", " health-token-0123456789", "Must not begin or end with whitespace"),
    ("HEALTH_TOKEN", " " * 24, "Must not begin or end with whitespace"),
    ("HEALTH_TOKEN", "health-token\r\n0123456789", "Must not begin or end with whitespace"),
    ("METRICS_DIR", "", "Must not be empty"),
    ("METRICS_DIR", "  ", "Must not be empty"),
]
UNWORKABLE_IDS = [
    "no hosts",
    "only commas",
    "token with a trailing newline",
    "token with a leading space",
    "token of spaces",
    "token with a line break",
    "empty metrics dir",
    "blank metrics dir",
]


@pytest.mark.usefixtures("isolated_env")
@pytest.mark.parametrize(("name", "value", "message"), UNWORKABLE, ids=UNWORKABLE_IDS)
def test_a_value_that_could_never_work_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    error = config_error(monkeypatch, **{name: value})
    assert list(error.errors) == [name]
    assert message in str(error)
    if value.strip():
        assert value.strip() not in str(error)


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "value", "message"), UNWORKABLE, ids=UNWORKABLE_IDS)
def test_serve_refuses_to_start_with_a_value_that_could_never_work(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    result = svc("serve", "--port", "0", cwd=tmp_path, **{name: value})
    assert result.returncode == 1
    assert result.stderr.startswith("svc: invalid configuration (1 variable(s)):")
    assert f"  - {name}: {message}" in result.stderr
    if value.strip():
        assert value.strip() not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing was started, and no metrics directory made here


@pytest.mark.usefixtures("isolated_env")
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ALLOWED_HOSTS", "*", ("*",)),
        ("HEALTH_TOKEN", "a health token with spaces", "a health token with spaces"),
        ("METRICS_DIR", "./metrics", Path("metrics")),
    ],
)
def test_values_that_can_work_are_still_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: object
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(env_file=None), name.lower()) == expected
