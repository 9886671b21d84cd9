# syntax=docker/dockerfile:1
# svc's image: `docker build --build-arg VERSION=0.1.0 -t svc:0.1.0 .`
# Not built here (no container runtime, no base image to pull): tests/test_deploy.py runs the build stage's
# install step and this stage's command in a clean directory, as USER, with the installed tree read-only.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV SVC_HOME=/opt/svc
# uv exists in this stage only: the final stage copies what it installed.
RUN python -m pip install --no-cache-dir --root-user-action=ignore "uv==0.13.9"
WORKDIR /src
COPY pyproject.toml uv.lock README.md alembic.ini ./
COPY svc ./svc
COPY migrations ./migrations
COPY deploy/docker/install.sh ./deploy/docker/install.sh
RUN sh deploy/docker/install.sh

# The same base: the installed venv links to this interpreter. Slim: no compiler.
FROM python:${PYTHON_VERSION}-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="svc" \
      org.opencontainers.image.description="svc: Starlette service foundation on PostgreSQL" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# TMPDIR is the one writable path svc needs (metrics files of --workers, temporary files): mount a volume
# there when the root filesystem is read-only (deploy/kubernetes/deployment.yaml mounts an emptyDir).
ENV SVC_HOME=/opt/svc
ENV PATH=${SVC_HOME}/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    APP_ENV=production
# A fixed id: Kubernetes' runAsNonRoot can check a numeric USER; the name is for `ps` and logs.
RUN groupadd --system --gid 10001 svc \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin svc
COPY --from=build ${SVC_HOME} ${SVC_HOME}
WORKDIR ${SVC_HOME}/app
USER 10001:10001
EXPOSE 8000
# uvicorn drains on SIGTERM (readiness 503 for SHUTDOWN_DRAIN_SECONDS, then in-flight requests finish).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "svc", "serve", "--host", "0.0.0.0", "--port", "8000"]
