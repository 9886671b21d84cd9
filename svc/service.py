"""A service built on svc: its routes, its migrations and its models, in one `Service` named by `SERVICE`.

`SERVICE=examples.notes.service:service` (a `module:attribute`) makes `uvicorn svc.app:app`,
`python -m svc serve`, `python -m svc migrate` and `scripts/run` include it without editing svc.
The app imports it in the background at start-up, like the database side, so a route module may
import its models (and SQLAlchemy) at the top and the server still answers `/health/live` at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute

__all__ = ["SPEC", "Service", "find_service", "load_service"]

#: What `SERVICE` looks like: a dotted module path, a colon, an attribute name.
SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """What a service adds to the foundation.

    - `routes`: served after svc's own (`svc.Route`s, or any Starlette route), described in /openapi.json.
    - `migrations`: a directory of Alembic revision scripts whose first revision follows svc's head
      (`down_revision = "0001_foundation"`); `python -m svc migrate` applies both, and readiness
      compares the database with their combined head.
    - `metadata`: the models' SQLAlchemy `MetaData`, what `alembic revision --autogenerate` compares with.
    """

    routes: Sequence[BaseRoute] = ()
    migrations: Path | None = None
    metadata: Any = None


def find_service(spec: str) -> str | None:
    """Why `spec` cannot name a service (without importing the module itself), or None when it may."""
    if not SPEC.fullmatch(spec):
        return "Must be module:attribute (e.g. examples.notes.service:service)."
    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    return None if found is not None else "No such module."


def load_service(spec: str) -> Service:
    """Import the `Service` that `spec` (`module:attribute`) names."""
    module, _, attribute = spec.partition(":")
    service = getattr(importlib.import_module(module), attribute)
    if not isinstance(service, Service):
        raise TypeError(f"{spec} is a {type(service).__name__}, not an svc.service.Service")
    return service
