"""Hostile clients against a real server (issue 18, items 1-3): each attack bounded, /health/live still answered.

Every attack runs against `uvicorn svc.app:app --http svc.protocol:HttpProtocol` while a prober asks
/health/live on a new connection every 20 ms, as a Kubernetes probe does, and asserts its p99. Sizes
and times are bounded for the default run; the `soak` versions (`scripts/test -m soak
tests/test_hostile_clients.py`) use the sizes the issue measured. `HOSTILE_HTTP=httptools` runs
them against uvicorn's own protocol instead, which fails them: that is what they guard against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svc.protocol import LINGER_SECONDS, _Throttle
from svc.settings import ConfigError, load_settings
from tests.conftest import ROOT, UvicornProcess, raw_exchange, scrubbed_environ

pytestmark = pytest.mark.e2e

PROTOCOL = os.environ.get("HOSTILE_HTTP", "svc.protocol:HttpProtocol")
PROBE = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
LIVE = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
P99_BUDGET = 0.050
RSS_BUDGET_KB = 20 * 1024
# Server CPU an oversized head may cost, probes included (uvicorn's own protocol spends seconds on 32 MB).
HEAD_CPU_BUDGET = 0.2


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> None:
    """Long runs only when chosen: `-m soak`."""
    if "soak" not in (request.config.option.markexpr or ""):
        pytest.skip("a long attack run: choose it with -m soak")


# --- Measuring the server ------------------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Prober:
    """Asks /health/live on a new connection every `interval` in a thread; a probe without a 200 counts as infinite."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        self.port = port
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                ok = raw_exchange(self.port, PROBE, timeout=2.0).startswith(b"HTTP/1.1 200 ")
            except OSError:
                ok = False
            self.latencies.append(time.perf_counter() - started if ok else math.inf)
            self._stop.wait(self.interval)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        assert ordered, "no probe finished"
        return ordered[math.ceil(0.99 * len(ordered)) - 1]


def push(sock: socket.socket, payload: bytes, within: float) -> int:
    """Send `payload` until it is all sent, the server closes, or `within` seconds pass; the bytes sent."""
    sent = 0
    deadline = time.monotonic() + within
    view = memoryview(payload)
    with contextlib.suppress(OSError):  # closed by the server, or the time is up
        while sent < len(payload) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            sent += sock.send(view[sent : sent + 65_536])
    return sent


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closes `sock` within `within` seconds, and what it sent before."""
    received = b""
    deadline = time.monotonic() + within
    with contextlib.suppress(ConnectionResetError):
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65_536)
            except TimeoutError:
                return False, received
            if not chunk:
                break
            received += chunk
    return time.monotonic() < deadline, received


def log_lines(server: UvicornProcess, limit: str) -> list[dict[str, object]]:
    """The server's JSON log lines reporting `limit`."""
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("limit") == limit]


@contextlib.contextmanager
def connections() -> Iterator[list[socket.socket]]:
    """A list to put sockets in; they are closed at the end."""
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def hostile_server(uvicorn: Callable[..., UvicornProcess]) -> Callable[..., UvicornProcess]:
    """A server with the protocol under test (`HOSTILE_HTTP`), the access log off (it is not what is measured)."""

    def start(**variables: str) -> UvicornProcess:
        server = uvicorn("--http", PROTOCOL, "--no-access-log", ACCESS_LOG="false", **variables)
        server.wait_ready("/health/ready")  # start-up done: it runs in the background, on the event loop
        for _ in range(20):  # warm: the first requests import and allocate what every later one reuses
            raw_exchange(server.port, PROBE)
        return server

    return start


# --- 1. Pipelining --------------------------------------------------------------------------------------------------------


