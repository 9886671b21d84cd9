"""The README tells the truth: every documented request, the configuration table, and `.env.example`.

Every ```console block in README.md that starts with `$ curl` is an example: the request is sent to a
real uvicorn process (development settings on the test database) and the response must match what the
block shows: the status line, each header shown (others may be added), and the body. A JSON body must
have the same shape: the same keys, the same array lengths, the same values, except those that vary
from run to run (times, measurements, versions: see VARYING), compared by JSON type. Another body is
compared line by line, numbers by type. An HTML comment right before a block sets server variables for
that example, e.g. `<!-- readme-test: DATABASE_URL=postgresql://svc@127.0.0.1:{refused_port}/svc -->`
(`{refused_port}` is a loopback port that refuses connections).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from environs import Env

import svc.settings
from svc.settings import Settings, load_settings
from tests.conftest import ROOT, UvicornProcess, free_port, scrubbed_environ

README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
DOCUMENTED_ORIGIN = "http://127.0.0.1:8000"
# JSON members whose values vary between runs and servers: compared by JSON type (recursively for objects).
VARYING = frozenset({"time", "observedValue", "releaseId"})
NUMBER = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|NaN|[-+]?Inf)"


@dataclasses.dataclass(frozen=True)
class Example:
    """One documented request and the response the README shows for it."""

    line: int
    method: str
    path: str
    headers: dict[str, str]
    status: int
    reason: str | None
    response_headers: dict[str, str] | None  # None: the README shows no headers (no `curl -i`)
    body: str
    variables: dict[str, str]

    def __str__(self) -> str:
        return f"README.md:{self.line} {self.method} {self.path}"


def parse_curl(command: str) -> tuple[str, str, dict[str, str], bool]:
    """(method, path, headers, shows headers) of a documented `curl` command; only the options used in docs."""
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, url, headers, include = "GET", None, {}, False
    words = iter(args[1:])
    for arg in words:
        if arg in ("-i", "--include"):
            include = True
        elif arg in ("-I", "--head"):
            include, method = True, "HEAD"
        elif arg in ("-s", "--silent"):
            pass
        elif arg in ("-X", "--request"):
            method = next(words)
        elif arg in ("-H", "--header"):
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif arg.startswith("http"):
            url = arg
        else:
            raise AssertionError(f"the README test does not know curl option {arg!r} in: {command}")
    assert url is not None, f"no URL in: {command}"
    assert url.startswith(DOCUMENTED_ORIGIN + "/"), f"examples use {DOCUMENTED_ORIGIN}: {command}"
    return method, url.removeprefix(DOCUMENTED_ORIGIN), headers, include


def readme_examples(text: str) -> Iterator[Example]:
    """Every ```console block of `text` that starts with `$ curl`."""
    block = re.compile(r"(?:<!-- readme-test: (?P<vars>[^>]*?) -->\n)?```console\n(?P<body>.*?)```", re.S)
    for match in block.finditer(text):
        lines = match["body"].splitlines()
        if not lines or not lines[0].startswith("$ curl "):
            continue
        method, path, headers, include = parse_curl(lines[0].removeprefix("$ "))
        variables = dict(item.split("=", 1) for item in shlex.split(match["vars"] or ""))
        number = text.count("\n", 0, match.start("body"))
        response = lines[1:]
        response_headers = None
        status, reason = 200, None
        if include:
            protocol, status_text, *words = response[0].split()
            assert protocol.startswith("HTTP/"), f"README.md:{number}: no status line"
            status, reason = int(status_text), " ".join(words)
            blank = response.index("") if "" in response else len(response)  # HEAD shows no body
            response_headers = {}
            for header in response[1:blank]:
                name, _, value = header.partition(":")
                response_headers[name.strip().lower()] = value.strip()
            response = response[blank + 1 :]
        body = "\n".join(response)
        yield Example(number, method, path, headers, status, reason, response_headers, body, variables)


EXAMPLES = list(readme_examples(README.read_text()))


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def differences(documented: Any, actual: Any, where: str = "$", *, varying: bool = False) -> Iterator[str]:
    """Where `actual` does not have the documented shape (and value, for members that do not vary)."""
    if json_type(documented) != json_type(actual):
        yield f"{where}: documented {json_type(documented)} {documented!r}, got {json_type(actual)} {actual!r}"
    elif isinstance(documented, dict):
        if documented.keys() != actual.keys():
            yield f"{where}: documented keys {sorted(documented)}, got {sorted(actual)}"
        for key in documented.keys() & actual.keys():
            yield from differences(documented[key], actual[key], f"{where}.{key}", varying=varying or key in VARYING)
    elif isinstance(documented, list):
        if len(documented) != len(actual):
            yield f"{where}: documented {len(documented)} items, got {len(actual)}"
        for index, (doc, act) in enumerate(zip(documented, actual, strict=False)):
            yield from differences(doc, act, f"{where}[{index}]", varying=varying)
    elif not varying and documented != actual:
        yield f"{where}: documented {documented!r}, got {actual!r}"


def text_differences(documented: str, actual: str) -> Iterator[str]:
    """Documented lines missing from `actual` (in order); numbers match any number."""
    lines = iter(actual.splitlines())
    for line in documented.splitlines():
        if not line.strip():
            continue
        pattern = re.compile(
            "".join(NUMBER if re.fullmatch(NUMBER, part) else re.escape(part) for part in split_numbers(line))
        )
        if not any(pattern.fullmatch(candidate) for candidate in lines):
            yield f"documented line not in the response (in order): {line}"
            return


def split_numbers(line: str) -> list[str]:
    return [part for part in re.split(f"({NUMBER})", line) if part]


def is_json(response: httpx.Response) -> bool:
    media_type: str = response.headers.get("content-type", "").split(";")[0]
    return media_type == "application/json" or media_type.endswith("+json")


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items() if key not in VARYING}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return value


def settle(base_url: str, timeout: float = 10.0) -> None:
    """Wait until the first database and schema checks are done: `/health/db` answers the same twice in a row.

    Until then the documented bodies (on `/health` too, which shows the last results) are not there yet.
    """
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        current = shape(httpx.get(base_url + "/health/db").json())
        if current == previous:
            return
        previous = current
        time.sleep(0.3)
    raise TimeoutError(f"{base_url}/health/db did not settle: {previous}")


DOCUMENTED = {"status": "pass", "checks": {"uptime": [{"time": "2026-01-01T00:00:00.000Z", "observedValue": 1.5}]}}


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        ({"status": "warn", "checks": {"uptime": [{"time": "x", "observedValue": 2}]}}, "$.status: documented 'pass'"),
        ({"status": "pass", "checks": {"uptime": [{"time": "x", "observedValue": "2"}]}}, "documented number 1.5"),
        ({"status": "pass", "checks": {"uptime": []}}, "$.checks.uptime: documented 1 items, got 0"),
        ({"status": "pass", "checks": {"uptime": [{"time": "x"}]}}, "documented keys ['observedValue', 'time']"),
        ({"status": "pass", "checks": {"uptime": [{"time": 1, "observedValue": 2}]}}, "documented string"),
    ],
    ids=["value", "varying value's type", "array length", "missing key", "type"],
)
def test_the_json_comparison_reports_what_differs(actual: Any, problem: str) -> None:
    assert (
        list(differences(DOCUMENTED, {"status": "pass", "checks": {"uptime": [{"time": "x", "observedValue": 2}]}}))
        == []
    )
    [found] = differences(DOCUMENTED, actual)
    assert found.startswith(problem) or problem in found


@pytest.mark.parametrize(
    ("actual", "matches"),
    [
        ("# TYPE up gauge\nup 1.0\nother 2\nlatency_sum 0.25", True),
        ("# TYPE up gauge\nup NaN\nlatency_sum 3e-05", True),
        ("latency_sum 0.25\n# TYPE up gauge\nup 1.0", False),
        ("# TYPE up counter\nup 1.0\nlatency_sum 0.25", False),
        ("# TYPE up gauge\nup one\nlatency_sum 0.25", False),
    ],
    ids=["numbers vary", "special numbers", "order", "text", "not a number"],
)
def test_the_text_comparison_wants_the_documented_lines_in_order(actual: str, matches: bool) -> None:
    documented = "# TYPE up gauge\nup 1\n\nlatency_sum 0.5"
    assert (list(text_differences(documented, actual)) == []) is matches


@pytest.fixture(scope="module")
def servers(migrated_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """The base URL of a development server with the given extra variables (one server per set, reused)."""
    running: dict[tuple[tuple[str, str], ...], UvicornProcess] = {}
    refused_port = free_port()

    def server(variables: dict[str, str]) -> str:
        key = tuple(sorted(variables.items()))
        if key not in running:
            env = scrubbed_environ()
            env.update(APP_ENV="development", DATABASE_URL=migrated_database_url, LOG_FORMAT="json")
            env.update(PYTHONPATH=str(ROOT))
            env.update({name: value.format(refused_port=refused_port) for name, value in variables.items()})
            process = UvicornProcess(env, tmp_path_factory.mktemp("readme"), [])
            running[key] = process
            process.wait_ready()
            settle(process.base_url)
        return running[key].base_url

    yield server
    for process in running.values():
        process.stop()


def test_the_readme_documents_requests() -> None:
    assert len(EXAMPLES) >= 5
    assert {example.path for example in EXAMPLES} >= {"/health/live", "/health", "/health/db", "/health/ready"}


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_documented_request_gets_the_documented_response(example: Example, servers: Callable[..., str]) -> None:
    response = httpx.request(example.method, servers(example.variables) + example.path, headers=example.headers)
    assert response.status_code == example.status, response.text
    if example.reason is not None:
        assert response.reason_phrase == example.reason
    for name, value in (example.response_headers or {}).items():
        assert response.headers.get(name) == value, f"header {name}"
    if example.method == "HEAD":
        problems = [f"HEAD answered a body of {len(response.content)} bytes"] if response.content else []
    elif is_json(response):
        problems = list(differences(json.loads(example.body), response.json()))
    else:
        problems = list(text_differences(example.body, response.text))
    assert not problems, "\n".join(problems)


# --- configuration ------------------------------------------------------------------------------------------------------


@pytest.fixture
def variables_read(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every variable `load_settings()` reads, with the value it settled on when none is set."""
    envs: list[Any] = []

    class RecordingEnv(Env):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            envs.append(self)

    monkeypatch.setattr(svc.settings, "Env", RecordingEnv)
    load_settings(env_file=None)
    [env] = envs
    return dict(env.dump())


def configuration_table() -> dict[str, str]:
    """Variable -> documented default, from the table under "## Configuration" in the README."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        name, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        table[name.strip("`")] = default
    return table


