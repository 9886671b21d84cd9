"""Schemathesis against a real uvicorn: every operation, every check, a fixed seed; zero failures.

The schema is the one the server serves at /openapi.json: the built-in endpoints' in three
configurations, and a sample resource's (tests/resource_app.py), described from its routes'
declarations alone. Each run is reproducible with the same command line by hand (printed on
failure), e.g.:

    schemathesis run http://127.0.0.1:8000/openapi.json --checks all --max-examples 30 --seed 6
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Run:
    variables: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)  # schemathesis's
    factory: str | None = None  # what `uvicorn --factory` serves, instead of `svc.app:app`
    paths: str | None = None  # a regular expression the paths of the operations fuzzed match; None: all
    max_examples: int = MAX_EXAMPLES


RUNS = {
    "development": Run(),
    "deployed, anonymous": Run(DEPLOYED),
    "deployed, with the token": Run(DEPLOYED, ["--header", f"Authorization: Bearer {TOKEN}"]),
    # The built-in endpoints are fuzzed above: here only the resource's (HEAD twins included).
    # The coverage phase tries every declared bound whatever `max_examples`: a few random cases more suffice.
    "user routes": Run(
        factory="tests.resource_app:create_resource_app", paths="^/(items|search|tags)", max_examples=10
    ),
}


def schemathesis(base_url: str, cwd: Path, max_examples: int, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
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


@pytest.mark.parametrize("run", RUNS.values(), ids=RUNS.keys())
def test_schemathesis_finds_no_failure(uvicorn: Callable[..., UvicornProcess], tmp_path: Path, run: Run) -> None:
    args, app = (["--factory"], run.factory) if run.factory else ([], "svc.app:app")
    server = uvicorn(*args, app=app, ACCESS_LOG="false", **run.variables)
    paths = httpx.get(f"{server.base_url}/openapi.json").json()["paths"]
    fuzzed = {path: item for path, item in paths.items() if re.search(run.paths or "", path)}
    # Schemathesis leaves out the operation that serves the schema it loaded (GET /openapi.json) unless told.
    operations = sum(len(item) for item in fuzzed.values()) - (run.paths is None)
    report_path = tmp_path / "report.json"
    options = [*run.options, "--report", "json", "--report-json-path", str(report_path)]
    if run.paths is not None:
        options += ["--include-path-regex", run.paths]
    result = schemathesis(server.base_url, tmp_path, run.max_examples, *options)
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
