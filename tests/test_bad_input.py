"""Bad input against a real uvicorn: every answer is a problem+json 4xx from the app, or uvicorn's own 400.

Who answers what (measured on uvicorn with httptools, as `uvicorn svc.app:app` runs):

- The app answers everything that parses as HTTP: unknown paths (404), methods (405), bodies over
  MAX_BODY_BYTES (413), a Host outside ALLOWED_HOSTS (400), wrong credentials (401), all as
  `application/problem+json` with `X-Request-ID` and the security headers.
- uvicorn answers, before the app ever sees the request, whatever its HTTP parser rejects: a broken
  request line, an unknown or lower-case method, CONNECT, a bad HTTP version, header lines without a
  colon or with control characters, a non-numeric or negative Content-Length, Content-Length together
  with Transfer-Encoding, a broken chunk, a request target (path and query) of 64 KiB. Its answer is a fixed `400 Bad Request`,
  `text/plain` "Invalid HTTP request received.", and the connection is closed; it logs one WARNING
  line and no traceback. The app cannot turn that into problem+json.
- Neither limits the size of the request head: httptools accepts a 2 MB header or 5,000 headers. That
  is a known gap (see `test_an_oversized_request_head_is_refused_with_431`); put a proxy with a head
  limit in front (nginx's `large_client_header_buffers`, for one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from svc.app import create_app
from svc.http.edge import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from svc.http.hosts import AllowedHosts
from svc.settings import Settings
from tests.conftest import ROOT, UvicornProcess, raw_exchange, scrubbed_environ, serve

pytestmark = pytest.mark.e2e

TOKEN = "bad-input-health-token-0123"
MAX_BODY = 1024
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
SECURITY_HEADERS = ["x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy"]


@pytest.fixture(scope="module")
def server(migrated_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornProcess]:
    """One uvicorn for the module, configured as deployed: Host allow-list, details behind the token, a small body limit."""
    env = scrubbed_environ()
    env.update(
        APP_ENV="test",
        DATABASE_URL=migrated_database_url,
        LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
        ALLOWED_HOSTS="127.0.0.1,localhost,*.example.com",
        HEALTH_SHOW_DETAILS="when_authorized",
        HEALTH_TOKEN=TOKEN,
        MAX_BODY_BYTES=str(MAX_BODY),
    )
    process = UvicornProcess(env, tmp_path_factory.mktemp("bad-input"), [])
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int) -> dict[str, object]:
        """The problem body, after checking it is one for `status`, with the id and headers every answer has."""
        assert self.status == status, self
        assert self.headers["content-type"] == "application/problem+json", self
        problem: dict[str, object] = json.loads(self.body)
        assert problem["status"] == status
        assert problem["requestId"] == self.headers["x-request-id"]
        for name in SECURITY_HEADERS:
            assert name in self.headers
        return problem


def exchange(server: UvicornProcess, request: bytes) -> Answer:
    """One raw request on its own connection; the answer parsed (the server closes the connection after it)."""
    raw = raw_exchange(server.port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


def request(
    target: str = "/health/live", method: str = "GET", *, host: bytes = b"127.0.0.1", extra: bytes = b""
) -> bytes:
    host_line = b"Host: " + host + b"\r\n" if host else b""
    return f"{method} {target} HTTP/1.1\r\n".encode() + host_line + b"Connection: close\r\n" + extra + b"\r\n"


def assert_clean_log(server: UvicornProcess, *secrets: str) -> None:
    log = server.output()
    assert "Traceback" not in log
    assert '"level":"ERROR"' not in log
    for secret in secrets:
        assert secret not in log


# -- unknown paths and methods -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/nope",
        "/health/",  # no redirect to /health: slashes are not toggled
        "/health/live/extra",
        "/HEALTH",
        "/%00",
        "/%zz",
        "/..%2F..%2Fetc%2Fpasswd",
        "/" + "a" * 4000,
        "*",
    ],
)
def test_unknown_paths_are_404_problems(server: UvicornProcess, target: str) -> None:
    method = "OPTIONS" if target == "*" else "GET"
    answer = exchange(server, request(target, method))
    problem = answer.problem(404)
    assert "location" not in answer.headers
    assert problem["title"] == "Not Found"
    assert_clean_log(server)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/db", "/metrics", "/openapi.json"])
def test_methods_a_route_does_not_take_are_405_problems_with_allow(
    server: UvicornProcess, path: str, method: str
) -> None:
    answer = exchange(server, request(path, method, extra=b"Content-Length: 0\r\n"))
    answer.problem(405)
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}


# -- what uvicorn's HTTP parser refuses before the app sees it ----------------------------------------------------------

UNPARSEABLE = {
    "garbage request line": b"HELLO\r\n\r\n",
    "unknown method": request("/health", "FOO"),
    "lower-case method": request("/health", "get"),
    "CONNECT": request("127.0.0.1:80", "CONNECT"),
    "HTTP/9.9": b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    "header line without a colon": request(extra=b"NoColonHere\r\n"),
    "space in a header name": request(extra=b"Bad Name: x\r\n"),
    "control character in a header value": request(extra=b"X-Foo: a\x01b\r\n"),
    "NUL in a header value": request(extra=b"X-Foo: a\x00b\r\n"),
    "Content-Length not a number": request(extra=b"Content-Length: abc\r\n"),
    "negative Content-Length": request(extra=b"Content-Length: -1\r\n"),
    "Content-Length with Transfer-Encoding": request(
        extra=b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    ),
    "broken chunk": request(extra=b"Transfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n"),
    "64 KiB path": request("/" + "a" * 65536),
    "64 KiB query string": request("/health/live?q=" + "x" * 65536),
}


@pytest.mark.parametrize("raw", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_requests_the_http_parser_refuses_get_uvicorns_plain_400_and_a_closed_connection(
    server: UvicornProcess, raw: bytes
) -> None:
    answer = exchange(server, raw)  # raw_exchange returns only once the server has closed the connection
    assert answer.status == 400
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.body == b"Invalid HTTP request received."
    assert_clean_log(server)


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 100_000 + b"\r\n",
        b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(5000)),
        b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 1)),
    ],
    ids=["100 kB header", "just over the byte limit", "5000 headers", "just over the field limit"],
)
def test_an_oversized_request_head_is_refused_with_a_431_problem(server: UvicornProcess, extra: bytes) -> None:
    # uvicorn's httptools parser takes heads of any size: the request-id middleware refuses them.
    answer = exchange(server, request(extra=extra))
    assert answer.problem(431)["title"] == "Request Header Fields Too Large"
    assert b"aaaa" not in answer.body


def test_a_large_but_reasonable_request_head_is_served(server: UvicornProcess) -> None:
    extra = b"X-Big: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(50))
    assert json.loads(exchange(server, request("/health/live", extra=extra)).body) == {"status": "pass"}


# -- query strings and bodies -------------------------------------------------------------------------------------------


def test_a_huge_query_string_is_ignored_by_health_and_never_echoed(server: UvicornProcess) -> None:
    query = "q=" + "x" * 60_000  # a longer request target is refused by uvicorn (below)
    assert json.loads(exchange(server, request(f"/health/live?{query}")).body) == {"status": "pass"}
    answer = exchange(server, request(f"/nope?{query}"))
    assert answer.problem(404)["instance"] == "/nope"
    assert b"xxxx" not in answer.body
    assert_clean_log(server)


def test_a_body_sent_to_get_is_ignored_up_to_the_limit_and_a_413_problem_beyond(server: UvicornProcess) -> None:
    small = exchange(server, request(extra=b"Content-Length: 5\r\n\r\nhello"))
    assert (small.status, json.loads(small.body)) == (200, {"status": "pass"})
    body = b"x" * (MAX_BODY + 1)
    big = exchange(server, request(extra=b"Content-Length: %d\r\n\r\n" % len(body) + body))
    assert big.problem(413)["title"] == "Content Too Large"


# -- X-Request-ID ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"A" * 129, b"A" * 10_000, b"has space", b"<script>alert(1)</script>", "\u00e9t\u00e9".encode(), b"a;b=c"],
    ids=["129 chars", "10 kB", "space", "markup", "non-ASCII", "separators"],
)
def test_an_invalid_request_id_is_replaced_never_echoed_nor_logged(server: UvicornProcess, value: bytes) -> None:
    """By design not an error: a client's tracing header is no reason to fail a request (or a probe)."""
    marker = value[:64]
    answer = exchange(server, request(extra=b"X-Request-ID: " + value + b"\r\n"))
    assert answer.status == 200
    assert GENERATED_ID.fullmatch(answer.headers["x-request-id"])
    assert marker not in answer.body
    log = server.output().encode("utf-8", "replace")
    assert marker not in log
    assert_clean_log(server)