def env_example() -> dict[str, str | None]:
    """Variable -> value in .env.example (None when it is only mentioned in a comment, like `# NAME=`)."""
    found: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            found[match[2]] = None if match[1] else match[3]
    return found


def test_the_configuration_table_documents_exactly_the_variables_read(variables_read: dict[str, Any]) -> None:
    documented = configuration_table()
    assert sorted(set(variables_read) - set(documented)) == [], "read but not documented in the README"
    assert sorted(set(documented) - set(variables_read)) == [], "documented in the README but not read"


def test_env_example_names_exactly_the_variables_read(variables_read: dict[str, Any]) -> None:
    example = env_example()
    assert sorted(set(variables_read) - set(example)) == [], "read but missing from .env.example"
    assert sorted(set(example) - set(variables_read)) == [], "in .env.example but not read"


def literal(default: str) -> str | None:
    """The documented default when it is one literal value (`5`, `INFO`), else None (prose: "package version")."""
    match = re.fullmatch(r"`([^`]*)`", default)
    return None if match is None else match[1]


def same_value(text: str, value: Any) -> bool:
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)):
        return float(text) == value
    if isinstance(value, (tuple, list)):
        return text.split(",") == [str(item) for item in value]
    return text == str(value)


def test_literal_defaults_in_the_table_are_the_defaults_used(variables_read: dict[str, Any]) -> None:
    defaults = load_settings(env_file=None).masked()
    checked = {name: literal(default) for name, default in configuration_table().items()}
    wrong = {
        name: (text, defaults[name])
        for name, text in checked.items()
        if text is not None and name in defaults and not same_value(text, defaults[name])
    }
    assert wrong == {}
    assert len([text for text in checked.values() if text is not None]) >= 15


