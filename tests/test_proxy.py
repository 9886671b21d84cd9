"""Behind a load balancer: the client's address and scheme come from X-Forwarded-For/-Proto only when the peer
is one of TRUSTED_PROXIES (none by default); the access line carries the client and a bounded User-Agent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, scrubbed_environ
from tests.support import UvicornProcess

pytestmark = pytest.mark.e2e

SPOOFED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Iterator[Callable[..., UvicornProcess]]:
    """Start `python -m svc serve` (uvicorn configured by svc) with the given variables, and wait for it."""
    started: list[UvicornProcess] = []

    def start(**variables: str) -> UvicornProcess:
        env = scrubbed_environ()
        env.update(
            APP_ENV="test",
            DATABASE_URL=database_url,
            LOG_FORMAT="json",
            PYTHONPATH=str(ROOT),
            SERVICE="tests.apps:whoami_service",
            **variables,
        )
        server = UvicornProcess(env, tmp_path, [], command=[sys.executable, "-m", "svc", "serve"], name="serve")
        started.append(server)
        server.wait_ready("/whoami")
        return server

    yield start
    for server in started:
        server.stop()


def access_lines(server: UvicornProcess) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry["logger"] == "svc.access" and entry["path"] == "/whoami"]


@pytest.mark.parametrize(
    ("trusted", "headers", "client", "scheme"),
    [
        pytest.param(None, SPOOFED, "127.0.0.1", "http", id="no proxy trusted: spoofed headers ignored"),
        pytest.param("10.0.0.0/8", SPOOFED, "127.0.0.1", "http", id="peer not among the trusted: ignored"),
        pytest.param("127.0.0.1", SPOOFED, "203.0.113.7", "https", id="trusted peer: believed"),
        pytest.param(
            "127.0.0.0/8",
            {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 127.0.0.2", "X-Forwarded-Proto": "https"},
            "203.0.113.7",
            "https",
            id="chain: the nearest untrusted hop",
        ),
        pytest.param(
            "127.0.0.1", {"X-Forwarded-Proto": "javascript"}, "127.0.0.1", "http", id="unknown scheme ignored"
        ),
    ],
)
def test_forwarded_client_and_scheme_are_believed_only_from_trusted_proxies(
    serve: Callable[..., UvicornProcess], trusted: str | None, headers: dict[str, str], client: str, scheme: str
) -> None:
    server = serve(**({"TRUSTED_PROXIES": trusted} if trusted else {}))
    answer = httpx.get(server.base_url + "/whoami", headers=headers, timeout=5).json()
    assert answer == {"client": client, "scheme": scheme}
    server.stop()
    assert access_lines(server)[-1]["client"] == client


def test_the_access_line_carries_a_bounded_ascii_user_agent(serve: Callable[..., UvicornProcess]) -> None:
    server = serve()
    agent = b"caf\xc3\xa9/1.0 " + b"a" * 1000  # bytes outside ASCII, as a client may send them
    assert httpx.get(server.base_url + "/whoami", headers={"User-Agent": agent}, timeout=5).status_code == 200
    server.stop()
    logged = str(access_lines(server)[-1]["user_agent"])
    assert logged.startswith("caf\\xc3\\xa9/1.0 aaa")
    assert len(logged) <= 256 + 3 * 2  # 256 bytes, each non-ASCII one written as 4 characters
    assert logged.isascii()


def test_trusted_proxies_must_be_addresses_or_networks(tmp_path: Path) -> None:
    env = scrubbed_environ()
    env.update(APP_ENV="test", TRUSTED_PROXIES="10.0.0.0/8, lb.example.com", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "svc", "check-config"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "TRUSTED_PROXIES" in result.stderr
