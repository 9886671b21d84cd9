"""Running the shipped artefacts here: the image's install in a directory, its processes confined as in a pod,
the shipped PgBouncer configuration, and requests sent exactly as the kubelet and Prometheus send them."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.conftest import raw_exchange
from tests.deploy_harness import connection_string, ini_values

#: The pod IP the kubelet's and Prometheus' Host header names (only sent as a header: nothing connects to it).
POD_IP = "10.1.2.3"


def confined(command: list[str], *, uid: int, gid: int, writable: Path) -> list[str]:
    """`command` as a pod runs it: as `uid`:`gid` with no other group, and the whole root filesystem read-only but
    `writable` (the pod's emptyDir), in a mount namespace of its own (the machine's mounts are left alone)."""
    remount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro / && shift && exec "$@"'
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    assert unshare is not None
    assert setpriv is not None
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        remount,
        "sh",
        str(writable),
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--",
        *command,
    ]


def kubelet_get(port: int, probe: Mapping[str, Any], container_port: int) -> tuple[int, bytes]:
    """An httpGet probe sent to 127.0.0.1:`port` as the kubelet sends it to the pod's `container_port`: its
    Host is the pod IP and port unless the probe sets one, `Accept: */*`, its user agent, no keep-alive, no
    compression. Returns the status and the raw response."""
    get = probe["httpGet"]
    assert get.get("scheme", "HTTP") == "HTTP"
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
    host = headers.pop("Host", f"{POD_IP}:{container_port}")
    sent = {"User-Agent": "kube-probe/1.33", "Accept": "*/*", **headers, "Connection": "close"}
    head = f"GET {get['path']} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
    response = raw_exchange(port, (head + "\r\n").encode(), timeout=probe["timeoutSeconds"])
    return int(response.split(b" ", 2)[1]), response


def prometheus_get(port: int, job: Mapping[str, Any], container_port: int, token: str | None) -> tuple[int, bytes]:
    """A scrape of 127.0.0.1:`port` as Prometheus' `job` scrapes the pod's `container_port`."""
    lines = [
        f"GET {job['metrics_path']} HTTP/1.1",
        f"Host: {POD_IP}:{container_port}",
        "User-Agent: Prometheus/3.5.0",
        "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
        "Accept-Encoding: identity",
        f"X-Prometheus-Scrape-Timeout-Seconds: {job['scrape_timeout'].rstrip('s')}",
        "Connection: close",
    ]
    if token is not None:
        lines.append(f"Authorization: {job['authorization']['type']} {token}")
    response = raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    return int(response.split(b" ", 2)[1]), response


def shipped_pgbouncer_ini(shipped: str, *, upstream: Mapping[str, str], port: int, auth_file: Path) -> str:
    """The shipped PgBouncer configuration with only its upstream (host, port, dbname), where it listens, and its
    auth_file swapped; everything else (pool mode, sizes, timeouts, auth_type) stays as shipped."""
    (alias, entry), *others = ini_values(shipped, "databases").items()
    assert not others
    target = {**connection_string(entry), **upstream}
    swaps = {
        alias: " ".join(f"{k}={v}" for k, v in target.items()),
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "auth_file": str(auth_file),
    }
    text = shipped
    for key, value in swaps.items():
        line = rf"^(\s*{re.escape(key)}\s*=).*$"
        text, count = re.subn(line, "\\g<1> " + value.replace("\\", "\\\\"), text, flags=re.M)
        assert count == 1, f"{key} should be set once in the shipped configuration"
    return text


class UnixRelay:
    """127.0.0.1:`port` piped to a unix socket: the embedded test PostgreSQL, which listens on a socket only its
    own user may reach, made reachable over TCP for the image's user and PgBouncer, as a pod reaches its database."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(self._path)
            except OSError:
                client.close()
                upstream.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with a, b, contextlib.suppress(OSError):
            while not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Until something accepts on 127.0.0.1:`port`; fails with `log` if `proc` exits or time runs out."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def process_ids(pid: int) -> tuple[int, int]:
    """The real user and group of a running process."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
    gid = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1]
    return int(uid), int(gid)


def interpreter_for(version: str, uid: int) -> str | None:
    """A `python<version>` that user `uid` can run (the image's interpreter stands in for the base image's)."""
    for directory in ("/usr/local/bin", "/usr/bin"):
        candidate = os.path.join(directory, f"python{version}")
        if not os.path.exists(candidate):
            continue
        check = subprocess.run(
            [
                shutil.which("setpriv") or "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                candidate,
                "-c",
                "",
            ],
            capture_output=True,
            check=False,
        )
        if check.returncode == 0:
            return candidate
    return None
