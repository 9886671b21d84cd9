"""The TechEmpower load benchmark: every app and test type under wrk, interleaved, ratios against `raw`.

    uv run python -m bench.techempower.load [--duration 3] [--rounds 3] [--only svc_fast,db] [--json out.json]
    uv run python -m bench.techempower.load --smoke      # what .ci/run runs: 1 s per scenario, nothing compared

World and Fortune are (re)created first in the benchmark database (`--database-url`, DATABASE_URL, else the
embedded PostgreSQL 18 in .data/postgres). Every app runs under uvicorn with the production flags
(bench/harness.py: one worker, uvloop, httptools, no access log), svc's in production configuration,
all pinned to one CPU and wrk (-t1, 64 connections) to another; each pool holds TECHEMPOWER_POOL_SIZE
(default 10) connections. Each app is verified (bench/techempower/verify.py) before anything is timed:
one that fails is reported and left out. Rounds run every scenario in an order rotated each round;
every ratio is the median over rounds of a paired ratio (the scenario over `raw`'s same test in the
same round). Needs `wrk`; without it, it says so and exits 0 (the smoke exits 1: CI must have it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BENCH, Server, cpus
from bench.techempower.common import held_database
from bench.techempower.servers import ALL_APPS, App, running, server
from bench.techempower.setup import create_tables
from bench.techempower.verify import verify

# bench/load.py imports its neighbours as top-level modules (everything under bench/ runs with bench/ on the path).
sys.path.insert(0, str(BENCH))
from load import WRK_SCRIPT, log, median_of, paired_ratio, run_wrk, terminate, warnings

#: TechEmpower's test types: name and path (queries and updates at 20, as the issue's table has them).
TESTS = {
    "json": "/json",
    "db": "/db",
    "queries": "/queries?queries=20",
    "updates": "/updates?queries=20",
    "fortunes": "/fortunes",
}
REFERENCE = "raw"
#: Issue 15's targets, ratios to `raw` in the same run (reported, never asserted).
TARGETS = {
    "svc_fast": {"json": "≥ 0.75", "db": "≥ 0.85", "queries": "≥ 0.90", "updates": "≥ 0.90", "fortunes": "≥ 0.80"},
    "svc_orm": {"db": "≥ 0.25, ≥ 2x fastapi_orm", "queries": "≥ 0.25", "updates": "≥ 0.25", "fortunes": "≥ 0.25"},
}
#: Ratios printed under each test's table: (app, reference).
EXTRA_RATIOS = [("svc_orm", "fastapi_orm"), ("svc_fast+access_log", "svc_fast"), ("svc_fast", "starlette_asyncpg")]


@dataclass
class Run:
    args: argparse.Namespace
    apps: list[App]
    tests: list[str]
    server_cpu: int | None = None
    client_cpu: int | None = None
    load: tuple[float, float] = (0.0, 0.0)
    failures: dict[str, list[str]] = field(default_factory=dict)
    results: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)
    warnings: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def timed(self) -> list[App]:
        return [app for app in self.apps if not self.failures.get(app.title)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.techempower.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="whole seconds per wrk run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds of unrecorded wrk per scenario first")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (default 64)")
    parser.add_argument(
        "--only", default="", help="comma-separated apps and/or tests to run (raw always runs): svc_fast,fortunes"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1 s per scenario, 1 round, no warm-up: it runs, it passes"
    )
    parser.add_argument(
        "--database-url", help="default: DATABASE_URL, else the embedded PostgreSQL 18 (.data/postgres)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk to CPUs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds, args.warmup = 1, 1, 0
    return args


def choose(args: argparse.Namespace) -> tuple[list[App], list[str]]:
    """The apps (`raw` first, always) and tests `--only` names; all of either kind it does not name."""
    names = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = names - set(ALL_APPS) - set(TESTS)
    if unknown:
        raise SystemExit(
            f"--only: unknown {', '.join(sorted(unknown))} (apps: {', '.join(ALL_APPS)}; tests: {', '.join(TESTS)})"
        )
    apps = [app for title, app in ALL_APPS.items() if title == REFERENCE or not names & set(ALL_APPS) or title in names]
    tests = [test for test in TESTS if not names & set(TESTS) or test in names]
    return apps, tests


def measure(run: Run, servers: dict[str, Server], script: Path) -> None:
    args = run.args
    scenarios = [(app.title, test) for test in run.tests for app in run.timed]
    run.results = {scenario: [] for scenario in scenarios}
    if args.warmup:
        log(f"== warm-up ({args.warmup} s per scenario)")
        for title, test in scenarios:
            run_wrk(servers[title].url(TESTS[test]), args.warmup, args.connections, run.client_cpu, script)
    for round_no in range(args.rounds):
        shift = round_no * len(scenarios) // max(1, args.rounds)
        for title, test in scenarios[shift:] + scenarios[:shift]:
            s = servers[title]
            cpu_before = s.cpu_seconds()
            result = run_wrk(s.url(TESTS[test]), args.duration, args.connections, run.client_cpu, script)
            # The server's own CPU per request: far less moved than req/s by what else shares the machine.
            result["cpu_us"] = (s.cpu_seconds() - cpu_before) / max(1, result["requests"]) * 1e6
            run.results[(title, test)].append(result)
            log(
                f"round {round_no + 1}/{args.rounds}  {test:<9} {title:<20} {result['rps']:>8.0f} req/s  "
                f"p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  "
                f"CPU {result['cpu_us']:6.1f} µs/req"
            )
            time.sleep(0.2)


def ratio(run: Run, app: str, reference: str, test: str, key: str) -> float:
    """`app`'s `key` over `reference`'s (CPU: the other way round, so that higher is better), paired by round."""
    results = {name: run.results[(name, test)] for name in (app, reference)}
    if key == "cpu_us":
        return paired_ratio(results, reference, app, key)
    return paired_ratio(results, app, reference, key)


def render(run: Run) -> str:
    args = run.args
    pinned = (
        f"servers on CPU {run.server_cpu}, wrk on CPU {run.client_cpu}" if run.server_cpu is not None else "not pinned"
    )
    lines = [
        f"wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds x {args.duration} s, medians over rounds; "
        f"{pinned}; PostgreSQL unpinned; load average {run.load[0]:.2f} before, {run.load[1]:.2f} after.",
        "Ratios are paired (each round's value over raw's same test in the same round, then the median); CPU ratio is",
        "raw's server CPU per request over the app's: what the req/s ratio would be if each had its CPU to itself.",
        "",
    ]
    for title, failures in run.failures.items():
        if failures:
            lines.append(f"NOT TIMED: {title} failed the verifier:")
            lines += [f"  - {failure}" for failure in failures]
    titles = [app.title for app in run.timed]
    for test in run.tests:
        lines += [
            "",
            f"### {test} (`{TESTS[test]}`)",
            "",
            "| app | req/s | p50 ms | p99 ms | server CPU µs/req | req/s ratio | CPU ratio | p99 ratio | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for title in titles:
            rounds = run.results[(title, test)]
            errors = sum(r["socket_errors"] + r["non_2xx_3xx"] for r in rounds)
            flag = f" ({errors:.0f} errors/non-2xx)" if errors else ""
            ratios = "1.00 | 1.00 | 1.00"
            if title != REFERENCE and REFERENCE in titles:
                ratios = " | ".join(
                    f"{ratio(run, title, REFERENCE, test, key):.2f}" for key in ("rps", "cpu_us", "p99_us")
                )
            lines.append(
                f"| {title}{flag} | {median_of(rounds, 'rps'):,.0f} | {median_of(rounds, 'p50_us') / 1000:.2f} | "
                f"{median_of(rounds, 'p99_us') / 1000:.2f} | {median_of(rounds, 'cpu_us'):.1f} | {ratios} | "
                f"{TARGETS.get(title, {}).get(test, '')} |"
            )
        extras = [(a, b) for a, b in EXTRA_RATIOS if a in titles and b in titles]
        if extras:
            lines.append("")
            lines += [
                f"- {a} / {b}: req/s {ratio(run, a, b, test, 'rps'):.2f}, CPU {ratio(run, a, b, test, 'cpu_us'):.2f}"
                for a, b in extras
            ]
    for title, found in run.warnings.items():
        if found:
            lines += ["", f"Warnings and errors logged by `{title}` during the run:"]
            lines += [f"- {count} x {message}" for message, count in sorted(found.items(), key=lambda i: -i[1])[:10]]
    return "\n".join(lines)


def smoke_problems(run: Run) -> list[str]:
    """What makes the smoke fail: an app that failed the verifier, or a scenario that served nothing."""
    problems = [f"{title} failed the verifier" for title, failures in run.failures.items() if failures]
    problems += [
        f"{title} {test}: no requests" for (title, test), rounds in run.results.items() if not rounds[0]["requests"]
    ]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("bench.techempower.load: skipped: `wrk` is not installed (Debian/Ubuntu: apt-get install -y wrk).")
        return 1 if args.smoke else 0
    signal.signal(signal.SIGTERM, terminate)
    run = Run(args, *choose(args))
    available = cpus()
    if len(available) >= 2 and not args.no_pin and shutil.which("taskset"):
        run.server_cpu, run.client_cpu = available[0], available[1]
        os.sched_setaffinity(0, {run.client_cpu})  # this script only polls and verifies; it shares wrk's CPU

    with tempfile.TemporaryDirectory(prefix="techempower-") as tmp, held_database(args.database_url) as url:
        work = Path(tmp)
        script = work / "report.lua"
        script.write_text(WRK_SCRIPT)
        asyncio.run(create_tables(url))
        servers = {app.title: server(app, url, work, run.server_cpu) for app in run.apps}
        run.load = (os.getloadavg()[0], 0.0)
        with running(list(servers.values())):
            for app in run.apps:
                run.failures[app.title] = asyncio.run(verify(servers[app.title].url(""), url))
                log(f"verify {app.title}: {'pass' if not run.failures[app.title] else 'FAIL'}")
            measure(run, servers, script)
            run.warnings = {title: warnings(s.log) for title, s in servers.items()}
        run.load = (run.load[0], os.getloadavg()[0])

    print(render(run))
    if args.json:
        results = {f"{title} {test}": rounds for (title, test), rounds in run.results.items()}
        args.json.write_text(json.dumps({"failures": run.failures, "results": results}, indent=2))
    if args.smoke and (problems := smoke_problems(run)):
        log("smoke failed: " + "; ".join(problems))
        return 1
    return 0 if not any(run.failures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
