"""Profile svc's in-process hot path: direct ASGI calls, production configuration, on uvloop.

    uv run python bench/profile_app.py /health [--calls 20000] [--access-log]
    uv run python bench/profile_app.py /health/live --profiler cprofile
    uv run python bench/profile_app.py /health --layers     # what each middleware adds, per call

pyinstrument (a sampling profiler, low overhead) is used when importable, else cProfile (exact call
counts, but it inflates the cost of small functions). `--profiler none` only times the calls.
The test database is TEST_DATABASE_URL or the embedded PostgreSQL 18, as for the benchmarks.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import sys
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from harness import batch_runner, migrated_database, production_settings, request

from svc.app import create_app, started
from svc.logging import configure_logging


async def profile(app: Any, path: str, calls: int, profiler: str, out: io.TextIOBase) -> None:
    async with app.lifespan_context(app):
        await started(app)
        await request(app, "/health/ready")  # as once deployed: /health then reports the last database check
        response = await request(app, path)
        print(f"{path}: {response.status}, {len(response.body)} bytes", file=sys.stderr)
        run = batch_runner(app, path, calls)
        await run()  # warm-up
        start = time.perf_counter()
        await run()
        plain = (time.perf_counter() - start) / calls
        print(f"{path}: {plain * 1e6:.2f} µs per call without a profiler ({calls} calls)", file=sys.stderr)
        if profiler == "pyinstrument":
            from pyinstrument import Profiler

            with Profiler(interval=0.0001, async_mode="disabled") as p:
                await run()
            out.write(p.output_text(unicode=True, color=False, show_all=False, short_mode=False))
        elif profiler == "cprofile":
            with cProfile.Profile() as p:
                await run()
            stats = pstats.Stats(p, stream=out)  # type: ignore[arg-type]
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)


async def layers(app: Any, path: str, calls: int, repeats: int = 60) -> None:
    """What each part of the request path adds to a call of `path`: the raw-ASGI floor, the endpoint
    alone (its response sent with fixed headers), the router's lookup on top, then the app as built
    (the edge: request id, limits, headers, metrics, access line)."""
    import baseline
    from starlette.requests import Request

    from svc.http.routing import Route, Target

    async with app.lifespan_context(app):
        await started(app)
        await request(app, "/health/ready")
        stages: list[tuple[str, Any]] = [("raw ASGI floor (bench/baseline.py)", baseline.app)]
        route = next((r for r in app.routes if isinstance(r, Route) and r.path == path), None)
        if route is not None:

            async def bare(scope: Any, receive: Any, send: Any) -> None:
                scope["app"] = app
                response = await route.handler(Request(scope, receive))
                await baseline.send_with_headers(send, response, baseline.SVC_HEADERS)

            async def routed(scope: Any, receive: Any, send: Any) -> None:
                scope["app"] = app
                target = app.router.match(scope)
                assert isinstance(target, Target)
                assert target.handler is not None
                response = await target.handler(Request(scope, receive))
                await baseline.send_with_headers(send, response, baseline.SVC_HEADERS)

            stages += [("endpoint alone", bare), ("+ router", routed)]
        stages.append(("svc app as built (+ edge)", app))
        runs = [batch_runner(stage, path, calls) for _, stage in stages]
        best = [float("inf")] * len(stages)
        for run in runs:
            await run()  # warm-up
        for _ in range(repeats):  # interleaved, so that noise hits every stage alike
            for i, run in enumerate(runs):
                start = time.perf_counter()
                await run()
                best[i] = min(best[i], (time.perf_counter() - start) / calls)
        counts = []
        for run in runs:  # Python function calls per request: exact, unlike times on a shared machine
            with cProfile.Profile() as p:
                await run()
            counts.append(pstats.Stats(p).total_calls / calls)  # type: ignore[attr-defined]
        print(f"{path}: best of {repeats} interleaved batches of {calls} sequential in-process calls", file=sys.stderr)
        print(f"  {'':<40} {'per call':>10} {'(added)':>9} {'py calls':>9}", file=sys.stderr)
        for i, (label, _) in enumerate(stages):
            delta = "" if i == 0 else f"({(best[i] - best[i - 1]) * 1e6:+6.2f})"
            print(f"  {label:<40} {best[i] * 1e6:7.2f} µs {delta:>9} {counts[i]:9.1f}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="/health")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--access-log", action="store_true", help="ACCESS_LOG=true (lines go to /dev/null)")
    parser.add_argument("--variable", action="append", default=[], metavar="NAME=VALUE", help="more svc settings")
    parser.add_argument("--profiler", choices=["auto", "pyinstrument", "cprofile", "none"], default="auto")
    parser.add_argument("--layers", action="store_true", help="time each layer of the stack instead of profiling")
    args = parser.parse_args(argv)
    profiler = args.profiler
    if profiler == "auto":
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            profiler = "cprofile"
        else:
            profiler = "pyinstrument"
    variables = dict(v.split("=", 1) for v in args.variable)
    variables["ACCESS_LOG"] = "true" if args.access_log else "false"
    with migrated_database() as url, open(os.devnull, "w") as devnull:
        settings = production_settings(url, **variables)
        app = create_app(settings)
        configure_logging(settings.log_level, settings.log_format, stream=devnull)  # type: ignore[arg-type]
        try:
            if args.layers:
                uvloop.run(layers(app, args.path, min(args.calls, 300)))
            else:
                uvloop.run(profile(app, args.path, args.calls, profiler, sys.stdout))  # type: ignore[arg-type]
        finally:
            logging.getLogger().handlers.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
