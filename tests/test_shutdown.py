"""Graceful shutdown of a real uvicorn: readiness fails at once, requests in flight finish, the engine goes, exit 0."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from svc.context import current
from svc.logging import configure_logging
from svc.shutdown import SIGNALS, drain_on_signals
from tests.conftest import UvicornProcess, cancelled, holding, wait_until

pytestmark = pytest.mark.e2e

GRACE = 10.0  # --timeout-graceful-shutdown
HOLD = 1.5  # how long each request in flight keeps its pooled connection
DRAIN = 3.0  # SHUTDOWN_DRAIN_SECONDS in the drain test: room for the checks below on a busy machine
IN_FLIGHT = 4
# What an unclean shutdown leaves in the log: a loop mixed up, a connection or task abandoned, an error.
SHUTDOWN_NOISE = ("Future attached to a different loop", "unclosed", "Task was destroyed", "Traceback", "ERROR")


def start_test_app(uvicorn: Callable[..., UvicornProcess], **variables: str) -> tuple[UvicornProcess, str]:
    """The service with tests/apps.py's routes, its connections named uniquely; ResourceWarnings shown."""
    name = f"svc-shutdown-{uuid.uuid4().hex[:8]}"
    server = uvicorn(
        "--factory",
        "--timeout-graceful-shutdown",
        str(int(GRACE)),
        app="tests.apps:create_test_app",
        DB_APPLICATION_NAME=name,
        PYTHONWARNINGS="default::ResourceWarning",
        **variables,
    )
    server.wait_ready("/health/ready")  # the engine is made in the background after start-up
    return server, name


async def connections(pg: Any, name: str) -> int:
    """The app's server-side connections: its pool's and its health probe's."""
    count: int = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY($1::text[])", [name, f"{name}:health"]
    )
    return count


def assert_clean_exit(server: UvicornProcess) -> None:
    output = server.output()
    assert "Application shutdown complete." in output
    for noise in SHUTDOWN_NOISE:
        assert noise not in output, output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_stop_signal_lets_requests_in_flight_finish_disposes_the_engine_and_exits_0(
    uvicorn: Callable[..., UvicornProcess], pg: Any, sig: signal.Signals
) -> None:
    server, name = start_test_app(uvicorn)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=GRACE) as client:
        in_flight = [asyncio.create_task(client.get("/hold", params={"seconds": HOLD})) for _ in range(IN_FLIGHT)]
        try:
            await wait_until(lambda: holding(client), IN_FLIGHT)
            assert await connections(pg, name) >= IN_FLIGHT
            signalled = time.monotonic()
            server.proc.send_signal(sig)
            responses = await asyncio.gather(*in_flight)
        finally:
            await cancelled(in_flight)
    returncode = await asyncio.to_thread(server.proc.wait, GRACE)
    stopped = time.monotonic() - signalled

    for response in responses:
        assert response.status_code == 200
        # Answered after the signal: readiness was already failing ("draining") while they finished.
        assert response.json()["phase"] == "draining"
    assert returncode == 0
    assert stopped < GRACE
    # The lifespan disposed of the pool and closed the probe: nothing of the app's is left on the server.
    await wait_until(lambda: connections(pg, name), 0, within=2.0)
    assert_clean_exit(server)


async def test_during_the_drain_delay_readiness_fails_while_requests_are_still_served(
    uvicorn: Callable[..., UvicornProcess], pg: Any
) -> None:
    server, name = start_test_app(uvicorn, SHUTDOWN_DRAIN_SECONDS=str(DRAIN))
    async with httpx.AsyncClient(base_url=server.base_url, timeout=GRACE) as client:
        assert (await client.get("/health/ready")).status_code == 200
        in_flight = asyncio.create_task(client.get("/hold", params={"seconds": DRAIN + HOLD}))
        try:
            await wait_until(lambda: holding(client), 1)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            ready = await client.get("/health/ready")
            while ready.status_code == 200 and time.monotonic() - signalled < 0.5:
                ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json() == {"status": "fail", "output": "Shutting down."}
            # Still accepting and serving everything else, database included, until the delay is over.
            async with httpx.AsyncClient(base_url=server.base_url, timeout=GRACE) as newcomer:
                assert (await newcomer.get("/health/live")).status_code == 200
                held = await newcomer.get("/hold")
                assert held.status_code == 200
                assert held.json()["phase"] == "draining"
                assert (await newcomer.get("/health/ready")).status_code == 503
            assert time.monotonic() - signalled < DRAIN, "the checks above must run within the drain delay"
            assert await connections(pg, name) >= 1
            response = await in_flight
        finally:
            await cancelled([in_flight])
    returncode = await asyncio.to_thread(server.proc.wait, GRACE)
    stopped = time.monotonic() - signalled

    assert response.status_code == 200
    assert returncode == 0
    assert DRAIN <= stopped < DRAIN + GRACE
    await wait_until(lambda: connections(pg, name), 0, within=2.0)
    assert_clean_exit(server)
    assert f"SIGTERM received: readiness fails now; shutting down in {DRAIN:g} s" in server.output()


async def test_the_signal_log_line_carries_no_request_id_of_the_interrupted_request() -> None:
    """A signal handler runs in whatever context the main thread is in, often some request's."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in SIGNALS}
    try:
        with drain_on_signals(types.SimpleNamespace(phase="serving"), 0):
            token = current.set(("the-interrupted-request", None))
            try:
                signal.raise_signal(signal.SIGINT)
            finally:
                current.reset(token)
            await asyncio.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        configure_logging("INFO", "json")
    assert received == [signal.SIGINT]  # handed on to the server's handler (as SIGINT: see svc/shutdown.py)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [line] = [line for line in lines if line["message"] == "SIGINT received: shutting down"]
    assert line["request_id"] is None
