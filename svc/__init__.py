"""svc: a Starlette service foundation on PostgreSQL.

What a service's own modules build on, from one place:

    from svc import NotFound, Route, Service, database, decode_body, json_response

Each name is imported on first use (PEP 562): `import svc` and the command line (`python -m svc`,
which needs only `svc.settings`) load none of these modules until a name is asked for, and none
of them imports SQLAlchemy, asyncpg or alembic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from svc.errors import (
        BadRequest,
        Conflict,
        FieldError,
        NotFound,
        ServiceError,
        ServiceUnavailable,
        UnprocessableContent,
        UnsupportedMediaType,
    )
    from svc.http.decode import decode_body, decode_path, decode_query
    from svc.http.responses import Encoded, html_response, json_response
    from svc.http.routing import Route
    from svc.runtime import database
    from svc.service import Service

__all__ = [
    "BadRequest",
    "Conflict",
    "Encoded",
    "FieldError",
    "NotFound",
    "Route",
    "Service",
    "ServiceError",
    "ServiceUnavailable",
    "UnprocessableContent",
    "UnsupportedMediaType",
    "database",
    "decode_body",
    "decode_path",
    "decode_query",
    "html_response",
    "json_response",
]

_HOMES = {
    "Route": "svc.http.routing",
    "Service": "svc.service",
    "database": "svc.runtime",
    "Encoded": "svc.http.responses",
    "json_response": "svc.http.responses",
    "html_response": "svc.http.responses",
    "decode_body": "svc.http.decode",
    "decode_path": "svc.http.decode",
    "decode_query": "svc.http.decode",
    **dict.fromkeys(
        (
            "BadRequest",
            "Conflict",
            "FieldError",
            "NotFound",
            "ServiceError",
            "ServiceUnavailable",
            "UnprocessableContent",
            "UnsupportedMediaType",
        ),
        "svc.errors",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'svc' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
