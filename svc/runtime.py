"""What the lifespan makes, in one typed object: the settings, the database side, metrics and the lifecycle phase."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from svc.errors import ServiceUnavailable
from svc.settings import Settings

if TYPE_CHECKING:
    from starlette.requests import Request

    from svc.db import Database
    from svc.metrics import Metrics
    from svc.otel import Tracing
    from svc.probe import DatabaseProbe
    from svc.schema import SchemaCheck

__all__ = ["Phase", "Runtime", "database"]


class Phase(StrEnum):
    """Where the service is in its life; readiness is 200 only while `SERVING`."""

    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    FAILED = "failed"

    @property
    def reason(self) -> str:
        """Why the service is not ready in this phase (empty while serving)."""
        return _REASONS[self]


_REASONS = {
    Phase.STARTING: "Starting up.",
    Phase.SERVING: "",
    Phase.DRAINING: "Shutting down.",
    Phase.FAILED: "Start-up failed (see the log).",
}


@dataclass(eq=False)
class Runtime:
    """One application's runtime: made by `create_app`, filled in by the lifespan's background start-up.

    `db`, `probe` and `schema` are None until start-up has made them; handlers reach the database
    through `database()`, which answers 503 until then.
    """

    settings: Settings
    metrics: Metrics | None = None
    phase: Phase = Phase.STARTING
    started_monotonic: float = field(default_factory=time.monotonic)
    db: Database | None = None
    probe: DatabaseProbe | None = None
    schema: SchemaCheck | None = None
    startup: asyncio.Task[None] | None = None
    tracing: Tracing | None = None  # OpenTelemetry, when configured (`Settings.tracing`)

    async def wait_started(self, deadline: float) -> Phase:
        """The phase once the background start-up has finished, or at `deadline` (a `loop.time()`) if sooner."""
        task = self.startup
        if self.phase is Phase.STARTING and task is not None and not task.done():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining > 0:
                await asyncio.wait({task}, timeout=remaining)
        return self.phase

    def database(self) -> Database:
        """The database, for handlers: a 503 problem (with `Retry-After`) while starting, draining or failed."""
        db = self.db
        if db is None or (self.phase is not Phase.SERVING and self.phase is not Phase.DRAINING):
            phase = self.phase if self.phase is not Phase.SERVING else Phase.STARTING
            raise ServiceUnavailable(f"The service is not ready: {phase.reason}", headers={"Retry-After": "1"})
        return db


def database(request: Request) -> Database:
    """The database of the app serving `request` (`Runtime.database()`: a 503 problem while not ready)."""
    runtime: Runtime = request.app.runtime
    return runtime.database()
