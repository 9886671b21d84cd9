"""The apps as servers: each under uvicorn with the production flags (bench/harness.py), one worker, on the
benchmark database; svc's in its production configuration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Server, child_env, production_env
from bench.techempower.common import POOL_SIZE


@dataclass(frozen=True)
class App:
    """One app: its name (the module in bench/techempower/), whether it is svc, and the variables it runs with."""

    name: str
    svc: bool = False
    variables: tuple[tuple[str, str], ...] = ()
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name


APPS = (
    App("raw"),
    App("svc_fast", svc=True),
    App("svc_orm", svc=True),
    App("starlette_asyncpg"),
    App("fastapi_asyncpg"),
    App("fastapi_orm"),
)
#: svc's fast path with its access log on (every other svc server runs with it off, as bench/load.py's do).
SVC_FAST_ACCESS_LOG = App("svc_fast", svc=True, variables=(("ACCESS_LOG", "true"),), label="svc_fast+access_log")
#: Every app the load script may run, by title.
ALL_APPS = {app.title: app for app in (*APPS, SVC_FAST_ACCESS_LOG)}


def server(app: App, database_url: str, cwd: Path, cpu: int | None = None) -> Server:
    """`app` under uvicorn (not started). svc sends its own `Server` header, so uvicorn's is off for it,
    as `python -m svc serve` has it; the others get uvicorn's. Every pool holds `POOL_SIZE` connections."""
    target = f"bench.techempower.{app.name}:app"
    if app.svc:
        env = production_env(database_url, DB_POOL_SIZE=str(POOL_SIZE), DB_MAX_OVERFLOW="0", **dict(app.variables))
        return Server(app.title, target, child_env(env), cwd, cpu, args=("--no-server-header",))
    env = {"DATABASE_URL": database_url, "TECHEMPOWER_POOL_SIZE": str(POOL_SIZE), **dict(app.variables)}
    return Server(app.title, target, child_env(env), cwd, cpu)


@contextlib.contextmanager
def running(servers: Sequence[Server], timeout: float = 60.0) -> Iterator[None]:
    """All `servers` started, each answering `/db` with a 200 (svc's answer 503 until their start-up is done)."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_for("/db", timeout=timeout, interval=0.05)
        yield
    finally:
        for s in servers:
            s.stop()