def pipeline_flood(server: UvicornProcess, clients: int, requests: int, *, reading: bool) -> tuple[int, float]:
    """`clients` connections each pipelining `requests` `GET /health/live`, reading the answers or not, while
    probed; the server's RSS growth (KB) and the probes' p99."""
    payload = LIVE * requests
    before = rss_kb(server.proc.pid)
    with Prober(server.port) as prober, connections() as socks:
        readers = []
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", server.port))
            socks.append(sock)
            if reading:
                reader = threading.Thread(target=closed_by_server, args=(sock, 30.0), daemon=True)
                reader.start()
                readers.append(reader)
        senders = [threading.Thread(target=push, args=(sock, payload, 10.0)) for sock in socks]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        time.sleep(1.0)  # what was received is parsed and queued (or refused) by now
        growth = rss_kb(server.proc.pid) - before
        for sock in socks:  # the readers see the end, before their sockets close
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for reader in readers:
            reader.join()
    return growth, prober.p99()


@pytest.mark.parametrize("reading", [False, True], ids=["not-reading", "reading"])
def test_pipelined_requests_are_queued_within_bounds(
    hostile_server: Callable[..., UvicornProcess], reading: bool
) -> None:
    server = hostile_server(HTTP_MAX_PIPELINED="16")
    growth, p99 = pipeline_flood(server, clients=2, requests=30_000, reading=reading)
    assert growth < RSS_BUDGET_KB, f"RSS grew {growth} KB"
    assert p99 < P99_BUDGET, f"/health/live p99 {p99 * 1000:.1f} ms"
    assert log_lines(server, "max_pipelined"), server.output()


