"""Shared by the pytest-benchmark suite and `bench/load.py`: the test database, production settings,
direct ASGI calls, uvicorn subprocesses and a small loopback HTTP/1.1 load client.

Nothing here talks to anything but 127.0.0.1 (and the test database, which is local).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import (
    HOST,
    ROOT,
    SERVICE_VARIABLES,
    UvicornProcess,
    asyncpg_dsn,
    database_for_tests,
    migrate_to_head,
    scrubbed_environ,
)

BENCH = ROOT / "bench"

#: The seed's latency budget: every health endpoint answers well under this, at p99.
BUDGET_S = 0.200
#: Issue 5's in-process target for `/health` (reported, not asserted).
TARGET_HEALTH_MEAN_S = 10e-6

#: uvicorn as it runs in production: one worker, uvloop, httptools, no uvicorn access log (svc writes
#: its own when ACCESS_LOG is on). Everything else stays at uvicorn's defaults, for svc and baseline alike.
UVICORN_FLAGS = ("--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log")


# --- the test database ----------------------------------------------------------------------------


@contextlib.contextmanager
def migrated_database(url: str | None = None) -> Iterator[str]:
    """The test database as the suite finds it (`url`, TEST_DATABASE_URL or the shared embedded server), at head."""
    with database_for_tests(url) as database_url:
        yield migrate_to_head(database_url)


# --- production configuration ---------------------------------------------------------------------


def production_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The svc variables of a production deployment on `database_url` (access log off unless overridden)."""
    env = {
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        # Details and /metrics for the bearer of this token; anonymous probes (the benchmark's) see no details.
        "HEALTH_TOKEN": secrets.token_urlsafe(24),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


def production_settings(database_url: str, **overrides: str) -> Any:
    """`load_settings()` as `uvicorn svc.app:app` runs it in production (`production_env` plus `overrides`).

    The process environment is restored afterwards; no .env file is read.
    """
    from svc.settings import load_settings

    saved = dict(os.environ)
    try:
        for name in SERVICE_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(production_env(database_url, **overrides))
        return load_settings(env_file=None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def child_env(variables: Mapping[str, str], *, cached_bytecode: bool = True) -> dict[str, str]:
    """The environment of a server subprocess: ours minus every svc variable, plus `variables`.

    With `cached_bytecode`, PYTHONDONTWRITEBYTECODE is dropped and bytecode goes to a cache of the
    bench's own (outside the source tree), as in an image built with compiled bytecode: svc is
    installed editable here, so `uv sync --compile-bytecode` never compiles svc's own modules.
    """
    env = scrubbed_environ()
    if cached_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache_dir())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(BENCH)])
    env.update(variables)
    return env