# -- Authorization --------------------------------------------------------------------------------------------------------

WRONG_CREDENTIALS = {
    "Basic scheme": b"Basic dXNlcjpwYXNz",
    "Bearer without a token": b"Bearer",
    "Bearer with an empty token": b"Bearer ",
    "wrong token": b"Bearer not-the-health-token",
    "token with a suffix": f"Bearer {TOKEN}x".encode(),
    "token as another scheme": f"Token {TOKEN}".encode(),
    "8 kB token": b"Bearer " + b"t" * 8192,
    "non-ASCII bytes": b"Bearer \xff\xfe\xfd",
}


@pytest.mark.parametrize("credentials", WRONG_CREDENTIALS.values(), ids=WRONG_CREDENTIALS.keys())
@pytest.mark.parametrize("path", ["/health", "/health/ready", "/health/db", "/metrics"])
def test_wrong_credentials_get_a_401_problem_that_shows_nothing(
    server: UvicornProcess, path: str, credentials: bytes
) -> None:
    answer = exchange(server, request(path, extra=b"Authorization: " + credentials + b"\r\n"))
    problem = answer.problem(401)
    assert answer.headers["www-authenticate"].startswith("Bearer realm=")
    assert answer.headers["cache-control"] == "no-store"
    assert set(problem) == {"type", "title", "status", "detail", "instance", "requestId"}
    for hidden in (b"checks", b"output", b"postgresql", TOKEN.encode()):
        assert hidden not in answer.body
    assert_clean_log(server, TOKEN)


