"""Prometheus metrics: request counts and latency, runtime gauges, and the `/metrics` endpoint.

One process keeps everything in memory and builds the exposition when scraped. Under
`uvicorn --workers N` (and whenever `METRICS_DIR` is set), prometheus-client's multiprocess mode
sums the workers: each worker writes memory-mapped files into the directory of its server run,
and a scrape, answered by any worker, reads them all. See `run_directory` for how the workers of
one run agree on that directory although uvicorn's supervisor never imports the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from svc.auth import bearer_matches, unauthorized
from svc.http.responses import Encoded
from svc.process import alive
from svc.settings import Settings

if TYPE_CHECKING:
    from svc.runtime import Runtime

__all__ = ["Metrics", "MetricsEndpoint", "run_directory"]

OTHER_METHOD = "<other>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# Seconds; the service answers health checks in well under a millisecond, so the scale starts low.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: How often each worker writes its sampled gauges (in flight, pool, probe, process) in multiprocess mode.
REFRESH_SECONDS = 1.0
HEALTH_STATUSES = ("pass", "warn", "fail")
_RUN_NAME = re.compile(r"(\d+)-[0-9a-f]{16}")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")
_PROCESS_GAUGES = {
    "process_resident_memory_bytes": "Resident memory size in bytes.",
    "process_virtual_memory_bytes": "Virtual memory size in bytes.",
    "process_open_fds": "Number of open file descriptors.",
    "process_start_time_seconds": "Start time of the process since unix epoch in seconds.",
    "process_cpu_seconds": "Total user and system CPU time spent in seconds.",
}

logger = logging.getLogger("svc.metrics")
_run_dir: Path | None = None


def run_directory(base: Path) -> Path:
    """The multiprocess directory of this server run under `base`: `<server pid>-<run id>`.

    uvicorn's supervisor spawns the workers with multiprocessing, and every spawned process
    inherits its parent's `authkey`, 32 random bytes drawn when the supervisor started. A digest
    of it therefore names the run identically in every worker, and a new server (even one that
    gets a recycled pid, as in a restarted container) starts in a new, empty directory. The pid
    only serves to recognise the runs whose server has gone, so their directories can be removed.
    """
    parent = multiprocessing.parent_process()
    server_pid = parent.pid if parent is not None and parent.pid is not None else os.getpid()
    run_id = hashlib.sha256(b"svc-metrics:" + bytes(multiprocessing.current_process().authkey)).hexdigest()[:16]
    return base / f"{server_pid}-{run_id}"


def _sweep(run_dir: Path) -> None:
    """Remove the directories of servers that have exited, and the live gauges of dead workers."""
    from prometheus_client.multiprocess import mark_process_dead

    for sibling in run_dir.parent.iterdir():
        if sibling != run_dir and (m := _RUN_NAME.fullmatch(sibling.name)) and not alive(int(m[1])):
            shutil.rmtree(sibling, ignore_errors=True)
    for file in run_dir.glob("gauge_live*.db"):
        if (m := _LIVE_GAUGE_FILE.fullmatch(file.name)) and not alive(pid := int(m[1])):
            mark_process_dead(pid, str(run_dir))  # type: ignore[no-untyped-call]


def _enable_multiprocess(base: Path) -> Path:
    """Switch this process to multiprocess mode in its run directory (once; the mode is process-wide)."""
    global _run_dir
    if _run_dir is None:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if hasattr(os, "getuid") and base.stat().st_uid != os.getuid():
            raise RuntimeError(f"The metrics directory {base} belongs to another user.")
        run_dir = run_directory(base)
        run_dir.mkdir(mode=0o700, exist_ok=True)
        _sweep(run_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir)
        from prometheus_client import values

        # prometheus-client chooses its value class when first imported, before settings exist;
        # `values.ValueClass` is the module attribute its metrics read when they create a value.
        if not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        _run_dir = run_dir
    return _run_dir


def _default_base() -> Path:
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"svc-metrics{user}"


class Metrics:
    """The service's metrics for one application: recorded by `svc.middleware.EdgeMiddleware`, shown by `MetricsEndpoint`.

    Requests are tallied in plain Python (a list of bucket counts and a sum per method, route and
    status), which costs well under a microsecond, and turned into prometheus-client families only
    when scraped; in multiprocess mode each worker also writes its tallies to its files every
    `REFRESH_SECONDS`, so totals from the other workers lag by at most that. prometheus-client
    itself (≈50 ms to import) is loaded by the first scrape in a single process, not at start-up.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.health_show_details.public and settings.health_token is None:
            logger.warning(
                "HEALTH_TOKEN is not set: /metrics will refuse every scrape (HEALTH_SHOW_DETAILS is not 'always')"
            )
        self.settings = settings
        # Sampled, not counted: a plain integer on the hot path, read when the gauges are refreshed.
        self.in_flight = 0
        # (method, route, status) -> [count per bucket (the last is +Inf), sum of seconds]
        self.series: dict[tuple[str, str, int], list[float]] = {}
        in_worker = multiprocessing.parent_process() is not None
        self.multiprocess_dir: Path | None = None
        if settings.metrics_dir is not None or in_worker:
            base = settings.metrics_dir or _default_base()
            try:
                self.multiprocess_dir = _enable_multiprocess(base)
            except OSError as exc:
                # A worker that fails here fails at import, and uvicorn would replace it forever: serve with
                # this process's own metrics instead (each scrape then sees one worker's).
                logger.warning(
                    "Metrics directory %s unusable (%s): metrics are this process's only, not summed over workers",
                    base,
                    exc,
                )
        self._exposition: _Exposition | None = None if self.multiprocess_dir is None else _Exposition(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request (the hot path: a dict lookup, a bisection and two additions)."""
        tally = self.series.get((method, route, status))
        if tally is None:
            tally = self._tally(method, route, status)
        tally[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        tally[-1] += seconds

    def _tally(self, method: str, route: str, status: int) -> list[float]:
        # Methods outside the standard ones share one label, and are looked up under it each time,
        # so that no key made of client input is ever stored.
        key = (method if method in METHODS else OTHER_METHOD, route, status)
        tally = self.series.get(key)
        if tally is None:
            tally = self.series[key] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        return tally

    def render(self, state: Any, accept: str) -> tuple[bytes, str]:
        """The exposition for a scrape, in the format `accept` asks for: (body, content type)."""
        if self._exposition is None:
            self._exposition = _Exposition(self)
        return self._exposition.render(state, accept)

    @contextlib.asynccontextmanager
    async def running(self, state: Any) -> AsyncIterator[None]:
        """While the application serves: in multiprocess mode, publish this worker's values every second."""
        exposition = self._exposition
        if self.multiprocess_dir is None or exposition is None:
            yield
            return

        async def publish() -> None:
            while True:
                try:
                    exposition.publish(state)
                except Exception:  # a metrics fault must not stop the worker, nor the next attempt
                    logger.exception("Publishing this worker's metrics failed")
                await asyncio.sleep(REFRESH_SECONDS)

        task = asyncio.create_task(publish())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                # The last values; the engine is closed by now, and whatever fails here must not keep the gauges.
                exposition.publish(state)
            except Exception as exc:  # noqa: BLE001 - a warning, not a traceback in the shutdown log
                logger.warning("Publishing this worker's last metrics failed: %r", exc)
            # This worker's gauges leave with it; its counts stay in the totals.
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), str(self.multiprocess_dir))  # type: ignore[no-untyped-call]


