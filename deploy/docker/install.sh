#!/bin/sh
# Install svc into $SVC_HOME from the committed uv.lock, without the development groups.
#
# Run from a directory holding the build context's files (the Dockerfile's build stage does; so does
# tests/test_deploy.py, in a clean temporary directory, as no container runtime is available there).
# Needs uv (UV, default `uv`) and the interpreter the image runs (PYTHON, default python3); downloads
# no interpreter. Leaves:
#   $SVC_HOME/app   svc/, migrations/ and alembic.ini: svc finds its migrations beside its package
#   $SVC_HOME/venv  the locked dependencies, with svc installed editable onto app/
# Every module is compiled here: the image runs with PYTHONDONTWRITEBYTECODE on a read-only root.
set -eu
: "${SVC_HOME:?SVC_HOME must name the installation directory}"
uv=${UV:-uv}
python=${PYTHON:-python3}

mkdir -p "$SVC_HOME/app"
# README.md: the package metadata (pyproject's readme) is built from it.
cp -R pyproject.toml uv.lock README.md alembic.ini svc migrations "$SVC_HOME/app/"
cd "$SVC_HOME/app"
UV_PROJECT_ENVIRONMENT="$SVC_HOME/venv" UV_PYTHON_DOWNLOADS=never \
    "$uv" sync --locked --no-default-groups --compile-bytecode --link-mode=copy --python "$python" --quiet
# uv compiled site-packages; svc's own modules are outside it. Hash-checked: valid whatever mtimes a COPY gives.
"$SVC_HOME/venv/bin/python" -m compileall -q --invalidation-mode checked-hash svc migrations
