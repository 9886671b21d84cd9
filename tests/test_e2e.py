"""End to end: a real uvicorn process, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, UvicornProcess

pytestmark = pytest.mark.e2e

SECRET_PASSWORD = "e2e-pa55word-never-printed"
SECRET_KEY = "changeme"


def clean_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DB_", "HEALTH_", "LOG_", "DATABASE_"))}
    env.pop("SECRET_KEY", None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(variables)
    return env


def test_uvicorn_serves_health_over_http_with_json_access_logs(uvicorn: Callable[..., UvicornProcess]) -> None:
    server = uvicorn()
    response = httpx.get(server.base_url + "/health", headers={"X-Request-ID": "e2e-1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["x-request-id"] == "e2e-1"
    assert not any(ch.isdigit() for ch in response.headers.get("server", ""))
    assert httpx.get(server.base_url + "/health/ready").status_code == 200
    server.stop()
    entries = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "svc.access" and e["request_id"] == "e2e-1"]
    assert len(access) == 1
    assert access[0]["path"] == "/health"
    assert access[0]["route"] == "/health"
    assert access[0]["method"] == "GET"
    assert access[0]["status"] == 200
    assert access[0]["bytes"] == len(response.content)
    assert 0 <= access[0]["duration_ms"] < 10_000
    assert response.headers["server-timing"].startswith("app;dur=")
    assert not [e for e in entries if e["logger"] == "uvicorn.access"]
    assert all(line.startswith("{") for line in server.output().splitlines() if line.strip())


def test_uvicorn_refuses_to_start_on_invalid_configuration(tmp_path: Path) -> None:
    env = clean_env(
        APP_ENV="production",
        DATABASE_URL=f"mysql://svc:{SECRET_PASSWORD}@db/app",
        SECRET_KEY=SECRET_KEY,
        DB_POOL_SIZE="lots",
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "svc.app:app", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 2.0
    assert "Traceback" not in result.stderr
    for name in ("DATABASE_URL", "SECRET_KEY", "DB_POOL_SIZE"):
        assert f"  - {name}: " in result.stderr
    assert SECRET_PASSWORD not in result.stderr + result.stdout


def run_svc(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svc", *args],
        env=clean_env(**variables),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_prints_the_effective_configuration_masked(tmp_path: Path) -> None:
    result = run_svc(
        "check-config",
        cwd=tmp_path,
        DATABASE_URL=f"postgresql://svc:{SECRET_PASSWORD}@db/app",
        HEALTH_TOKEN="a-health-token-0123456789",
    )
    assert result.returncode == 0, result.stderr
    assert "DATABASE_URL" in result.stdout
    assert "postgresql+asyncpg://svc:********@db/app" in result.stdout
    assert SECRET_PASSWORD not in result.stdout + result.stderr
    assert "a-health-token-0123456789" not in result.stdout + result.stderr


def test_check_config_exits_1_listing_every_problem(tmp_path: Path) -> None:
    result = run_svc("check-config", cwd=tmp_path, APP_ENV="staging", LOG_FORMAT="xml")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for name in ("DATABASE_URL", "SECRET_KEY", "LOG_FORMAT"):
        assert f"  - {name}: " in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["check-config", "--help"]])
def test_cli_help_lists_commands(tmp_path: Path, args: list[str]) -> None:
    result = run_svc(*args, cwd=tmp_path)
    assert result.returncode == 0
    assert "check-config" in result.stdout or "effective configuration" in result.stdout


def test_uvicorn_answers_liveness_before_the_database_side_has_started(
    uvicorn: Callable[..., UvicornProcess],
) -> None:
    """Start-up work readiness needs runs after the server accepts: liveness first, readiness once it is done."""
    server = uvicorn()  # waits for /health/live only
    ready = httpx.get(server.base_url + "/health/ready", timeout=10)  # waits for the start-up, then checks
    assert ready.status_code == 200, ready.text
    server.stop()
    messages = [json.loads(line)["message"] for line in server.output().splitlines() if line.startswith("{")]
    startup = messages.index("Application startup complete.")
    started = next(i for i, m in enumerate(messages) if m.startswith("svc ") and " started (" in m)
    assert startup < started  # uvicorn's start-up (and so its accepting connections) came first
