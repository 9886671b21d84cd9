"""A database outage is logged (issue 18, item 10): each change of the database check once, WARNING with its
reason when it fails or warns, INFO when it passes again; a steady state adds nothing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from svc.probe import ProbeResult, log_transition
from tests.conftest import PrivatePostgres, UvicornProcess


def result(status: str, output: str | None = None) -> ProbeResult:
    return ProbeResult(status, "2026-01-01T00:00:00.000Z", time.monotonic(), output=output)


REFUSED = "PostgreSQL refused the connection."
STARTING = "PostgreSQL is starting up or shutting down."
SLOW = "Response time 150 ms exceeds 100 ms."


@pytest.mark.parametrize(
    ("previous", "new", "logged"),
    [
        (None, result("pass"), []),
        (None, result("fail", REFUSED), [("WARNING", f"Database check fails: {REFUSED}")]),
        (result("pass"), result("pass"), []),
        (result("pass"), result("fail", REFUSED), [("WARNING", f"Database check fails: {REFUSED}")]),
        (result("fail", REFUSED), result("fail", REFUSED), []),
        (result("fail", REFUSED), result("fail", STARTING), [("WARNING", f"Database check fails: {STARTING}")]),
        (result("fail", STARTING), result("pass"), [("INFO", "Database check passes again (was fail)")]),
        (result("pass"), result("warn", SLOW), [("WARNING", f"Database check warns: {SLOW}")]),
        (result("warn", SLOW), result("warn", "Response time 170 ms exceeds 100 ms."), []),
        (result("warn", SLOW), result("pass"), [("INFO", "Database check passes again (was warn)")]),
        (result("warn", SLOW), result("fail", REFUSED), [("WARNING", f"Database check fails: {REFUSED}")]),
    ],
    ids=[
        "first pass",
        "first fail",
        "steady pass",
        "pass to fail",
        "steady fail",
        "another reason",
        "recovery",
        "pass to warn",
        "steady warn",
        "warn to pass",
        "warn to fail",
    ],
)
def test_each_change_of_the_database_check_is_logged_once(
    caplog: pytest.LogCaptureFixture, previous: ProbeResult | None, new: ProbeResult, logged: list[tuple[str, str]]
) -> None:
    caplog.set_level(logging.INFO, logger="svc.probe")
    log_transition(previous, new)
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "svc.probe"] == logged


def probe_lines(server: UvicornProcess) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "svc.probe"]


def poll_until(client: httpx.Client, status: int, within: float = 30.0) -> None:
    """`GET /health/db` until it answers `status`, then a few more times: the steady state."""
    deadline = time.monotonic() + within
    while client.get("/health/db").status_code != status:
        assert time.monotonic() < deadline, f"/health/db never answered {status}"
        time.sleep(0.05)
    for _ in range(10):
        assert client.get("/health/db").status_code == status
        time.sleep(0.02)


@pytest.mark.e2e
def test_an_outage_of_a_real_postgresql_logs_its_start_and_its_end_once(
    uvicorn: Callable[..., UvicornProcess], private_postgres: PrivatePostgres
) -> None:
    server = uvicorn(
        DATABASE_URL=private_postgres.url,
        HEALTH_DB_CACHE_TTL="0",  # every request checks: a steady state is many checks
        HEALTH_DB_WARN_MS="60000",  # no latency warning on a busy machine
        ACCESS_LOG="false",  # the outage must be visible without it
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        poll_until(client, 200)
        assert probe_lines(server) == []

        private_postgres.stop()
        poll_until(client, 503)
        failed = probe_lines(server)
        poll_until(client, 503)
        assert probe_lines(server) == failed  # still down: nothing more

        private_postgres.start()
        poll_until(client, 200)
        recovered = probe_lines(server)
        poll_until(client, 200)
        assert probe_lines(server) == recovered  # up again: nothing more
    assert server.stop() == 0

    assert failed, "the outage was not logged"
    # One line when the check fails; one more only if the reason changed (shutting down, then gone).
    for line, before in zip(failed, [None, *failed], strict=False):
        assert (line["level"], line["status"], line["check"]) == ("WARNING", "fail", "postgresql")
        assert line["message"].startswith("Database check fails: ")
        assert line["request_id"] is None  # about the database, not the request that happened to check
        assert before is None or line["message"] != before["message"]
    [*starting, back] = recovered[len(failed) :]
    assert all(line["level"] == "WARNING" for line in starting)  # "starting up", while the server comes back
    assert (back["level"], back["message"], back["previous_status"]) == (
        "INFO",
        "Database check passes again (was fail)",
        "fail",
    )