class _Exposition:
    """The prometheus-client side of `Metrics`: gauges, collectors and the registry a scrape renders."""

    def __init__(self, metrics: Metrics) -> None:
        from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector

        self.metrics = metrics
        multiprocess = metrics.multiprocess_dir is not None
        # Multiprocess values live in files that MultiProcessCollector reads, not in a registry.
        own = None if multiprocess else CollectorRegistry()
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being answered.", registry=own, multiprocess_mode="livesum"
        )
        pool: dict[str, Any] = {"registry": own, "multiprocess_mode": "livesum"}
        self.pool_size = Gauge("svc_db_pool_size", "Connections the pool keeps.", **pool)
        self.pool_checked_out = Gauge("svc_db_pool_checked_out", "Pool connections in use.", **pool)
        self.pool_overflow = Gauge("svc_db_pool_overflow", "Connections open beyond the pool size.", **pool)
        recent: dict[str, Any] = {"registry": own, "multiprocess_mode": "livemostrecent"}
        self.health = Gauge(
            "svc_health_check_status",
            "1 for the current status of each health check, 0 for the others.",
            ("check", "status"),
            **recent,
        )
        self.probe_latency = Gauge(
            "svc_db_probe_latency_seconds", "The last database probe's round trip (NaN when it failed).", **recent
        )
        self.registry = CollectorRegistry()
        self.registry.register(_BuildInfo(metrics.settings))
        PlatformCollector(self.registry)
        self.process_gauges: dict[str, Any] = {}
        if own is not None:
            self.registry.register(own)
            self.registry.register(_Requests(metrics.series))
            ProcessCollector(registry=self.registry)
            GCCollector(self.registry)
        else:
            from prometheus_client import Histogram
            from prometheus_client.multiprocess import MultiProcessCollector

            self.latency = Histogram(
                "http_request_duration_seconds", _LATENCY_HELP, _LABELS, buckets=LATENCY_BUCKETS, registry=None
            )
            files = MultiProcessCollector(None, str(metrics.multiprocess_dir))  # type: ignore[no-untyped-call]
            self.registry.register(_RequestTotals(files))
            # ProcessCollector reads the current process only: each worker publishes its own, labelled by pid.
            self.process_gauges = {
                name: Gauge(name, doc, registry=None, multiprocess_mode="liveall")
                for name, doc in _PROCESS_GAUGES.items()
            }
            self._process = ProcessCollector(registry=None)

    def refresh(self, state: Any) -> None:
        """Sample the gauges that describe this process: in flight, pool, probe and schema results."""
        self.in_flight.set(self.metrics.in_flight)
        db = getattr(state, "db", None)
        if db is not None:
            pool = db.pool_stats()
            self.pool_size.set(pool.size)
            self.pool_checked_out.set(pool.checked_out)
            self.pool_overflow.set(pool.overflow)
        probe = getattr(state, "probe", None)
        result = probe.last if probe is not None else None
        if result is not None:
            self._set_health("postgresql:responseTime", result.status)
            self.probe_latency.set(math.nan if result.latency_ms is None else result.latency_ms / 1000)
        schema = getattr(state, "schema", None)
        if schema is not None and schema.last is not None:
            self._set_health("postgresql:migrations", schema.last.status)

    def _set_health(self, check: str, status: str) -> None:
        for candidate in HEALTH_STATUSES:
            self.health.labels(check, candidate).set(1 if candidate == status else 0)

    def publish(self, state: Any) -> None:
        """Multiprocess mode: write this worker's gauges and request tallies to its files."""
        self.refresh(state)
        for family in self._process.collect():
            for sample in family.samples:
                if (gauge := self.process_gauges.get(sample.name.removesuffix("_total"))) is not None:
                    gauge.set(sample.value)
        # The files hold each bucket's own count (not cumulative) and the sum, as Histogram.observe()
        # keeps them; setting totals rather than adding deltas makes publishing idempotent.
        for (method, route, status), tally in list(self.metrics.series.items()):
            child = self.latency.labels(method, route, str(status))
            for value, count in zip(child._buckets, tally[:-1], strict=True):
                value.set(count)
            child._sum.set(tally[-1])

    def render(self, state: Any, accept: str) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        if self.metrics.multiprocess_dir is None:
            self.refresh(state)
        else:
            self.publish(state)
            _sweep(self.metrics.multiprocess_dir)
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