def pycache_dir() -> Path:
    path = Path(os.environ.get("SVC_BENCH_PYCACHE", Path.home() / ".cache" / "svc-bench-pycache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- direct ASGI calls ----------------------------------------------------------------------------

_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


def http_scope(path: str, method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    """A scope shaped like the one uvicorn (httptools) builds for a keep-alive request from a load generator."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": (HOST, 8000),
        "client": (HOST, 54321),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"svc-bench"), (b"accept", b"*/*"), *headers],
        "state": {},
    }


async def receive() -> dict[str, Any]:
    return _REQUEST


async def discard(message: Any) -> None:
    """An ASGI `send` that does nothing: the server's own cost of writing a response is not the app's."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def request(app: Any, path: str, method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = ()) -> Response:
    """Call `app` once and collect its response (for checking what a benchmark times)."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(http_scope(path, method, headers), receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Response(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body)


def batch_runner(app: Any, path: str, batch: int, method: str = "GET") -> Callable[[], Awaitable[None]]:
    """A coroutine function that makes `batch` sequential requests to `app`, each with a fresh scope."""
    template = http_scope(path, method)

    async def run() -> None:
        for _ in range(batch):
            await app({**template}, receive, discard)

    return run


def sampled_runner(app: Any, path: str, samples: list[float], method: str = "GET") -> Callable[[int], Awaitable[None]]:
    """Like `batch_runner`, but appends each call's own duration (seconds) to `samples`."""
    template = http_scope(path, method)
    clock = time.perf_counter

    async def run(n: int) -> None:
        for _ in range(n):
            start = clock()
            await app({**template}, receive, discard)
            samples.append(clock() - start)

    return run


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --- processes ------------------------------------------------------------------------------------


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_prefix(cpu: int | None) -> list[str]:
    """`taskset -c cpu` when pinning is possible, else nothing."""
    import shutil

    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Server:
    """A uvicorn server with production flags, optionally pinned to a CPU: started (and restarted) on demand."""

    name: str
    app: str
    env: dict[str, str]
    cwd: Path
    cpu: int | None = None
    app_dir: Path | None = None
    args: tuple[str, ...] = ()  # more uvicorn options, after UVICORN_FLAGS (a later --http wins)
    wrapper: tuple[str, ...] = ()  # a command the interpreter runs under (valgrind ...), after the CPU pin
    process: UvicornProcess | None = None
    log: Path | None = None  # the last run's output, kept after it stopped

    def start(self) -> Server:
        args = [*UVICORN_FLAGS, *self.args, *(["--app-dir", str(self.app_dir)] if self.app_dir is not None else [])]
        self.process = UvicornProcess(
            self.env, self.cwd, args, self.app, name=self.name, prefix=[*pin_prefix(self.cpu), *self.wrapper]
        )
        self.log = self.process.log
        return self

    @property
    def running(self) -> UvicornProcess:
        assert self.process is not None, f"{self.name} is not started"
        return self.process

    @property
    def port(self) -> int:
        return self.running.port

    def url(self, path: str) -> str:
        return self.running.base_url + path

    def wait_for(self, path: str, timeout: float = 30.0, interval: float = 0.002) -> float:
        """Poll `path` until it answers 200; the seconds since `start()`."""
        return self.running.wait_ready(path, timeout, interval)

    def rss_kib(self) -> int:
        return rss_kib(self.running.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.running.proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout=timeout)


def svc_server(
    name: str,
    env: Mapping[str, str],
    cwd: Path,
    cpu: int | None = None,
    app: str = "svc.app:app",
    *,
    args: tuple[str, ...] = (),
) -> Server:
    """svc (or `app`, another app in bench/) under uvicorn, configured by `env` as production would be."""
    return Server(name, app, child_env(env), cwd, cpu, args=args)  # child_env puts bench/ on the path


def baseline_server(name: str, database_url: str, cwd: Path, cpu: int | None = None, pool_size: int = 5) -> Server:
    env = child_env({"BASELINE_DATABASE_URL": asyncpg_dsn(database_url), "BASELINE_POOL_SIZE": str(pool_size)})
    return Server(name, "baseline:app", env, cwd, cpu, app_dir=BENCH)


# --- a loopback HTTP/1.1 load client --------------------------------------------------------------


@dataclass
class LoadResult:
    latencies: list[float]
    statuses: Counter[int]
    elapsed: float

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "req_per_s": round(self.rps, 1),
            "p50_ms": round(self.pct(50) * 1000, 3),
            "p99_ms": round(self.pct(99) * 1000, 3),
            "max_ms": round(max(self.latencies) * 1000, 3),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 3),
        }


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def http_load(
    port: int, path: str, *, connections: int = 64, requests_per_connection: int = 50, time_limit: float = 60.0
) -> LoadResult:
    """`connections` keep-alive connections, opened first, then each sends `requests_per_connection`
    sequential GETs at once. Bounded in count, and in time by `time_limit` seconds."""
    request_bytes = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: svc-bench\r\n\r\n".encode()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    go = asyncio.Event()
    clock = time.perf_counter

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        for _ in range(requests_per_connection):
            start = clock()
            writer.write(request_bytes)
            status = await _read_response(reader)
            latencies.append(clock() - start)
            statuses[status] += 1

    # The client's own garbage collections would stall all its connections at once and show up as
    # server latency (a full collection in a pytest process takes tens of ms): none while measuring.
    gc.collect()
    gc.disable()
    try:
        async with asyncio.timeout(time_limit):
            streams = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(connections)))
            try:
                start = clock()
                async with asyncio.TaskGroup() as group:
                    for reader, writer in streams:
                        group.create_task(connection(reader, writer))
                    go.set()
                elapsed = clock() - start
            finally:
                for _, writer in streams:
                    writer.close()
                for _, writer in streams:
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
    finally:
        gc.enable()
    return LoadResult(latencies, statuses, elapsed)
