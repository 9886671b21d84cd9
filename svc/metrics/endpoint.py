"""`GET /metrics`: what `Metrics` shows, to whom `HEALTH_SHOW_DETAILS` allows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from svc.auth import authorization, bearer_matches, unauthorized
from svc.http.responses import Encoded

if TYPE_CHECKING:
    from svc.metrics import Metrics
    from svc.runtime import Runtime

__all__ = ["MetricsEndpoint"]

_NO_STORE = (b"cache-control", b"no-store")


class MetricsEndpoint:
    """The Prometheus text format, or OpenMetrics when the scraper asks for it.

    Open to all when `HEALTH_SHOW_DETAILS=always`; otherwise (`when_authorized` and `never` alike)
    it takes the bearer `HEALTH_TOKEN`: `never` hides health details from the public, and metrics
    are never public in such a deployment. `METRICS_ENABLED=false` removes the route altogether.
    """

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics

    async def __call__(self, request: Request) -> Encoded:
        settings = self.runtime.settings
        if not settings.health_show_details.public:
            header = authorization(request)
            if header is None:
                raise unauthorized('Bearer realm="metrics"', "A bearer token is required for this endpoint.")
            if not bearer_matches(header, settings.health_token):
                raise unauthorized('Bearer realm="metrics", error="invalid_token"')
        body, content_type = self.metrics.render(self.runtime, request.headers.get("accept", ""))
        return Encoded(body, headers=[_NO_STORE], content_type=content_type.encode())
