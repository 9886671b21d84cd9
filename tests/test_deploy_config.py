"""The deployment artefacts agree with Kubernetes' schemas and with svc's settings, CLI and limits (no process runs).

tests/test_deploy.py runs them; this module checks what running a single pod here cannot show: schemas, probe
timing against the settings, the grace period, security contexts, and the connection arithmetic at full scale.
"""

from __future__ import annotations

import copy
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from svc.settings import Settings
from tests.deploy_harness import (
    KUBERNETES,
    ROOT,
    SCRAPE_CONFIG,
    Dockerfile,
    connection_string,
    container_env,
    container_port,
    documents,
    effective_settings,
    example_secrets,
    ini_values,
    manifest_files,
    only_container,
    pgbouncer_ini,
    pod_spec,
    project_version,
    resource,
    resources,
    run_as,
    serve_options,
)

#: The Kubernetes versions whose schemas every manifest must satisfy (strict: unknown fields fail too).
KUBERNETES_VERSIONS = ("1.30", "1.37")
#: Connections each svc worker opens beyond its pool: the health probe's own, and the schema check's.
EXTRA_CONNECTIONS_PER_WORKER = 2
#: PostgreSQL's default superuser_reserved_connections: slots PgBouncer can never have.
SUPERUSER_RESERVED = 3
#: The migration Job's connections to PostgreSQL (alembic's, and svc's schema read).
MIGRATION_CONNECTIONS = 2

WORKLOADS = [("Deployment", "svc"), ("Job", "svc-migrate-" + project_version()), ("Deployment", "svc-pgbouncer")]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def svc_deployment() -> dict[str, Any]:
    return resource("Deployment", "svc")


def deployed_secrets() -> dict[str, dict[str, str]]:
    """The example Secrets, with secrets that pass svc's production checks in place of the placeholders."""
    values = example_secrets()
    values["svc-secrets"] |= {"SECRET_KEY": secrets.token_urlsafe(32), "HEALTH_TOKEN": secrets.token_urlsafe(24)}
    return values


def svc_settings() -> Settings:
    """The settings a pod of the svc Deployment runs with."""
    return effective_settings(container_env(only_container(svc_deployment()), deployed_secrets()))


def every_document() -> list[tuple[str, dict[str, Any]]]:
    return [(str(path.relative_to(KUBERNETES)), doc) for path, doc in resources()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("name", "document"),
    every_document(),
    ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in every_document()],
)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str, name: str, document: Any) -> None:
    kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda probe: probe.update(timeoutSecond=1), "'timeoutSecond' was unexpected"),
        (lambda probe: probe.update(timeoutSeconds="1"), "is not of type 'integer'"),
    ],
    ids=["misspelt field", "wrong type"],
)
def test_schema_validation_rejects_a_broken_deployment(change: Any, message: str) -> None:
    broken = copy.deepcopy(svc_deployment())
    change(only_container(broken)["readinessProbe"])
    with pytest.raises(kubernetes_validate.ValidationError, match=message):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_applies_every_manifest_but_the_examples() -> None:
    kustomization = documents(KUBERNETES / "kustomization.yaml")[0]
    shipped = {str(p.relative_to(KUBERNETES)) for p in manifest_files()} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(p for p in shipped if not p.startswith("examples/"))


@pytest.mark.parametrize(
    ("name", "document"),
    every_document(),
    ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in every_document()],
)
def test_names_are_kubernetes_names(name: str, document: Any) -> None:
    # DNS-1123 subdomains, and short enough for a label: a Job's name is also its pods' job-name label.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?", document["metadata"]["name"])


@pytest.mark.parametrize("probe", PROBES)
def test_probes_wait_longer_than_the_database_check_and_no_longer_than_their_period(probe: str) -> None:
    spec = only_container(svc_deployment())[probe]
    settings = svc_settings()
    assert spec["timeoutSeconds"] > settings.health_db_timeout
    # A probe still waiting when the next is due would overlap it: the kubelet's patience is one period.
    assert spec["timeoutSeconds"] <= spec["periodSeconds"]


@pytest.mark.parametrize(("probe", "path"), [("startupProbe", "/health/live"), ("livenessProbe", "/health/live")])
def test_restarting_probes_never_depend_on_the_database(probe: str, path: str) -> None:
    assert only_container(svc_deployment())[probe]["httpGet"]["path"] == path