def test_pipelined_requests_within_the_limit_are_all_answered_in_order(
    hostile_server: Callable[..., UvicornProcess],
) -> None:
    server = hostile_server(HTTP_MAX_PIPELINED="4")
    targets = [b"/health/live", b"/nope", b"/health/live", b"/health/ready", b"/health"]
    requests = b"".join(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % t for t in targets[:-1])
    requests += b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(server.port, requests)
    statuses = [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses[:3] == [200, 404, 200], answer
    assert len(statuses) == len(targets), answer
    assert not log_lines(server, "max_pipelined")


@pytest.mark.slow
@pytest.mark.soak
def test_soak_pipelining_as_measured_in_the_issue(hostile_server: Callable[..., UvicornProcess], soak: None) -> None:
    server = hostile_server()
    for clients, requests, reading in [(1, 100_000, True), (4, 190_000, False)]:
        growth, p99 = pipeline_flood(server, clients=clients, requests=requests, reading=reading)
        assert growth < RSS_BUDGET_KB, f"{clients} x {requests}: RSS grew {growth} KB"
        assert p99 < P99_BUDGET, f"{clients} x {requests}: /health/live p99 {p99 * 1000:.1f} ms"


# --- 2. Oversized heads --------------------------------------------------------------------------------------------------

HEAD_SHAPES = {
    # One header field of `size` bytes.
    "one-field": lambda size: b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n",
    # Many short fields.
    "many-fields": lambda size: (
        b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-F: v\r\n" * (size // 8) + b"\r\n"
    ),
    # The request target: a query string of `size` bytes.
    "query": lambda size: b"GET /health/live?" + b"q" * size + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


def oversized_head(server: UvicornProcess, head: bytes) -> tuple[int, int, float, float, bytes]:
    """Send `head` on one connection while probed; (bytes sent, server RSS growth in KB, server CPU seconds,
    probes' p99, what the server answered)."""
    pid = server.proc.pid
    before_rss, before_cpu = rss_kb(pid), cpu_seconds(pid)
    with Prober(server.port) as prober, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sent = push(sock, head, within=20.0)
        _, answer = closed_by_server(sock, within=20.0)
        time.sleep(0.3)  # at least a dozen probes, after the attack too
        return sent, rss_kb(pid) - before_rss, cpu_seconds(pid) - before_cpu, prober.p99(), answer


@pytest.mark.parametrize("shape", HEAD_SHAPES)
def test_an_oversized_head_is_cut_off_as_it_arrives(hostile_server: Callable[..., UvicornProcess], shape: str) -> None:
    server = hostile_server(HTTP_MAX_HEAD_BYTES="32768")
    head = HEAD_SHAPES[shape](32 << 20)
    sent, growth, cpu, p99, answer = oversized_head(server, head)
    assert cpu < HEAD_CPU_BUDGET, f"server CPU {cpu:.2f} s"
    assert sent < len(head), "the whole 32 MB head was read"
    assert growth < RSS_BUDGET_KB, f"RSS grew {growth} KB"
    assert p99 < P99_BUDGET, f"/health/live p99 {p99 * 1000:.1f} ms"
    if answer:  # it may be lost: the client was still sending when the connection closed
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert log_lines(server, "max_head_bytes"), server.output()


def test_a_head_just_over_the_limit_gets_a_431_problem(hostile_server: Callable[..., UvicornProcess]) -> None:
    server = hostile_server(HTTP_MAX_HEAD_BYTES="4096")
    answer = raw_exchange(server.port, HEAD_SHAPES["one-field"](4096))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
    assert b"content-type: application/problem+json" in head
    assert b"connection: close" in head
    problem = json.loads(body)
    assert problem["status"] == 431
    assert problem["title"] == "Request Header Fields Too Large"
    assert "4096 bytes" in problem["detail"]


def post_then_get(port: int, cuts: list[int], second_pad: int = 3_000) -> tuple[bool, list[bytes]]:
    """A POST to an unknown path with a 3 KB head and a 5,000-byte body, then a GET with a field of `second_pad`
    bytes, sent cut at the offsets `cuts`; whether the server closed the connection, and the answers' statuses."""
    head = b"POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\nX-Pad: " + b"p" * 3_000 + b"\r\n\r\n"
    second = (
        b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Pad: "
        + b"p" * second_pad
        + b"\r\n\r\n"
    )
    data = head + b"b" * 5000 + second
    bounds = [0, *cuts, len(data)]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for start, end in itertools.pairwise(bounds):
            sock.sendall(data[start:end])
            time.sleep(0.05)
        closed, answer = closed_by_server(sock, within=5.0)
    return closed, [part[:3] for part in answer.split(b"HTTP/1.1 ")[1:]]


@pytest.mark.parametrize(
    "cuts",
    [[], [10, 3000], [3100], [3200]],
    ids=["one-read", "head-in-pieces", "head-and-body-start", "body-and-next-head"],
)
def test_heads_within_the_limit_are_served_however_they_are_cut(
    hostile_server: Callable[..., UvicornProcess], cuts: list[int]
) -> None:
    """Heads of 3 KB under a 4 KB limit, with a body and a pipelined second request: one read can hold the end of
    one head, a body, and the whole next head (then measured when complete)."""
    server = hostile_server(HTTP_MAX_HEAD_BYTES="4096")
    assert post_then_get(server.port, cuts) == (True, [b"404", b"200"])
    assert not log_lines(server, "max_head_bytes")


@pytest.mark.parametrize("cuts", [[], [3_200]], ids=["one-read", "body-and-next-head"])
def test_a_head_over_the_limit_after_a_request_in_the_same_read_is_refused(
    hostile_server: Callable[..., UvicornProcess], cuts: list[int]
) -> None:
    """Measured once complete, it gets its 431 if the request ahead of it has been answered, else the connection
    closes after that answer: the app never sees it."""
    server = hostile_server(HTTP_MAX_HEAD_BYTES="4096")
    closed, statuses = post_then_get(server.port, cuts, second_pad=5_000)
    assert closed
    assert statuses in ([b"404"], [b"404", b"431"])
    assert log_lines(server, "max_head_bytes")


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.parametrize(("shape", "size"), [("one-field", 128 << 20), ("one-field", 256 << 20), ("query", 64 << 20)])
def test_soak_oversized_heads_as_measured_in_the_issue(
    hostile_server: Callable[..., UvicornProcess], soak: None, shape: str, size: int
) -> None:
    server = hostile_server()
    _, growth, cpu, p99, _ = oversized_head(server, HEAD_SHAPES[shape](size))
    assert cpu < HEAD_CPU_BUDGET, f"server CPU {cpu:.2f} s"
    assert growth < RSS_BUDGET_KB, f"RSS grew {growth} KB"
    assert p99 < P99_BUDGET, f"/health/live p99 {p99 * 1000:.1f} ms"


# --- 3. Idle and slow connections ----------------------------------------------------------------------------------------

PARTIAL_HEAD = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def hold_connections(server: UvicornProcess, count: int, seconds: float) -> dict[str, list[tuple[bool, bytes]]]:
    """`count` connections of each kind held open for up to `seconds`: sending nothing, half a head, a header line
    every 0.3 s, or nothing after a first answered request; for each, whether the server closed it and its answer."""
    kinds: dict[str, list[socket.socket]] = {"idle": [], "partial": [], "trickle": [], "after-response": []}
    with connections() as socks:
        for kind, group in kinds.items():
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", server.port))
                socks.append(sock)
                group.append(sock)
                if kind == "partial":
                    sock.sendall(PARTIAL_HEAD)
                elif kind == "after-response":
                    sock.sendall(LIVE)
        deadline = time.monotonic() + seconds
        open_trickles = list(kinds["trickle"])
        for sock in open_trickles:
            sock.sendall(PARTIAL_HEAD)
        while open_trickles and time.monotonic() < deadline:
            time.sleep(0.3)
            for sock in list(open_trickles):
                try:
                    sock.sendall(b"X-Trickle: 1\r\n")
                except OSError:  # closed by the server
                    open_trickles.remove(sock)
        results: dict[str, list[tuple[bool, bytes]]] = {}
        for kind, group in kinds.items():
            results[kind] = [closed_by_server(sock, within=max(deadline - time.monotonic(), 0.01)) for sock in group]
    return results


def test_idle_and_slow_connections_are_closed_after_their_timeouts(
    hostile_server: Callable[..., UvicornProcess],
) -> None:
    server = hostile_server(HTTP_KEEPALIVE_TIMEOUT="1", HTTP_HEAD_TIMEOUT="2")
    started = time.monotonic()
    with Prober(server.port) as prober:
        results = hold_connections(server, count=25, seconds=2 + 1.5)
    elapsed = time.monotonic() - started
    for kind, outcomes in results.items():
        assert all(closed for closed, _ in outcomes), f"{kind}: {sum(not c for c, _ in outcomes)} still open"
    for kind in ("partial", "trickle"):
        for _, answer in results[kind]:
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert all(answer.startswith(b"HTTP/1.1 200 ") for _, answer in results["after-response"])
    assert all(answer == b"" for _, answer in results["idle"])
    assert elapsed < 2 + 1.5 + LINGER_SECONDS + 1
    assert prober.p99() < P99_BUDGET, f"/health/live p99 {prober.p99() * 1000:.1f} ms"
    timeouts = log_lines(server, "head_timeout")
    assert 1 <= len(timeouts) <= 2, timeouts  # one line, and maybe a second reporting the rest
    assert log_lines(server, "keepalive_timeout"), server.output()


@pytest.mark.slow
@pytest.mark.soak
def test_soak_idle_and_trickling_connections_as_measured_in_the_issue(
    hostile_server: Callable[..., UvicornProcess], soak: None
) -> None:
    server = hostile_server()  # the default timeouts
    with Prober(server.port) as prober:
        results = hold_connections(server, count=300, seconds=10 + 3)
    for kind, outcomes in results.items():
        assert all(closed for closed, _ in outcomes), f"{kind}: {sum(not c for c, _ in outcomes)} still open"
    assert prober.p99() < P99_BUDGET, f"/health/live p99 {prober.p99() * 1000:.1f} ms"


# --- The connection limit ------------------------------------------------------------------------------------------------


@pytest.fixture
def command_server(database_url: str, tmp_path: Path) -> Iterator[Callable[..., UvicornProcess]]:
    """Start `command` (a server taking --host and --port) with the given variables on the test baseline, and wait."""
    started: list[UvicornProcess] = []

    def start(command: list[str], **variables: str) -> UvicornProcess:
        env = scrubbed_environ()
        env.update(APP_ENV="test", DATABASE_URL=database_url, LOG_FORMAT="json", PYTHONPATH=str(ROOT))
        env.update(ACCESS_LOG="false", **variables)
        server = UvicornProcess(env, tmp_path, [], command=command, name="server")
        started.append(server)
        server.wait_ready("/health/ready")  # start-up done: it runs in the background, on the event loop
        return server

    yield start
    for server in started:
        server.stop()


UVICORN = [sys.executable, "-m", "uvicorn", "svc.app:app", "--http", PROTOCOL, "--no-access-log"]


def test_idle_connections_cannot_exhaust_file_descriptors(command_server: Callable[..., UvicornProcess]) -> None:
    """Under `ulimit -n 256` with the default limit (lowered to fit), 400 idle connections leave probes answered."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    server = command_server([prlimit, "--nofile=256:256", *UVICORN])
    with Prober(server.port) as prober, connections() as socks:
        for _ in range(400):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        time.sleep(1.0)
    assert prober.p99() < P99_BUDGET, f"/health/live p99 {prober.p99() * 1000:.1f} ms over {len(prober.latencies)}"
    assert "HTTP_MAX_CONNECTIONS lowered from 1000 to 192" in server.output()
    assert log_lines(server, "max_connections_idle"), server.output()


def test_connections_over_the_limit_get_a_503_problem_when_none_is_idle(
    command_server: Callable[..., UvicornProcess],
) -> None:
    """At the limit with every connection answering a request, a new connection is refused with a 503 and a log line."""
    app = [sys.executable, "-m", "uvicorn", "--factory", "tests.apps:create_test_app", "--http", PROTOCOL]
    server = command_server(app, HTTP_MAX_CONNECTIONS="4", DB_POOL_SIZE="4")
    hold = b"GET /hold?seconds=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    time.sleep(0.5)  # the readiness probe's connection is gone
    with connections() as busy:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(hold)
            busy.append(sock)
        time.sleep(0.5)
        answer = raw_exchange(server.port, PROBE)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
        assert b"content-type: application/problem+json" in head
        assert json.loads(body)["status"] == 503
        for sock in busy:  # the requests in progress are answered
            assert closed_by_server(sock, within=10)[1].startswith(b"HTTP/1.1 200 ")
    assert raw_exchange(server.port, PROBE).startswith(b"HTTP/1.1 200 ")
    assert log_lines(server, "max_connections"), server.output()


# --- Wiring and settings -------------------------------------------------------------------------------------------------


def test_serve_applies_the_limits(command_server: Callable[..., UvicornProcess]) -> None:
    """`python -m svc serve` serves with the protocol: a head over HTTP_MAX_HEAD_BYTES gets its 431."""
    server = command_server([sys.executable, "-m", "svc", "serve"], HTTP_MAX_HEAD_BYTES="2048")
    answer = raw_exchange(server.port, HEAD_SHAPES["one-field"](3000))
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert log_lines(server, "max_head_bytes")


def test_scripts_run_serves_with_the_protocol() -> None:
    assert "--http svc.protocol:HttpProtocol" in (ROOT / "scripts" / "run").read_text()


@pytest.mark.usefixtures("isolated_env")
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_MAX_HEAD_BYTES", "100"),
        ("HTTP_HEAD_TIMEOUT", "0"),
        ("HTTP_KEEPALIVE_TIMEOUT", "-1"),
        ("HTTP_MAX_PIPELINED", "0"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_MAX_CONNECTIONS", "many"),
    ],
)
def test_limits_out_of_range_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert list(error.value.errors) == [name]


async def test_a_limit_logs_once_per_interval_with_how_often_it_acted(caplog: pytest.LogCaptureFixture) -> None:
    throttle = _Throttle(interval=0.05)
    with caplog.at_level(logging.INFO, logger="svc.http"):
        for _ in range(5):
            throttle.acted("max_head_bytes", logging.WARNING, "too big")
        assert [r.count for r in caplog.records] == [1]  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)
    assert [(r.limit, r.count) for r in caplog.records] == [("max_head_bytes", 1), ("max_head_bytes", 4)]  # type: ignore[attr-defined]
