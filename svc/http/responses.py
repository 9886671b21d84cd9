"""Responses made of bytes ahead of sending: `Encoded`, and `json_response` with svc's one JSON encoder."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from starlette.background import BackgroundTask
from starlette.responses import Response

__all__ = ["HTML_TYPE", "JSON_TYPE", "Encoded", "html_response", "json_response"]

JSON_TYPE = b"application/json"
HTML_TYPE = b"text/html; charset=utf-8"
_json = msgspec.json.Encoder()


class Encoded(Response):
    """A Starlette `Response` whose body and headers are bytes already: nothing is computed when it is sent.

    Content-Type and Content-Length come first, then `headers`. Responses that never change can be
    made once and returned by every request (the edge never modifies a response's headers).
    """

    def __init__(
        self,
        body: bytes,
        status_code: int = 200,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        content_type: bytes,
        background: BackgroundTask | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.background = background
        self.raw_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]


def json_response(content: object, status_code: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> Encoded:
    """`content` (a msgspec Struct, or anything msgspec encodes) as an `application/json` response."""
    return Encoded(_json.encode(content), status_code, headers, content_type=JSON_TYPE)


def html_response(content: str, status_code: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> Encoded:
    """`content` (HTML the caller has escaped) as a `text/html; charset=utf-8` response."""
    return Encoded(content.encode(), status_code, headers, content_type=HTML_TYPE)
