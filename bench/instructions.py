"""Instructions per request under uvicorn, counted by callgrind: a cost this shared machine's noise does not move.

    uv run python bench/instructions.py --only tracing     # the tracing scenarios and their references
    uv run python bench/instructions.py [--requests 3000] [--only TEXT] [--database-url URL]

The scenarios and their servers are bench/load.py's (uvicorn with the production flags and
configuration). Each scenario gets a server of its own under `valgrind --tool=callgrind
--instr-atstart=no`: after a warm-up, counting is switched on (`callgrind_control -i on`) for
`--requests` requests over 8 keep-alive connections and off again, and the instructions the server
executed meanwhile (in all its threads: a span exporter's too) over the requests are its figure.
The same scenario counts the same within about 1 % run after run, whatever else the machine does,
where bench/load.py's req/s ratios swing by 10-30 % here; what it does not show is time (an
instruction among a server's other work costs more than one in a hot loop): bench/load.py says
what the instructions cost. Scenarios run two at a time (a server under valgrind uses one CPU).

Needs valgrind (Debian/Ubuntu: apt-get install -y valgrind); without it, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import Server, cpus, http_load, migrated_database
from load import Scenario, chosen, configurations, log, notes_database
from otlp_sink import OtlpSink

CALLGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null")
CONNECTIONS = 8
WARMUP_REQUESTS = 400
_COLLECTED = re.compile(r"Collected : (\d+)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests counted per scenario (default 3000)")
    parser.add_argument("--only", help="run only scenarios whose name contains this text (and their references)")
    parser.add_argument("--database-url", help="default: TEST_DATABASE_URL, else the embedded PostgreSQL 18")
    args = parser.parse_args(argv)
    if not CONNECTIONS <= args.requests <= 100_000:
        parser.error(f"--requests must be between {CONNECTIONS} and 100000")
    return args


def count(scenario: Scenario, make: Callable[[str], Server], cpu: int | None, requests: int) -> float:
    """The instructions per request of `scenario`'s server (made by `make`), counted over `requests` requests."""
    server = dataclasses.replace(make(f"callgrind-{scenario.server}"), cpu=cpu, wrapper=CALLGRIND)
    server.start()
    try:
        server.wait_for("/health/ready", timeout=300, interval=0.5)
        pid = str(server.running.proc.pid)
        warmup = WARMUP_REQUESTS // CONNECTIONS
        asyncio.run(http_load(server.port, scenario.path, connections=CONNECTIONS, requests_per_connection=warmup))
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True, timeout=60)
        result = asyncio.run(
            http_load(
                server.port,
                scenario.path,
                connections=CONNECTIONS,
                requests_per_connection=requests // CONNECTIONS,
                time_limit=1800,
            )
        )
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True, timeout=60)
    finally:
        server.stop(timeout=120)
    if set(result.statuses) != {200}:
        raise RuntimeError(f"{scenario.name}: answered {dict(result.statuses)}")
    found = _COLLECTED.findall(server.log.read_text(errors="replace")) if server.log is not None else []
    if not found:
        raise RuntimeError(f"{scenario.name}: no instruction count in {server.log}")
    return int(found[-1]) / result.requests


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        log("bench/instructions.py: skipped: valgrind is not installed (Debian/Ubuntu: apt-get install -y valgrind).")
        return 0
    scenarios = chosen(args.only)
    available: list[int | None] = [*cpus()] or [None]
    with (
        tempfile.TemporaryDirectory(prefix="svc-bench-") as tmp,
        migrated_database(args.database_url) as url,
        OtlpSink() as sink,
    ):
        notes_url = notes_database(url) if any(s.server.startswith("svc-notes") for s in scenarios) else None
        make = configurations(url, notes_url, Path(tmp), None, sink)
        with ThreadPoolExecutor(max_workers=min(2, len(available))) as pool:
            futures = {
                s.name: pool.submit(count, s, make[s.server], available[i % len(available)], args.requests)
                for i, s in enumerate(scenarios)
            }
            counts = {}
            for name, future in futures.items():
                counts[name] = future.result()
                log(f"{name:<60} {counts[name]:>11,.0f} instructions/request")
    print(render(scenarios, counts, args.requests))
    return 0


def render(scenarios: Sequence[Scenario], counts: dict[str, float], requests: int) -> str:
    lines = [
        f"callgrind, {requests:,} requests per scenario over {CONNECTIONS} keep-alive connections, after a warm-up.",
        "",
        "| scenario | instructions/request | ratio | reference |",
        "|---|---:|---:|---|",
    ]
    for s in scenarios:
        if s.ref in counts:
            ratio, ref = f"{counts[s.name] / counts[s.ref]:.3f}", f"{s.ref} ({counts[s.ref]:,.0f})"
        else:
            ratio, ref = "", "-"
        lines.append(f"| {s.name} | {counts[s.name]:,.0f} | {ratio} | {ref} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
