"""End to end: a real uvicorn process, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, UvicornProcess, scrubbed_environ

pytestmark = pytest.mark.e2e

SECRET_PASSWORD = "e2e-pa55word-never-printed"
SECRET_KEY = "changeme"


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
    env = scrubbed_environ()
    env.update(
        PYTHONPATH=str(ROOT),
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
