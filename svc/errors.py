"""Typed service errors and their single RFC 9457 `application/problem+json` rendering."""

from __future__ import annotations

import http
import logging
from collections.abc import Iterable, Mapping

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope, Send

from svc.context import request_id

__all__ = [
    "BadRequest",
    "ContentTooLarge",
    "DatabaseError",
    "DatabaseUnavailable",
    "Problem",
    "ServiceError",
    "ServiceUnavailable",
    "Unauthorized",
    "problem_response",
    "send_problem",
]

PROBLEM_TYPE = "application/problem+json"
logger = logging.getLogger("svc.errors")
_encoder = msgspec.json.Encoder()


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem details body."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str
    requestId: str | None  # noqa: N815 - wire name


class ServiceError(Exception):
    """Base of every error the service raises on purpose; rendered by `problem_response`."""

    status: int = 500
    title: str = "Internal Server Error"
    type: str = "about:blank"
    detail: str = "The server could not complete the request."

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        if detail is not None:
            self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(self.detail)


class BadRequest(ServiceError):
    status, title, detail = 400, "Bad Request", "The request is malformed."


class Unauthorized(ServiceError):
    status, title, detail = 401, "Unauthorized", "Valid credentials are required."


class ContentTooLarge(ServiceError):
    status, title, detail = 413, "Content Too Large", "The request body is larger than the server accepts."


class ServiceUnavailable(ServiceError):
    status, title, detail = 503, "Service Unavailable", "The service cannot handle the request right now."


class DatabaseUnavailable(ServiceUnavailable):
    detail = "The database is unavailable or did not answer in time. Try again later."


class DatabaseError(ServiceError):
    detail = "A database error prevented the request from completing."


def _standard_title(status: int) -> str:
    if status in _RFC9110_TITLES:
        return _RFC9110_TITLES[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def encode_problem(status: int, title: str, detail: str, instance: str, type_: str = "about:blank") -> bytes:
    problem = Problem(
        type=type_, title=title, status=status, detail=detail, instance=instance, requestId=request_id.get()
    )
    return _encoder.encode(problem)


def problem_response(exc: Exception, instance: str) -> Response:
    """Render a `ServiceError` or a Starlette `HTTPException` as problem+json."""
    if isinstance(exc, ServiceError):
        status, title, detail, type_, headers = exc.status, exc.title, exc.detail, exc.type, exc.headers
    elif isinstance(exc, HTTPException):
        status, title, headers, type_ = (
            exc.status_code,
            _standard_title(exc.status_code),
            dict(exc.headers or {}),
            "about:blank",
        )
        detail = exc.detail if exc.detail != title else _DEFAULT_DETAILS.get(status, title)
    else:  # pragma: no cover - handlers are registered for the two types above only
        raise TypeError(type(exc))
    body = encode_problem(status, title, detail, instance, type_)
    return Response(body, status_code=status, headers=headers, media_type=PROBLEM_TYPE)


async def handle_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for `ServiceError` and `HTTPException`."""
    if isinstance(exc, ServiceError) and exc.status >= 500:
        # The cause may hold driver text or parameters: log its type, never its message.
        cause = exc.__cause__
        logger.warning("%s: %s", exc.title, type(cause).__name__ if cause else exc.detail)
    return problem_response(exc, request.url.path)


async def send_problem(
    scope: Scope, send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> int:
    """Send a problem+json response (plus `headers`) from plain ASGI code, outside Starlette's handlers; its size."""
    body = encode_problem(status, _standard_title(status), detail, scope.get("path", ""))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return len(body)


# Reason phrases renamed by RFC 9110 that older Pythons' http.HTTPStatus still spell the old way.
_RFC9110_TITLES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
_DEFAULT_DETAILS = {
    404: "No resource exists at this path.",
    405: "The method is not allowed for this resource.",
    413: "The request body is larger than the server accepts.",
}
