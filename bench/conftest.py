"""Fixtures of the benchmark suite: the test database, one uvloop event loop for the session, and
svc apps in their production configuration with their lifespan running.

Run with `uv run pytest bench/ --benchmark-only -p no:cacheprovider` (see bench/README.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from harness import (
    BUDGET_S,
    TARGET_HEALTH_MEAN_S,
    batch_runner,
    migrated_database,
    percentile,
    production_settings,
    request,
    sampled_runner,
)
from starlette.applications import Starlette

from svc.app import create_app, started
from svc.logging import configure_logging

#: What the terminal summary prints: (name, per-call mean, p99, max) in seconds.
_REPORT: list[tuple[str, float | None, float, float]] = []


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The asyncpg URL of the test database: TEST_DATABASE_URL, or the embedded PostgreSQL 18."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="session")
def loop() -> Iterator[Any]:
    """One uvloop loop for the whole session (what uvicorn runs svc on); apps and lifespans live on it."""
    loop = uvloop.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


@pytest.fixture(scope="session")
def log_stream() -> Iterator[io.TextIOBase]:
    """Where svc's log handler writes during the session (/dev/null: formatting is paid, storage is not)."""
    with open(os.devnull, "w") as stream:
        yield stream


@pytest.fixture(scope="session")
def make_app(database_url: str, loop: Any, log_stream: io.TextIOBase) -> Iterator[Callable[..., Starlette]]:
    """`make_app(**variables)`: svc as `uvicorn svc.app:app` builds it in production, with its lifespan started.

    The configuration comes from `load_settings()` with APP_ENV=production, a valid SECRET_KEY, the test
    database and ACCESS_LOG=false, plus `variables`. Each app has answered /health/ready once. Apps are
    cached per set of variables for the session.
    """
    apps: dict[tuple[tuple[str, str], ...], Starlette] = {}
    stack = contextlib.AsyncExitStack()

    def make(**variables: str) -> Starlette:
        key = tuple(sorted(variables.items()))
        if key not in apps:
            settings = production_settings(database_url, **variables)
            app = create_app(settings)
            # create_app pointed the log handler at pytest's captured stderr; production writes to a stream.
            configure_logging(settings.log_level, settings.log_format, stream=log_stream)  # type: ignore[arg-type]
            loop.run_until_complete(stack.enter_async_context(app.lifespan_context(app)))
            assert loop.run_until_complete(started(app)), "start-up failed"
            # Ready, as a deployed instance is once its orchestrator has probed it: /health then reports
            # the last database check too.
            ready = loop.run_until_complete(request(app, "/health/ready"))
            assert ready.status == 200, ready
            apps[key] = app
        return apps[key]

    try:
        yield make
    finally:
        loop.run_until_complete(stack.aclose())
        root = logging.getLogger()
        for handler in root.handlers[:]:
            if getattr(handler, "stream", None) is log_stream:
                root.removeHandler(handler)


@contextlib.contextmanager
def production_logging(stream: io.TextIOBase) -> Iterator[None]:
    """Only svc's own handler on the root logger while timing: pytest's log capture is not production's."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [h for h in saved if getattr(h, "stream", None) is stream]
    try:
        yield
    finally:
        root.handlers = saved


@pytest.fixture
def time_asgi(loop: Any, log_stream: io.TextIOBase) -> Callable[..., dict[str, float]]:
    """`time_asgi(benchmark, app, path, batch=..., rounds=...)`: benchmark direct ASGI calls, assert the budget.

    Each round makes `batch` sequential calls inside one coroutine on the session loop, so the loop's
    own per-`run_until_complete` cost is paid once per round, not per call. pytest-benchmark is told
    the round has `batch` iterations and reports the time per call: the target runs the whole batch on
    its first call of a round and returns at once on the other `batch - 1` (~0.1 µs each, charged to the app).

    Then `samples` calls are timed one by one, and their p99 and max must be under the 200 ms budget.
    """

    def run(
        benchmark: Any,
        app: Starlette,
        path: str,
        *,
        batch: int,
        rounds: int = 30,
        warmup_rounds: int = 3,
        samples: int = 2000,
        status: int = 200,
    ) -> dict[str, float]:
        response = loop.run_until_complete(request(app, path))
        assert response.status == status, response
        batch_coro = batch_runner(app, path, batch)
        calls = 0

        def target() -> None:
            nonlocal calls
            if calls % batch == 0:
                loop.run_until_complete(batch_coro())
            calls += 1

        durations: list[float] = []
        with production_logging(log_stream):
            benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup_rounds, iterations=batch)
            loop.run_until_complete(sampled_runner(app, path, durations)(samples))
        mean = benchmark.stats.stats.mean if benchmark.stats is not None else None
        p50, p99, worst = percentile(durations, 50), percentile(durations, 99), max(durations)
        benchmark.extra_info.update(
            batch=batch,
            sampled_calls=samples,
            sampled_p50_us=round(p50 * 1e6, 2),
            sampled_p99_us=round(p99 * 1e6, 2),
            sampled_max_us=round(worst * 1e6, 2),
            budget_ms=BUDGET_S * 1000,
        )
        _REPORT.append((benchmark.name, mean, p99, worst))
        assert p99 < BUDGET_S, f"{path}: p99 {p99 * 1000:.1f} ms is over the {BUDGET_S * 1000:.0f} ms budget"
        assert worst < BUDGET_S, f"{path}: max {worst * 1000:.1f} ms is over the {BUDGET_S * 1000:.0f} ms budget"
        return {"mean": mean or float("nan"), "p50": p50, "p99": p99, "max": worst}

    return run


@pytest.fixture
def budget_report() -> Callable[[str, float | None, float, float], None]:
    """`budget_report(name, mean, p99, max)` (seconds): a line of the summary printed at the end of the run."""

    def add(name: str, mean: float | None, p99: float, worst: float) -> None:
        _REPORT.append((name, mean, p99, worst))

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT:
        return
    write = terminalreporter.write_line
    terminalreporter.section("svc budgets (200 ms at p99, asserted) and targets (reported)")
    for name, mean, p99, worst in _REPORT:
        mean_text = f"mean {mean * 1e6:9.2f} µs" if mean is not None else "mean        n/a"
        write(f"{name:<58} {mean_text}   p99 {p99 * 1000:8.3f} ms   max {worst * 1000:8.3f} ms")
    for name, mean, _, _ in _REPORT:
        label = {"[health]": "metrics on", "[health_metrics_off]": "metrics off"}.get(name[name.rfind("[") :])
        if label and mean is not None:
            verdict = "meets" if mean <= TARGET_HEALTH_MEAN_S else "MISSES"
            write(
                f"in-process /health ({label}) mean {mean * 1e6:.2f} µs vs target {TARGET_HEALTH_MEAN_S * 1e6:.0f} µs: "
                f"{verdict} it ({mean / TARGET_HEALTH_MEAN_S:.2f}x the target)"
            )
