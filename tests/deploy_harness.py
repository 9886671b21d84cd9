"""Reading the shipped deployment artefacts (Dockerfile, deploy/kubernetes, deploy/prometheus) for the tests.

Nothing here knows what the artefacts should say: it reads them, resolves them as Docker and Kubernetes would
(ENV expansion, Secret references, named ports, svc's own CLI defaults and settings), and leaves the judging to
tests/test_deploy_config.py and tests/test_deploy.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from svc.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "scrape-config.yaml"
#: The PATH of the python base images, which ENV PATH=...:${PATH} extends.
BASE_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


# --- Kubernetes -------------------------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/kubernetes, examples included."""
    return sorted(KUBERNETES.rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object shipped (not the kustomization), with its file."""
    for path in manifest_files():
        for doc in documents(path):
            if doc["kind"] != "Kustomization":
                yield path, doc


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in resources() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, "one container per pod"
    container: dict[str, Any] = containers[0]
    return container


def run_as(workload: Mapping[str, Any]) -> tuple[int, int]:
    """The user and group the container runs as (the container's securityContext wins over the pod's)."""
    pod = pod_spec(workload).get("securityContext", {})
    own = only_container(workload).get("securityContext", {})
    return own.get("runAsUser", pod.get("runAsUser")), own.get("runAsGroup", pod.get("runAsGroup"))


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"the container has no port named {port!r}"
    number: int = numbers[0]
    return number


def example_secrets() -> dict[str, dict[str, str]]:
    """examples/secrets.yaml: each Secret's stringData by Secret name."""
    return {doc["metadata"]["name"]: doc["stringData"] for doc in documents(KUBERNETES / "examples" / "secrets.yaml")}


def container_env(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: values, and Secret keys from `secrets` by Secret name."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = secrets[ref["name"]][ref["key"]]
    assert "envFrom" not in container, "every variable is named in env"
    return env


def pgbouncer_ini() -> str:
    ini: str = resource("ConfigMap", "svc-pgbouncer")["data"]["pgbouncer.ini"]
    return ini


def ini_values(text: str, section: str) -> dict[str, str]:
    """`key = value` lines of one section of a PgBouncer ini (`;` comments), as PgBouncer reads them."""
    values: dict[str, str] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def connection_string(text: str) -> dict[str, str]:
    """A [databases] entry's `host=... port=... dbname=...` as a dict."""
    return dict(item.split("=", 1) for item in text.split())


# --- svc's own reading of the configuration ----------------------------------------------------------------------------


def serve_options(command: list[str]) -> argparse.Namespace:
    """What `python -m svc serve ...` in `command` runs with, defaults included, as svc's own CLI parses it."""
    import svc.__main__ as cli

    assert command[:4] == ["python", "-m", "svc", "serve"], command
    parsed: list[argparse.Namespace] = []

    def capture(args: argparse.Namespace) -> int:
        parsed.append(args)
        return 0

    with mock.patch.object(cli, "serve", side_effect=capture):
        assert cli.main(command[3:]) == 0
    return parsed[0]


def effective_settings(env: Mapping[str, str]) -> Settings:
    """The settings svc builds from exactly `env` (no .env file, nothing else from this process)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return load_settings(env_file=None)


# --- Dockerfile ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def values(self, keyword: str) -> list[str]:
        return [value for kw, value in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.values(keyword)
        assert found, f"the stage has no {keyword}"
        return found[-1]


@dataclasses.dataclass
class Dockerfile:
    """A Dockerfile's stages, read the way the builder reads them (continuations joined, comments dropped)."""

    global_args: dict[str, str]
    stages: list[Stage]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text().splitlines():
            if raw.lstrip().startswith("#") or (not raw.strip() and not pending):
                continue  # comments, parser directives, and blank lines (also inside continuations)
            pending += raw.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            keyword, _, value = pending.strip().partition(" ")
            instructions.append((keyword.upper(), value.strip()))
            pending = ""
        global_args: dict[str, str] = {}
        stages: list[Stage] = []
        for keyword, value in instructions:
            if keyword == "FROM":
                base, _, name = value.partition(" AS ")
                stages.append(Stage(expand(base, global_args), name.strip() or None, []))
            elif not stages:
                assert keyword == "ARG", f"only ARG may come before FROM, not {keyword}"
                key, _, default = value.partition("=")
                global_args[key] = default
            else:
                stages[-1].instructions.append((keyword, value))
        return cls(global_args, stages)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def env(self, stage: Stage, **overrides: str) -> dict[str, str]:
        """The stage's ENV, each value expanded as the builder does; `overrides` replace values as they are set
        (SVC_HOME in a test's directory, say), so later ENV lines expand with them."""
        env = {"PATH": BASE_IMAGE_PATH}
        for line in stage.values("ENV"):
            before = dict(env)
            for item in shlex.split(line):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {line!r}: use KEY=VALUE"
                env[key] = overrides.get(key, expand(value, before))
        return env

    def args(self, stage: Stage) -> dict[str, str]:
        """The stage's ARG defaults."""
        return dict(value.partition("=")[::2] for value in stage.values("ARG"))

    def labels(self, stage: Stage) -> dict[str, str]:
        args = self.args(stage)
        labels: dict[str, str] = {}
        for line in stage.values("LABEL"):
            for item in shlex.split(line):
                key, _, value = item.partition("=")
                labels[key] = expand(value, args)
        return labels

    def cmd(self) -> list[str]:
        """The final stage's CMD (exec form)."""
        command: list[str] = json.loads(self.final.last("CMD"))
        return command

    def user(self) -> tuple[int, int]:
        uid, _, gid = self.final.last("USER").partition(":")
        return int(uid), int(gid)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced as Docker does in ENV, WORKDIR, COPY and LABEL (unset: empty)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], ""), text)
