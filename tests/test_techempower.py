"""bench/techempower (issue 15): every app passes the TechEmpower verifier under uvicorn, and the verifier
catches what breaks the rules."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.techempower import raw
from bench.techempower.common import create_pool
from bench.techempower.servers import APPS, App, running, server
from bench.techempower.setup import create_tables
from bench.techempower.verify import verify


@pytest.fixture
async def techempower_database(scratch_database: str) -> str:
    """A database of its own with World and Fortune filled: /updates writes, and svc's tables stay out of it."""
    await create_tables(scratch_database)
    return scratch_database


@pytest.mark.e2e
@pytest.mark.parametrize("app", APPS, ids=[app.name for app in APPS])
async def test_every_app_passes_the_verifier(app: App, techempower_database: str, tmp_path: Path) -> None:
    served = server(app, techempower_database, tmp_path)
    with running([served]):
        failures = await verify(served.url(""), techempower_database)
    assert failures == [], "\n".join(failures)


def defective(defect: str) -> Any:
    """The raw app with `Server` and `Date` added (uvicorn adds them on the wire) and one `defect`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if defect == "updates not written" and scope["path"] == "/updates":
            scope = {**scope, "path": "/queries"}
        if defect == "no clamping" and scope["query_string"] == b"queries=501":
            scope = {**scope, "query_string": b"queries=20"}

        async def send_with_defect(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(b"server", b"test"), (b"date", formatdate(usegmt=True).encode()), *message["headers"]]
                if defect == "no content-length":
                    headers = [(name, value) for name, value in headers if name != b"content-length"]
                message = {**message, "headers": headers}
            elif defect == "unescaped" and scope["path"] == "/fortunes":
                message = {**message, "body": html.unescape(message["body"].decode()).encode()}
            await send(message)

        await raw.app(scope, receive, send_with_defect)

    return app


@pytest.fixture
async def raw_pool(techempower_database: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The raw app's pool on the TechEmpower database, without running its lifespan."""
    pool = await create_pool(techempower_database)
    monkeypatch.setattr(raw, "_pool", pool)
    try:
        yield techempower_database
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("defect", "failure"),
    [
        ("none", None),
        ("unescaped", "/fortunes: not TechEmpower's page"),
        ("updates not written", "/updates?queries=20: no row changed"),
        ("no clamping", "/queries?queries=501: 20 rows, not 500"),
        ("no content-length", "/json: Content-Length []"),
    ],
)
async def test_the_verifier_catches_broken_rules(defect: str, failure: str | None, raw_pool: str) -> None:
    failures = await verify("http://testserver", raw_pool, httpx.ASGITransport(app=defective(defect)))
    if failure is None:
        assert failures == []
    else:
        assert any(f.startswith(failure) for f in failures), failures