_LABELS = ("method", "route", "status")
_BOUNDS = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]  # the `le` labels
_LATENCY_HELP = "Time to answer HTTP requests, by method, route template and status."
_REQUESTS_HELP = "HTTP requests answered."


class _Requests:
    """Single process: the request tallies as a histogram and a counter, built when scraped."""

    def __init__(self, series: dict[tuple[str, str, int], list[float]]) -> None:
        self.series = series

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        bounds = _BOUNDS
        latency = HistogramMetricFamily("http_request_duration_seconds", _LATENCY_HELP, labels=_LABELS)
        total = CounterMetricFamily("http_requests", _REQUESTS_HELP, labels=_LABELS)
        for (method, route, status), tally in list(self.series.items()):
            labels = (method, route, str(status))
            cumulative = list(accumulate(tally[:-1]))
            latency.add_metric(labels, list(zip(bounds, cumulative, strict=True)), tally[-1])
            total.add_metric(labels, cumulative[-1])
        yield latency
        yield total


class _RequestTotals:
    """Multiprocess: everything `source` collects, plus `http_requests_total` read off the histogram's counts."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        for family in self.source.collect():
            yield family
            if family.name == "http_request_duration_seconds":
                total = CounterMetricFamily("http_requests", _REQUESTS_HELP, labels=_LABELS)
                for sample in family.samples:
                    if sample.name.endswith("_count"):
                        total.add_metric([sample.labels[name] for name in _LABELS], sample.value)
                yield total


class _BuildInfo:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import InfoMetricFamily

        yield InfoMetricFamily(
            "svc_build",
            "The running version and environment.",
            {"version": self.settings.app_version, "environment": str(self.settings.app_env)},
        )


class MetricsEndpoint:
    """`GET /metrics`: the Prometheus text format, or OpenMetrics when the scraper asks for it.

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
            header = request.headers.get("authorization")
            if header is None:
                raise unauthorized('Bearer realm="metrics"', "A bearer token is required for this endpoint.")
            if not bearer_matches(header, settings.health_token):
                raise unauthorized('Bearer realm="metrics", error="invalid_token"')
        body, content_type = self.metrics.render(self.runtime, request.headers.get("accept", ""))
        return Encoded(body, headers=[(b"cache-control", b"no-store")], content_type=content_type.encode())
