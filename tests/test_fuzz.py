"""Schemathesis against a real uvicorn: every operation, every check, a fixed seed; zero failures.

The schema is the one the server serves at /openapi.json. Each run is reproducible with the same
command line by hand (printed on failure), e.g.:

    schemathesis run http://127.0.0.1:8000/openapi.json --checks all --max-examples 30 --seed 6
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 6  # issue 6
MAX_EXAMPLES = 30
TOKEN = "fuzz-health-token-0123456789"
# A deployed configuration: details behind the token, HSTS, and a Host allow-list (uvicorn is reached as 127.0.0.1).
DEPLOYED = {
    "APP_ENV": "staging",
    "SECRET_KEY": "fuzz-secret-key-9f8e7d6c5b4a3210fedcba",
    "HEALTH_SHOW_DETAILS": "when_authorized",
    "HEALTH_TOKEN": TOKEN,
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "SHUTDOWN_DRAIN_SECONDS": "0",  # staging's 5 s drain would only delay each stop
}
RUNS = {
    "development": ({}, []),
    "deployed, anonymous": (DEPLOYED, []),
    "deployed, with the token": (DEPLOYED, ["--header", f"Authorization: Bearer {TOKEN}"]),
}


def schemathesis(base_url: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        # A health probe is bounded by HEALTH_DB_TIMEOUT (0.8 s); anything near 5 s is a hang.
        "--max-response-time",
        "5",
        "--request-timeout",
        "10",
        *extra,
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
    # cwd: schemathesis and hypothesis keep their state (example database, reports) there, not in the checkout.
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("variables", "extra"), RUNS.values(), ids=RUNS.keys())
def test_schemathesis_finds_no_failure(
    uvicorn: Callable[..., UvicornProcess], tmp_path: Path, variables: dict[str, str], extra: list[str]
) -> None:
    server = uvicorn(ACCESS_LOG="false", **variables)
    paths = httpx.get(f"{server.base_url}/openapi.json").json()["paths"]
    # Schemathesis leaves out the operation that serves the schema it loaded: GET /openapi.json.
    operations = sum(len(item) for item in paths.values()) - 1
    report_path = tmp_path / "report.json"
    result = schemathesis(server.base_url, tmp_path, *extra, "--report", "json", "--report-json-path", str(report_path))
    output = f"{result.stdout}\n{result.stderr}\n--- server log ---\n{server.output()}"
    assert result.returncode == 0, output
    report = json.loads(report_path.read_text())
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    # Every operation was tested, none skipped; and not trivially: several cases each.
    assert report["operations"]["tested"] == operations, output
    assert report["test_cases"]["generated"] >= 10 * operations, output
    server.stop()
    assert "Traceback" not in server.output()
