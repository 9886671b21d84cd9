"""`uvicorn svc.app:app --workers 2`: both workers serve, each with its own engine and database connections.

Which process holds a socket is read from /proc (Linux): the server side of each HTTP connection, and
the client side of each database connection, belong to one worker's file descriptors.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import UvicornProcess, wait_for_workers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads socket ownership from /proc"),
]

PATHS = {"/health": 200, "/health/live": 200, "/health/ready": 200, "/health/db": 200}


def worker_pids(parent: int) -> set[int]:
    """uvicorn's worker processes: `parent`'s spawned children (not multiprocessing's resource tracker)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.add(int(entry.name))
    return pids


def socket_owner(inode: int, pids: set[int]) -> int | None:
    """Which of `pids` has the socket `inode` open."""
    target = f"socket:[{inode}]"
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


def tcp_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the loopback TCP socket from `local_port` to `remote_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if (local, remote) == (local_port, remote_port):
                return int(fields[9])
    return None


def served_by(server: UvicornProcess, workers: set[int]) -> tuple[int | None, dict[str, int]]:
    """Request every health path on one new connection; return the worker that accepted it and the statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        statuses = {}
        for path in PATHS:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            statuses[path] = response.status
        client_port = conn.sock.getsockname()[1]
        inode = tcp_inode(server.port, client_port)
        return (socket_owner(inode, workers) if inode is not None else None), statuses
    finally:
        conn.close()


async def test_two_workers_each_serve_every_health_endpoint_with_an_engine_of_their_own(
    uvicorn: Callable[..., UvicornProcess], pg: Any, tmp_path: Path
) -> None:
    name = f"svc-workers-{uuid.uuid4().hex[:8]}"
    # Its multiprocess metrics files in the test's directory, not the machine's default.
    server = uvicorn("--workers", "2", DB_APPLICATION_NAME=name, METRICS_DIR=str(tmp_path / "metrics"))
    wait_for_workers(server, 2)
    workers = worker_pids(server.proc.pid)
    assert len(workers) == 2

    # The kernel hands each new connection to whichever worker accepts first: ask until both have served.
    served: dict[int, list[dict[str, int]]] = {}
    deadline = time.monotonic() + 20
    while len(served) < 2 and time.monotonic() < deadline:
        pid, statuses = served_by(server, workers)
        assert pid is not None
        served.setdefault(pid, []).append(statuses)
    assert set(served) == workers
    for answers in served.values():
        assert all(statuses == PATHS for statuses in answers)

    # Each worker's probe has a connection of its own: two, held by two different processes.
    rows = await pg.fetch("SELECT client_port FROM pg_stat_activity WHERE application_name = $1", f"{name}:health")
    assert len(rows) == 2
    ports = [row["client_port"] for row in rows]
    if all(port > 0 for port in ports):  # TCP (a unix-socket client has no port to trace)
        db_port = await pg.fetchval("SELECT inet_server_port()")
        owners = {socket_owner(inode, workers) for port in ports if (inode := tcp_inode(port, db_port)) is not None}
        assert owners == workers

    assert server.stop() == 0
    assert server.output().count("Application shutdown complete.") == 2
    assert "Traceback" not in server.output()
