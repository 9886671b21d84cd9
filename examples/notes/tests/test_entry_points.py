"""The commands the README gives for the example, run as a user runs them from the repository root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def environ(svc_database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SERVICE", "APP_ENV", "DATABASE_URL")}
    return {**env, "APP_ENV": "test", "DATABASE_URL": svc_database_url, "LOG_FORMAT": "json"}


def test_migrate_applies_the_foundations_and_the_examples_migrations(environ: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.notes", "migrate"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "notes" in result.stderr  # "already at head (0002_notes…)": the example's revisions are the head


@pytest.fixture
def server(environ: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "uvicorn.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.notes.app:app", "--port", str(port)],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while httpx_status(base + "/health/ready") != 200:
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "uvicorn.log").read_text()
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


def test_uvicorn_serves_the_foundations_endpoints_and_notes(server: str) -> None:
    with httpx.Client(base_url=server, timeout=5) as client:
        created = client.post("/notes", json={"title": "From uvicorn"})
        assert created.status_code == 201, created.text
        assert client.get(created.headers["location"]).json()["title"] == "From uvicorn"
        assert client.get("/health/live").status_code == 200
        assert "/notes/{id}" in client.get("/openapi.json").json()["paths"]
        client.delete(created.headers["location"])


def httpx_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