def test_the_right_token_shows_the_details_the_wrong_ones_do_not(server: UvicornProcess) -> None:
    # The same request with the right token: the 401s above are about the credentials, nothing else.
    answer = exchange(server, request("/health/db", extra=f"Authorization: bearer {TOKEN}\r\n".encode()))
    assert answer.status == 200
    assert "postgresql:connections" in json.loads(answer.body)["checks"]


# -- Host and ALLOWED_HOSTS -----------------------------------------------------------------------------------------------

BAD_HOSTS = {
    "another host": b"evil.example.org",
    "the parent of a wildcard": b"example.com",
    "a lookalike suffix": b"evilexample.com",
    "userinfo": b"evil.org@127.0.0.1",
    "bad port": b"127.0.0.1:abc",
    "port too long": b"127.0.0.1:123456",
    "IPv6 not listed": b"[::1]:8000",
    "empty": b"",
    "a query before a wildcard suffix": b"evil.com?.example.com",
    "a path before a wildcard suffix": b"evil.com/.example.com",
}


@pytest.mark.parametrize("host", BAD_HOSTS.values(), ids=BAD_HOSTS.keys())
def test_a_host_outside_allowed_hosts_is_a_400_problem_that_does_not_repeat_it(
    server: UvicornProcess, host: bytes
) -> None:
    # An empty value is still one Host header: `request` leaves its own out when given none.
    raw = request("/health/live", host=b"", extra=b"Host: \r\n") if host == b"" else request("/health/live", host=host)
    answer = exchange(server, raw)
    problem = answer.problem(400)
    assert problem["detail"] == "The Host header does not name a host this server answers to."
    if host:
        assert host not in answer.body
    assert_clean_log(server)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /health/live HTTP/1.0\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n",
        request(extra=b"Host: evil.example.org\r\n"),
    ],
    ids=["HTTP/1.0 without Host", "HTTP/1.1 without Host", "two Host headers"],
)
def test_a_request_without_exactly_one_host_is_a_400_problem(server: UvicornProcess, raw: bytes) -> None:
    exchange(server, raw).problem(400)


@pytest.mark.parametrize("host", [b"127.0.0.1", b"localhost:8000", b"LOCALHOST", b"localhost.", b"api.example.com"])
def test_allowed_hosts_match_case_insensitively_with_any_port(server: UvicornProcess, host: bytes) -> None:
    assert exchange(server, request(host=host)).status == 200


def test_the_memory_of_allowed_host_values_is_bounded_and_never_holds_a_refused_one() -> None:
    hosts = AllowedHosts(["*.example.com"])
    for i in range(1000):
        assert hosts.allowed([b"h%d.example.com:80" % i])
        assert not hosts.allowed([b"h%d.example.org" % i])
    assert len(hosts.known) == 256
    assert all(value.endswith(b".example.com:80") for value in hosts.known)
    assert hosts.allowed([b"h999.example.com:80"])  # past the bound, still parsed and allowed


@pytest.mark.parametrize("allowed_hosts", [("*",), ("a.example", "*")])
async def test_with_allowed_hosts_star_any_host_is_served(
    make_settings: Callable[..., Settings], allowed_hosts: tuple[str, ...]
) -> None:
    async with serve(create_app(make_settings(allowed_hosts=allowed_hosts))) as client:
        response = await client.get("/health/live", headers={"Host": "anything.invalid"})
    assert response.status_code == 200


def test_uvicorn_log_has_no_traceback_after_all_of_it(server: UvicornProcess) -> None:
    # Its own bad requests of every kind first, so that it means something when run alone (-k); in a whole run it comes
    # last (pytest keeps file order) and the log also holds everything the tests above sent to this one server.
    for raw in UNPARSEABLE.values():
        assert exchange(server, raw).status == 400
    body = b"x" * (MAX_BODY + 1)
    assert exchange(server, request(extra=b"Content-Length: %d\r\n\r\n" % len(body) + body)).status == 413
    assert exchange(server, request("/nope")).status == 404
    assert exchange(server, request("/health", "POST", extra=b"Content-Length: 0\r\n")).status == 405
    assert exchange(server, request(extra=b"X-Request-ID: <script>\r\n")).status == 200
    assert exchange(server, request("/health/db", extra=f"Authorization: Bearer {TOKEN}x\r\n".encode())).status == 401
    assert exchange(server, request(host=b"evil.example.org")).status == 400
    assert "Invalid HTTP request received." in server.output()
    assert_clean_log(server, TOKEN)
    assert httpx.get(server.base_url + "/health/live").status_code == 200