def test_env_example_copied_to_env_is_a_valid_configuration_with_the_documented_defaults(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text(ENV_EXAMPLE.read_text())
    settings = load_settings()
    defaults = Settings()
    for name, value in env_example().items():
        if value is not None:
            assert same_value(value, getattr(defaults, name.lower())), f"{name}={value} is not the default"
    assert settings == load_settings(env_file=None)


# --- pre-commit ----------------------------------------------------------------------------------------------------------


def test_pre_commit_hooks_are_local_and_use_the_projects_environment() -> None:
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert {hook["id"] for hook in hooks} == {"ruff-check", "ruff-format", "mypy", "lint-migrations"}
    assert all(hook["language"] == "system" and "scripts/uv.sh" in hook["entry"] for hook in hooks)
    assert "uv run pre-commit install" in README.read_text()


@pytest.mark.slow
def test_pre_commit_runs_every_hook_without_downloading_anything(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--files", "svc/__init__.py"],
        cwd=ROOT,
        env={**os.environ, "PRE_COMMIT_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("ruff check", "ruff format", "mypy"):
        assert re.search(rf"^{re.escape(name)}\b.*Passed$", result.stdout, re.M), result.stdout
    # pre-commit clones hook repositories into PRE_COMMIT_HOME as repo* directories: local hooks need none.
    assert not list(tmp_path.glob("repo*"))


# --- Code the README quotes is the example's real code ---------------------------------------------------------------

QUOTED = re.compile(r"<!-- quote: (?P<path>[^ >]+) -->\n```python\n(?P<code>.*?)```", re.S)


def quoted_code() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in QUOTED.finditer(README.read_text())]


def test_the_build_a_resource_walkthrough_quotes_code() -> None:
    assert len(quoted_code()) >= 5


@pytest.mark.parametrize(("path", "code"), quoted_code(), ids=[f"{p}:{i}" for i, (p, _) in enumerate(quoted_code())])
def test_quoted_code_is_the_files_own(path: str, code: str) -> None:
    # Every line of the block, in order, is a line of the file (a quote may leave out lines, marked "...").
    lines = iter((ROOT / path).read_text().splitlines())
    for wanted in code.splitlines():
        if wanted.strip() in ("...", "# ..."):
            continue
        assert any(line == wanted for line in lines), f"{path} does not have, in this order: {wanted!r}"
