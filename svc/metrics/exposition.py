"""The prometheus-client side of the metrics: the families a scrape shows, built from a `Report`, and their encoding.

Only prometheus-client's public API is used: its custom-collector families, its process,
garbage-collector and platform collectors, and `choose_encoder`. Importing this module does not
import prometheus-client; making an `Exposition` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import accumulate
from typing import TYPE_CHECKING

from svc.metrics.report import Family, Report, Sample
from svc.settings import Settings

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.samples import Exemplar as PrometheusExemplar

__all__ = ["HEALTH_STATUSES", "LATENCY_BUCKETS", "Exposition"]

# Seconds; the service answers health checks in well under a millisecond, so the scale starts low.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HEALTH_STATUSES = ("pass", "warn", "fail")
_LABELS = ("method", "route", "status")
_BOUNDS = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]  # the `le` labels
_POOL = (
    ("svc_db_pool_size", "Connections the pool keeps.", "size"),
    ("svc_db_pool_checked_out", "Pool connections in use.", "checked_out"),
    ("svc_db_pool_overflow", "Connections open beyond the pool size.", "overflow"),
)


class Exposition:
    """The collectors a scrape needs and the encoding of its answer."""

    def __init__(self, settings: Settings) -> None:
        from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
        from prometheus_client.core import InfoMetricFamily

        self.build_info = InfoMetricFamily(
            "svc_build",
            "The running version and environment.",
            {"version": settings.app_version, "environment": str(settings.app_env)},
        )
        self.platform = PlatformCollector(registry=None)
        # What differs between processes: a report carries it, so that multiprocess mode can add it up.
        self.process = CollectorRegistry()
        ProcessCollector(registry=self.process)
        GCCollector(self.process)

    def process_families(self) -> list[Family]:
        """This process's own families (CPU, memory, file descriptors, garbage collector), as plain data."""
        return [
            Family(m.name, m.documentation, m.type, [Sample(s.name, s.labels, s.value) for s in m.samples])
            for m in self.process.collect()
        ]

    def families(self, report: Report) -> list[Metric]:
        """Every family `/metrics` shows for `report`."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
        from prometheus_client.samples import Exemplar as PrometheusExemplar

        shown: list[Metric] = [
            self.build_info,
            GaugeMetricFamily("http_requests_in_flight", "HTTP requests being answered.", value=report.in_flight),
        ]
        for name, documentation, field in _POOL:
            gauge = GaugeMetricFamily(name, documentation)
            if report.pool is not None:
                gauge.add_metric([], getattr(report.pool, field))
            shown.append(gauge)
        health = GaugeMetricFamily(
            "svc_health_check_status",
            "1 for the current status of each health check, 0 for the others.",
            labels=("check", "status"),
        )
        for check, measured in report.checks.items():
            for status in HEALTH_STATUSES:
                health.add_metric([check, status], 1 if status == measured.status else 0)
        probe = GaugeMetricFamily(
            "svc_db_probe_latency_seconds", "The last database probe's round trip (NaN when it failed)."
        )
        if report.probe_latency is not None:
            probe.add_metric([], report.probe_latency.seconds)
        latency = HistogramMetricFamily(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method, route template and status.",
            labels=_LABELS,
        )
        total = CounterMetricFamily("http_requests", "HTTP requests answered.", labels=_LABELS)
        for series in report.requests:
            labels = (series.method, series.route, str(series.status))
            cumulative = list(accumulate(series.tally[:-1]))
            buckets: list[tuple[str, float] | tuple[str, float, PrometheusExemplar]]
            buckets = list(zip(_BOUNDS, cumulative, strict=True))
            if series.exemplars is not None:
                # Only OpenMetrics shows them (the text format has no exemplars).
                buckets = [
                    bucket
                    if e is None
                    else (*bucket, PrometheusExemplar({"trace_id": e.trace_id}, e.seconds, e.timestamp))
                    for bucket, e in zip(buckets, series.exemplars, strict=True)
                ]
            latency.add_metric(labels, buckets, series.tally[-1])
            total.add_metric(labels, cumulative[-1])
        shown += [health, probe, latency, total, *self.platform.collect()]
        for family in report.families:
            metric = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                metric.add_sample(sample.name, sample.labels, sample.value)
            shown.append(metric)
        return shown

    def render(self, report: Report, accept: str) -> tuple[bytes, str]:
        """The exposition of `report` in the format `accept` asks for: (body, content type)."""
        from prometheus_client.exposition import choose_encoder

        try:
            encode, content_type = choose_encoder(accept)
        except (TypeError, ValueError):
            # prometheus-client compares a `version=` it cannot parse (`garbage`, `1.0.0-rc1`) with a
            # tuple and raises: such a scraper gets the format of a scraper that asks for none.
            encode, content_type = choose_encoder("")
        return encode(_Families(self.families(report))), content_type


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
