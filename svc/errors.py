"""Typed service errors and their one RFC 9457 `application/problem+json` rendering.

Handlers raise; the edge (`svc.http.edge`) turns whatever escaped into a response with `render`,
so every error of every route has the same shape, the request id, and never an exception's text.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.types import Scope

from svc.context import current
from svc.http.responses import Encoded

__all__ = [
    "PROBLEM_TYPE",
    "BadRequest",
    "Conflict",
    "ContentTooLarge",
    "DatabaseError",
    "DatabaseUnavailable",
    "FieldError",
    "HeaderFieldsTooLarge",
    "MethodNotAllowed",
    "NotFound",
    "Problem",
    "ServiceError",
    "ServiceUnavailable",
    "Unauthorized",
    "UnprocessableContent",
    "UnsupportedMediaType",
    "problem_response",
    "render",
]

PROBLEM_TYPE = "application/problem+json"
_PROBLEM_TYPE = PROBLEM_TYPE.encode()
logger = logging.getLogger("svc.errors")
_encoder = msgspec.json.Encoder()


#: At most this many entries in a 422's `errors`, each `detail` at most `MAX_DETAIL` characters.
MAX_ERRORS = 50
MAX_DETAIL = 300


class FieldError(msgspec.Struct, omit_defaults=True):
    """One invalid part of a request: a JSON Pointer into the body (`#/title`), or a query or path parameter."""

    detail: str
    pointer: str | None = None
    parameter: str | None = None


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem details body (`errors` on a 422: each invalid field)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str
    requestId: str | None  # noqa: N815 - wire name
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET


class ServiceError(Exception):
    """Base of every error the service raises on purpose; rendered by `render`.

    `type` is the problem type's URI (RFC 9457 section 3.1.1; `about:blank` by default), and
    `extensions` are more members of the body (JSON values; never anything secret).
    """

    status: int = 500
    title: str = "Internal Server Error"
    type: str = "about:blank"
    detail: str = "The server could not complete the request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        type: str | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        if detail is not None:
            self.detail = detail
        if type is not None:
            self.type = type
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})
        super().__init__(self.detail)


class BadRequest(ServiceError):
    status, title, detail = 400, "Bad Request", "The request is malformed."


class Unauthorized(ServiceError):
    status, title, detail = 401, "Unauthorized", "Valid credentials are required."


class NotFound(ServiceError):
    status, title, detail = 404, "Not Found", "No resource exists at this path."


class MethodNotAllowed(ServiceError):
    status, title, detail = 405, "Method Not Allowed", "The method is not allowed for this resource."


class Conflict(ServiceError):
    status, title, detail = 409, "Conflict", "The request conflicts with the current state of the resource."


class ContentTooLarge(ServiceError):
    status, title, detail = 413, "Content Too Large", "The request body is larger than the server accepts."


class UnsupportedMediaType(ServiceError):
    status, title, detail = 415, "Unsupported Media Type", "The request body must be application/json."


class UnprocessableContent(ServiceError):
    """422: the request is well-formed but some of its values are not acceptable; `errors` says which."""

    status, title, detail = 422, "Unprocessable Content", "The request has invalid values."

    def __init__(self, errors: Sequence[FieldError], detail: str | None = None) -> None:
        super().__init__(detail)
        self.errors = [
            msgspec.structs.replace(error, detail=error.detail[:MAX_DETAIL]) for error in errors[:MAX_ERRORS]
        ]


class HeaderFieldsTooLarge(ServiceError):
    status, title = 431, "Request Header Fields Too Large"
    detail = "The request headers are larger than the server accepts."


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


def problem_response(
    status: int,
    title: str,
    detail: str,
    instance: str,
    *,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    errors: list[FieldError] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Encoded:
    """A problem+json response for the current request (its id goes into the body)."""
    problem = Problem(
        type=type_,
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        requestId=None if (request := current.get()) is None else request[0],
        errors=msgspec.UNSET if errors is None else errors,
    )
    if extensions:  # the standard members win over extensions of the same name
        body = _encoder.encode({**extensions, **msgspec.structs.asdict(problem)})
    else:
        body = _encoder.encode(problem)
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    return Encoded(body, status, encoded, content_type=_PROBLEM_TYPE)


def render(exc: Exception, scope: Scope) -> Encoded:
    """The answer to an exception that escaped a handler: its problem, or a 500 for anything unexpected.

    A `ServiceError` of status 500, or of 5xx with a cause (a driver error), is logged with its cause's
    type, and anything unexpected with its traceback; an exception's text is never sent (it may hold
    data or secrets).
    """
    instance = scope["path"]
    if isinstance(exc, ServiceError):
        cause = exc.__cause__
        # A 503 the service chose (starting, draining) is its answer, not an incident: not logged per request.
        if exc.status >= 500 and (cause is not None or exc.status == 500):
            logger.warning("%s: %s", exc.title, type(cause).__name__ if cause else exc.detail)
        errors = exc.errors if isinstance(exc, UnprocessableContent) else None
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            instance,
            type_=exc.type,
            headers=exc.headers,
            errors=errors,
            extensions=exc.extensions,
        )
    if isinstance(exc, HTTPException):
        status = exc.status_code
        title = _standard_title(status)
        detail = exc.detail if exc.detail != title else _DEFAULT_DETAILS.get(status, title)
        return problem_response(status, title, detail, instance, headers=exc.headers or {})
    logger.error("Unhandled error in %s %s", scope["method"], instance, exc_info=exc)
    return problem_response(500, "Internal Server Error", "The server encountered an unexpected error.", instance)


# Reason phrases renamed by RFC 9110 that older Pythons' http.HTTPStatus still spell the old way.
_RFC9110_TITLES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
_DEFAULT_DETAILS = {
    404: NotFound.detail,
    405: MethodNotAllowed.detail,
    413: "The request body is larger than the server accepts.",
}
