# Sourced by scripts/run, scripts/test and .ci/run: makes `uv` available and the environment match uv.lock.
# Needs only python3 (3.11+): uv comes from PyPI into .data/uv when it is not on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if command -v uv >/dev/null 2>&1; then
    UV=uv
else
    if [ ! -x .data/uv/bin/uv ]; then
        echo "svc: installing uv into .data/uv" >&2
        python3 -m venv .data/uv
        .data/uv/bin/python -m pip install --quiet --disable-pip-version-check uv
    fi
    UV=.data/uv/bin/uv
fi
# PYTHONDONTWRITEBYTECODE is common in containers: compile once here, or every start pays for it.
"$UV" sync --locked --quiet --compile-bytecode
