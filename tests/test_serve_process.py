"""`python -m svc serve` as deployed (issue 18, items 11 and 13): every line it writes is JSON in production,
uvicorn's `--workers` supervisor's included, and SIGHUP drains like SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, scrubbed_environ

pytestmark = pytest.mark.e2e

SECRET_KEY = "serve-process-key-5f1e9a7c3b2d4e6f8a0b"


class Serve:
    """A real `python -m svc serve ARGS` in production configuration, its output (stdout and stderr) in a file."""

    def __init__(
        self, tmp_path: Path, database_url: str, *args: str, port: int | None = None, **variables: str
    ) -> None:
        self.port = free_port() if port is None else port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        env = scrubbed_environ()
        env.update(PYTHONPATH=str(ROOT), APP_ENV="production", DATABASE_URL=database_url, SECRET_KEY=SECRET_KEY)
        env.update(variables)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                # SIGHUP at its default action, as a terminal or supervisor leaves it: a suite run under nohup
                # would pass its SIG_IGN on, and svc rightly leaves an ignored SIGHUP ignored.
                ["env", "--default-signal=HUP", sys.executable, "-m", "svc", "serve", "--port", str(self.port), *args],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """Every line of the output, each parsed as JSON (a line that is not fails the test, naming it)."""
        parsed = []
        for line in self.output().splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n{self.output()}")
        return parsed

    def messages(self) -> list[str]:
        return [line["message"] for line in self.lines()]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Until `count` messages match `pattern`; those messages."""
        deadline = time.monotonic() + timeout
        while len(found := [m for m in self.messages() if re.search(pattern, m)]) < count:
            assert time.monotonic() < deadline, f"no {count} x {pattern!r} in:\n{self.output()}"
            time.sleep(0.05)
        return found

    def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.base_url + "/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def worker_pids(messages: list[str]) -> list[int]:
    return [int(m.split("[")[1].rstrip("]")) for m in messages if m.startswith("Started server process [")]


def test_serve_with_workers_writes_only_json_lines_through_a_worker_death_a_restart_and_a_stop(
    tmp_path: Path, migrated_database_url: str
) -> None:
    server = Serve(tmp_path, migrated_database_url, "--workers", "2", SHUTDOWN_DRAIN_SECONDS="0")
    try:
        server.ready()
        first = worker_pids(server.wait_for(r"^Started server process \[", 2))
        os.kill(first[0], signal.SIGKILL)  # the supervisor notices and starts another
        server.wait_for(r"^Child process \[\d+\] died$")
        server.wait_for(r"^Started server process \[", 3)
        # uvicorn's supervisor replaces every worker on SIGHUP (each old one gets SIGTERM): still so.
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(r"^Received SIGHUP, restarting processes\.$")
        server.wait_for(r"^Started server process \[", 5)
        server.wait_for(r"^Terminated child process \[", 2)
        server.ready()
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0, server.output()
    messages = server.messages()  # every line JSON
    [supervisor] = [line for line in server.lines() if line["message"].startswith("Started parent process [")]
    assert supervisor["logger"] == "uvicorn.error"
    assert messages[-1].startswith("Stopping parent process [")
    assert len(set(worker_pids(messages))) == 5


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_writes_only_json_lines_when_the_port_is_taken(
    tmp_path: Path, migrated_database_url: str, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Serve(tmp_path, migrated_database_url, "--workers", workers, port=taken.getsockname()[1])
        assert server.wait() == 1
    lines = server.lines()  # every line JSON
    assert any("address already in use" in line["message"].lower() for line in lines), server.output()
    assert (lines[-1]["level"], lines[-1]["message"]) == (
        "ERROR",
        "The server could not start (the reason is logged above)",
    )


def test_sighup_drains_a_single_process_serve_like_sigterm_and_exits_0(
    tmp_path: Path, migrated_database_url: str
) -> None:
    drain = 3.0
    server = Serve(tmp_path, migrated_database_url, SHUTDOWN_DRAIN_SECONDS=str(drain))
    try:
        server.ready()
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            ready = client.get("/health/ready")
            while ready.status_code == 200 and time.monotonic() - signalled < 1:
                ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json() == {"status": "fail"}  # production shows no details: the status says it
            assert client.get("/health/live").status_code == 200  # still serving during the drain
        assert time.monotonic() - signalled < drain, "the checks above must run within the drain delay"
        assert server.proc.poll() is None
    finally:
        returncode = server.wait()
    assert returncode == 0, server.output()
    assert time.monotonic() - signalled >= drain
    messages = server.messages()
    assert f"SIGHUP received: readiness fails now; shutting down in {drain:g} s" in messages
    assert "Application shutdown complete." in messages
