"""`python -m svc`: every command listed with one line, `--help` everywhere, exit 0 or 1 with a reason, no traceback.

Each command runs as a real `python -m svc` process in an empty directory, without the developer's variables.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, scrubbed_environ

pytestmark = pytest.mark.e2e

COMMANDS = {
    "check-config": "validate and print the configuration, secrets masked",
    "lint-migrations": "check every migration's SQL with squawk (.squawk.toml)",
    "migrate": "apply pending migrations (alembic upgrade head)",
    "serve": "serve the app with uvicorn, configured for production",
}
PASSWORD = "cli-pa55word-never-printed"
COULD_NOT_START = "The server could not start (the reason is logged above)"


def cli_env(**variables: str) -> dict[str, str]:
    env = scrubbed_environ()
    # A fixed width: "one line each" is about the usual 80-column terminal.
    env.update(PYTHONPATH=str(ROOT), COLUMNS="80", APP_ENV="test")
    env.update(variables)
    return env


def svc(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svc", *args],
        env=cli_env(**variables),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command_with_its_summary_on_one_line(tmp_path: Path) -> None:
    result = svc("--help", cwd=tmp_path)
    assert result.returncode == 0
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in result.stdout.splitlines() if line[:4] == "    "}
    assert listed == COMMANDS
    assert "exits 0 on success and 1 on failure" in " ".join(result.stdout.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_that_exits_0(tmp_path: Path, command: str) -> None:
    result = svc(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m svc {command} ")
    assert result.stderr == ""


def test_serve_waits_at_most_20_s_for_requests_so_the_5_s_drain_fits_a_30_s_grace_period(tmp_path: Path) -> None:
    result = svc("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "SHUTDOWN_DRAIN_SECONDS + this below Kubernetes' terminationGracePeriodSeconds (default: 20)" in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["serve-forever"], "invalid choice: 'serve-forever'"),
        (["serve", "--port", "eighty"], "argument --port: not an integer: 'eighty'"),
        (["serve", "--workers", "0"], "argument --workers: must be from 1 to 1024, not 0"),
        (["check-config", "--verbose"], "unrecognized arguments: --verbose"),
    ],
    ids=["no command", "unknown command", "not a number", "out of range", "unknown option"],
)
def test_a_usage_error_exits_1_with_the_usage_and_the_reason(tmp_path: Path, args: list[str], message: str) -> None:
    result = svc(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("usage: python -m svc")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check-config", "migrate", "serve"])
def test_every_command_exits_1_naming_each_bad_variable_without_its_value(tmp_path: Path, command: str) -> None:
    result = svc(
        command,
        cwd=tmp_path,
        APP_ENV="production",
        DATABASE_URL=f"mysql://svc:{PASSWORD}@db/app",
        DB_POOL_SIZE="lots",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("svc: invalid configuration (3 variable(s)):")
    for name in ("DATABASE_URL", "SECRET_KEY", "DB_POOL_SIZE"):
        assert f"  - {name}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_check_config_exits_0_and_says_so(tmp_path: Path) -> None:
    result = svc("check-config", cwd=tmp_path, DB_POOL_SIZE="7")
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.split()[0] == "DB_POOL_SIZE"] == ["7"]
    assert result.stderr.endswith("configuration OK\n")


def test_check_config_prints_the_effective_configuration_masked(tmp_path: Path) -> None:
    result = svc(
        "check-config",
        cwd=tmp_path,
        DATABASE_URL=f"postgresql://svc:{PASSWORD}@db/app",
        HEALTH_TOKEN="a-health-token-0123456789",
    )
    assert result.returncode == 0, result.stderr
    assert "DATABASE_URL" in result.stdout
    assert "postgresql+asyncpg://svc:********@db/app" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert "a-health-token-0123456789" not in result.stdout + result.stderr


def test_check_config_exits_1_listing_every_problem(tmp_path: Path) -> None:
    result = svc("check-config", cwd=tmp_path, APP_ENV="staging", LOG_FORMAT="xml")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for name in ("DATABASE_URL", "SECRET_KEY", "LOG_FORMAT"):
        assert f"  - {name}: " in result.stderr


def test_migrate_exits_1_with_a_plain_reason_when_the_database_refuses(tmp_path: Path, refused_port: int) -> None:
    result = svc("migrate", cwd=tmp_path, DATABASE_URL=f"postgresql://svc:{PASSWORD}@127.0.0.1:{refused_port}/app")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("svc: migration failed: PostgreSQL refused the connection.")
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_migrate_exits_0_when_the_schema_is_at_head(tmp_path: Path, migrated_database_url: str) -> None:
    result = svc("migrate", cwd=tmp_path, DATABASE_URL=migrated_database_url)
    assert result.returncode == 0, result.stderr
    assert "svc: database schema already at head (" in result.stderr


def start_serve(tmp_path: Path, database_url: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "svc", "serve", "--port", str(port), *args],
        env=cli_env(DATABASE_URL=database_url, LOG_FORMAT="json"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            # Ready: started, and the background schema check has found the database at head.
            if httpx.get(base_url + "/health/ready", timeout=2).status_code == 200:
                return proc, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve did not answer:\n{proc.communicate()[0]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_runs_the_app_with_production_flags_and_exits_0_after_a_graceful_shutdown(
    tmp_path: Path, migrated_database_url: str, sig: signal.Signals
) -> None:
    proc, base_url = start_serve(tmp_path, migrated_database_url)
    try:
        response = httpx.get(base_url + "/health/live", headers={"X-Request-ID": "cli-1"})
        assert response.status_code == 200
        assert "server" not in response.headers
    finally:
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    # One access line, the service's own: uvicorn's is off.
    access = [line for line in output.splitlines() if '"request_id":"cli-1"' in line and "access" in line]
    assert len(access) == 1, output
    assert '"logger":"svc.access"' in access[0]
    assert "Traceback" not in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_exits_1_with_a_reason_when_the_app_fails_to_start(tmp_path: Path, workers: str) -> None:
    # The embedded PostgreSQL cannot be started under a regular file: every worker's lifespan fails.
    (tmp_path / "not-a-directory").write_text("")
    result = svc(
        "serve",
        "--port",
        str(free_port()),
        "--workers",
        workers,
        cwd=tmp_path,
        EMBEDDED_PG_DIR=str(tmp_path / "not-a-directory" / "pg"),
    )
    assert result.returncode == 1, result.stderr
    assert "Application startup failed" in result.stderr
    assert json.loads(result.stderr.splitlines()[-1])["message"] == COULD_NOT_START


def test_serve_exits_1_with_a_reason_when_the_port_is_taken(tmp_path: Path, migrated_database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = svc("serve", "--port", str(port), cwd=tmp_path, DATABASE_URL=migrated_database_url)
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()
    assert json.loads(result.stderr.splitlines()[-1])["message"] == COULD_NOT_START
    assert "Traceback" not in result.stderr
