"""The response headers every answer carries, whatever the route: chosen here once for the edge and the OpenAPI document."""

from __future__ import annotations

from svc.settings import Settings

__all__ = ["HSTS_HEADER", "SECURITY_HEADERS", "security_headers"]

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
HSTS_HEADER = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """The headers of a JSON API response; HSTS too when deployed (staging, production: behind TLS)."""
    return [*SECURITY_HEADERS, HSTS_HEADER] if settings.app_env.is_deployed else list(SECURITY_HEADERS)