def test_readiness_uses_the_readiness_endpoint_and_notices_a_drain_before_it_ends() -> None:
    readiness = only_container(svc_deployment())["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/health/ready"
    noticed_within = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert noticed_within <= svc_settings().shutdown_drain_seconds


def test_the_grace_period_covers_the_drain_and_the_graceful_shutdown() -> None:
    deployment = svc_deployment()
    options = serve_options(only_container(deployment)["command"])
    settings = svc_settings()
    assert settings.shutdown_drain_seconds > 0, "deployed pods drain before they stop accepting"
    needed = settings.shutdown_drain_seconds + options.timeout_graceful_shutdown
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > needed


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_workloads_run_as_non_root_with_a_read_only_root_and_no_privilege_escalation(kind: str, name: str) -> None:
    workload = resource(kind, name)
    pod_context = pod_spec(workload)["securityContext"]
    context = only_container(workload)["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert run_as(workload)[0] not in (None, 0)
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS[:2])
def test_svc_workloads_run_as_the_image_user_with_a_volume_at_its_tmpdir(kind: str, name: str) -> None:
    image = Dockerfile.read()
    workload = resource(kind, name)
    assert run_as(workload) == image.user()
    mounts = {m["mountPath"] for m in only_container(workload)["volumeMounts"]}
    assert image.env(image.final)["TMPDIR"] in mounts


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_every_container_requests_and_limits_cpu_and_memory(kind: str, name: str) -> None:
    resources_ = only_container(resource(kind, name))["resources"]
    for bound in ("requests", "limits"):
        assert set(resources_[bound]) == {"cpu", "memory"}


def test_the_svc_pods_take_their_secrets_from_a_secret() -> None:
    env = {v["name"]: v for v in only_container(svc_deployment())["env"]}
    for name in ("DATABASE_URL", "SECRET_KEY", "HEALTH_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "svc-secrets", "key": name}


def test_svc_reaches_postgresql_through_pgbouncer_and_the_migration_directly() -> None:
    service = resource("Service", "svc-pgbouncer")
    database, upstream = next(iter(ini_values(pgbouncer_ini(), "databases").items()))
    upstream_parts = connection_string(upstream)
    job = resource("Job", "svc-migrate-" + project_version())
    through = urlsplit(container_env(only_container(svc_deployment()), example_secrets())["DATABASE_URL"])
    direct = urlsplit(container_env(only_container(job), example_secrets())["DATABASE_URL"])
    assert (through.hostname, through.port, through.path) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
        f"/{database}",
    )
    assert (direct.hostname, str(direct.port), direct.path) == (
        upstream_parts["host"],
        upstream_parts["port"],
        f"/{upstream_parts['dbname']}",
    )
    userlist = example_secrets()["svc-pgbouncer-auth"]["userlist.txt"]
    assert re.fullmatch(rf'"{through.username}" "{through.password}"\n', userlist)


def test_svc_keeps_no_statement_across_pgbouncer_transactions() -> None:
    assert ini_values(pgbouncer_ini(), "pgbouncer")["pool_mode"] == "transaction"
    assert svc_settings().db_statement_cache_size == 0


def clients_at_full_scale() -> int:
    """svc's connections to PgBouncer with the HPA at its maximum and a rollout's surge on top."""
    deployment = svc_deployment()
    hpa = resource("HorizontalPodAutoscaler", "svc")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pods = (
        max(hpa["spec"]["maxReplicas"], deployment["spec"]["replicas"])
        + deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    )
    workers = serve_options(only_container(deployment)["command"]).workers
    settings = svc_settings()
    return int(pods * workers * (settings.db_pool_size + settings.db_max_overflow + EXTRA_CONNECTIONS_PER_WORKER))


def test_svc_at_full_scale_fits_pgbouncer_max_client_conn() -> None:
    # Each PgBouncer must take them all: a Service does not balance connections evenly.
    assert clients_at_full_scale() <= int(ini_values(pgbouncer_ini(), "pgbouncer")["max_client_conn"])


def test_pgbouncer_at_full_scale_fits_postgresql_max_connections() -> None:
    config = ini_values(pgbouncer_ini(), "pgbouncer")
    per_instance = int(config["max_db_connections"])
    # One database and one user: the pool and its reserve are all one instance opens, within max_db_connections.
    assert len(ini_values(pgbouncer_ini(), "databases")) == 1
    assert int(config["default_pool_size"]) + int(config["reserve_pool_size"]) <= per_instance
    pgbouncer = resource("Deployment", "svc-pgbouncer")
    instances = pgbouncer["spec"]["replicas"] + pgbouncer["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    max_connections = int(pgbouncer["metadata"]["annotations"]["svc/postgresql-max-connections"])
    assert instances * per_instance + MIGRATION_CONNECTIONS + SUPERUSER_RESERVED <= max_connections


def test_replicas_survive_a_disruption_and_autoscaling_keeps_two() -> None:
    deployment = svc_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert resource("HorizontalPodAutoscaler", "svc")["spec"]["minReplicas"] >= 2
    budget = resource("PodDisruptionBudget", "svc")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] < deployment["spec"]["replicas"]


@pytest.mark.parametrize(("service", "deployment"), [("svc", "svc"), ("svc-pgbouncer", "svc-pgbouncer")])
def test_services_select_their_pods_and_a_port_they_listen_on(service: str, deployment: str) -> None:
    spec = resource("Service", service)["spec"]
    workload = resource("Deployment", deployment)
    assert spec["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    for port in spec["ports"]:
        container_port(only_container(workload), port["targetPort"])


def test_svc_images_carry_the_project_version_and_the_job_is_named_for_it() -> None:
    version = project_version()
    job = resource("Job", f"svc-migrate-{version}")
    for workload in (svc_deployment(), job):
        assert only_container(workload)["image"] == f"svc:{version}"


def test_the_image_listens_where_the_deployment_probes_and_stops_on_sigterm() -> None:
    image = Dockerfile.read()
    container = only_container(svc_deployment())
    assert int(image.final.last("EXPOSE")) == container_port(container, "http")
    assert image.final.last("STOPSIGNAL") == "SIGTERM"
    assert serve_options(image.cmd()).port == container_port(container, "http")
    assert serve_options(container["command"]).port == container_port(container, "http")
    assert serve_options(container["command"]).host == "0.0.0.0"


def test_the_image_is_built_in_a_stage_of_its_own_from_the_lock_without_development_groups() -> None:
    image = Dockerfile.read()
    build, final = image.stages[0], image.final
    assert len(image.stages) == 2
    assert build.name is not None
    assert final.base == build.base, "the venv links to the build stage's interpreter"
    assert build.values("RUN")[-1] == "sh deploy/docker/install.sh"
    install = (ROOT / "deploy" / "docker" / "install.sh").read_text()
    assert "sync --locked --no-default-groups" in install
    # The final stage copies the installed tree only, and installs nothing (no uv, no compiler).
    copies = final.values("COPY")
    assert copies == [f"--from={build.name} ${{SVC_HOME}} ${{SVC_HOME}}"]
    assert all(not re.search(r"\b(pip|uv|apt-get|apt)\b", run) for run in final.values("RUN"))


def test_the_image_runs_as_a_fixed_non_root_user_without_writing_bytecode() -> None:
    image = Dockerfile.read()
    env = image.env(image.final)
    uid, gid = image.user()
    assert uid >= 1000
    assert gid >= 1000
    assert f"--uid {uid}" in image.final.values("RUN")[0]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(env["SVC_HOME"] + "/venv/bin:")
    assert image.final.last("WORKDIR") == "${SVC_HOME}/app"
    assert image.cmd()[:4] == ["python", "-m", "svc", "serve"]


def test_the_image_labels_name_its_version_and_source() -> None:
    image = Dockerfile.read()
    labels = image.labels(image.final)
    assert labels["org.opencontainers.image.version"] == project_version()
    assert {"org.opencontainers.image.source", "org.opencontainers.image.revision"} <= labels.keys()


def test_the_docker_context_admits_what_the_dockerfile_copies_and_nothing_else() -> None:
    image = Dockerfile.read()
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert lines[0] == "*"  # everything is excluded first
    copied: set[str] = set()
    for copy_args in image.stages[0].values("COPY"):
        copied.update(source.rstrip("/") for source in copy_args.split()[:-1])
    assert copied == admitted


def test_the_install_script_copies_what_the_build_stage_copied() -> None:
    image = Dockerfile.read()
    copied = {source for line in image.stages[0].values("COPY") for source in line.split()[:-1]}
    install = (ROOT / "deploy" / "docker" / "install.sh").read_text()
    copy_line = next(line for line in install.splitlines() if line.startswith("cp -R "))
    assert set(copy_line.split()[2:-1]) == copied - {"deploy/docker/install.sh"}


def test_prometheus_scrapes_the_svc_pods_metrics_with_the_health_token() -> None:
    job = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
    template = svc_deployment()["spec"]["template"]
    labels, annotations = template["metadata"]["labels"], template["metadata"]["annotations"]
    assert job["metrics_path"] == annotations["prometheus.io/path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["scheme"] == "http"
    assert int(annotations["prometheus.io/port"]) == container_port(only_container(svc_deployment()), "http")
    meta = {
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": labels["app.kubernetes.io/name"],
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": labels["app.kubernetes.io/component"],
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": annotations["prometheus.io/scrape"],
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    keeps = [rule for rule in job["relabel_configs"] if rule.get("action", "replace") == "keep"]
    assert keeps
    for rule in keeps:
        value = ";".join(meta[label] for label in rule["source_labels"])
        assert re.fullmatch(rule["regex"], value), rule
    # The pod template of the migration Job must not be scraped: it serves nothing.
    job_labels = resource("Job", f"svc-migrate-{project_version()}")["spec"]["template"]["metadata"]["labels"]
    assert not re.fullmatch(
        keeps[0]["regex"], f"{job_labels['app.kubernetes.io/name']};{job_labels['app.kubernetes.io/component']}"
    )
