"""What the test suite (tests/conftest.py) and the benchmarks (bench/harness.py) share, without pytest:
the test database, a clean environment for child processes, free ports and uvicorn subprocesses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from svc.embedded import EmbeddedPostgres
from svc.settings import Environment, Settings, normalise_database_url

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: Every variable the service reads (`load_settings`, and prometheus-client's own directory variable).
SERVICE_VARIABLES = frozenset({field.name.upper() for field in dataclasses.fields(Settings)})


def scrubbed_environ() -> dict[str, str]:
    """This process's environment without any variable the service reads, for the servers and commands tests start.

    Whatever a developer's shell sets (ALLOWED_HOSTS, METRICS_DIR, SHUTDOWN_DRAIN_SECONDS...) would
    otherwise change what those processes do; each test sets the variables it means.
    """
    return {name: value for name, value in os.environ.items() if name not in SERVICE_VARIABLES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def asyncpg_dsn(url: str) -> str:
    """`url` (the service's postgresql+asyncpg:// form) as `asyncpg.connect()` takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextlib.contextmanager
def database_for_tests(url: str | None = None) -> Iterator[str]:
    """The asyncpg URL of the test database: `url`, else TEST_DATABASE_URL, else the embedded PostgreSQL 18
    in .data/test-postgres (shared by the suite and the benchmarks: the last process to let go of it stops it)."""
    if url := url or os.environ.get("TEST_DATABASE_URL"):
        yield normalise_database_url(url)
        return
    server = EmbeddedPostgres(ROOT / ".data" / "test-postgres")
    try:
        yield normalise_database_url(server.start())
    finally:
        server.stop()


def migrate_to_head(url: str) -> str:
    """`url`, its schema upgraded to the migration scripts' head (as readiness requires)."""
    from svc.migrations import upgrade

    upgrade(Settings(app_env=Environment.TEST, database_url=url, log_format="json"))
    return url


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """One blocking `GET path` on a fresh connection; the status, or None if nothing answered."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return None
    if not head.startswith(b"HTTP/1.1 "):
        return None
    return int(head[9:12])


class UvicornProcess:
    """A real `uvicorn APP` subprocess on a free loopback port, started at once; its output goes to a log in `cwd`.

    `command` replaces `uvicorn APP` by another server that takes `--host` and `--port` (`python -m svc serve`,
    `scripts/run`). `prefix` goes before the interpreter (`taskset -c N`). The process has a session of its
    own, so Ctrl-C reaches its owner only, which stops it (`stop`).
    """

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        args: Sequence[str],
        app: str = "svc.app:app",
        *,
        name: str = "uvicorn",
        prefix: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log = cwd / f"{name}-{self.port}.log"
        server = [sys.executable, "-m", "uvicorn", app] if command is None else list(command)
        command = [*prefix, *server, "--host", HOST, "--port", str(self.port), *args]
        with self.log.open("wb") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, path: str = "/health/live", timeout: float = 30.0, interval: float = 0.05) -> float:
        """Poll `path` until it answers 200; the seconds since the process was started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}:\n{self.output()}")
            if http_status(self.port, path) == 200:
                return time.perf_counter() - self.started_at
            time.sleep(interval)
        raise TimeoutError(f"uvicorn did not answer {path} with 200 within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and wait for the exit (SIGKILL after `timeout` seconds); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
