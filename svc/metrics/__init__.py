"""Prometheus metrics: request counts and latency, runtime gauges, and what `/metrics` shows (`svc.metrics.endpoint`).

Requests are tallied in plain Python (`Metrics.observe`); the rest is read when it is shown. A
single process builds the exposition from its own `Report` when scraped, and imports
prometheus-client only then. Under `uvicorn --workers N` (and whenever `METRICS_DIR` is set) each
worker also writes its report to a file of its own in the directory of its server run, every
`REFRESH_SECONDS` and when it exits; a scrape, answered by any worker, writes its own, reads them
all and adds them up (`svc.metrics.report.combine`), so totals from the other workers lag by at
most that. See `run_directory` for how the workers of one run agree on that directory although
uvicorn's supervisor never imports the application.

The exposition is the same with one worker and with N: the same families, types and labels. The
process metrics in particular describe the service as a whole: `process_cpu_seconds_total` is
the CPU time of every worker the run has had (a counter: an exited worker's stays in it), memory
and open and maximum file descriptors are summed over the live workers, and
`process_start_time_seconds` is the earliest start of the run's workers. The `python_gc_*`
counters are summed like the CPU time.

Modules: `endpoint` (`/metrics`), `report` (what a process reports, and how reports add up), `files` (the run's directory
and the workers' files), `exposition` (prometheus-client families and encoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from svc.metrics.endpoint import MetricsEndpoint
from svc.metrics.exposition import LATENCY_BUCKETS, Exposition
from svc.metrics.files import WorkerFile, default_base, open_run, read_run, run_directory, sweep
from svc.metrics.report import Exemplar, Family, Report, Runtime, Sample, Series, combine, gauges
from svc.settings import Settings

__all__ = ["LATENCY_BUCKETS", "REFRESH_SECONDS", "Metrics", "MetricsEndpoint", "Runtime", "run_directory"]

OTHER_METHOD = "<other>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
#: How often each worker writes its report in multiprocess mode.
REFRESH_SECONDS = 1.0

logger = logging.getLogger("svc.metrics")


class Metrics:
    """The service's metrics for one application: recorded by the edge (`svc.http.edge`), shown by `MetricsEndpoint`.

    `in_flight` is the number of requests being answered (the edge counts it); `observe` records
    an answered one. `render` and `running` read the pool, the probe and the schema check from a
    `Runtime`. In multiprocess mode, `multiprocess_dir` is the run's directory, and `running` must
    surround the time the application serves.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.health_show_details.public and settings.health_token is None:
            logger.warning(
                "HEALTH_TOKEN is not set: /metrics will refuse every scrape (HEALTH_SHOW_DETAILS is not 'always')"
            )
        self.settings = settings
        # Sampled, not counted: a plain integer on the hot path, read when a report is made.
        self.in_flight = 0
        # (method, route, status) -> [count per bucket (the last is +Inf), sum of seconds]
        self.series: dict[tuple[str, str, int], list[float]] = {}
        # (method, route, status) -> the last traced request of each bucket (tracing on only).
        self.exemplars: dict[tuple[str, str, int], list[Exemplar | None]] = {}
        #: Trace spans lost by the exporter so far, when tracing is on (`svc_trace_spans_lost_total`).
        self.spans_lost: Callable[[], int] | None = None
        self.multiprocess_dir: Path | None = None
        self._file: WorkerFile | None = None
        if settings.metrics_dir is not None or multiprocessing.parent_process() is not None:
            base = settings.metrics_dir or default_base()
            try:
                self.multiprocess_dir = open_run(base)
            except OSError as exc:
                # A worker that fails here fails at import, and uvicorn would replace it forever: serve with
                # this process's own metrics instead (each scrape then sees one worker's).
                logger.warning(
                    "Metrics directory %s unusable (%s): metrics are this process's only, not summed over workers",
                    base,
                    exc,
                )
            else:
                self._file = WorkerFile(self.multiprocess_dir)
        self._exposition: Exposition | None = None

    def observe(self, method: str, route: str, status: int, seconds: float, trace_id: str | None = None) -> None:
        """Record one answered request (the hot path: a dict lookup, a bisection and two additions).

        `trace_id`, the trace of a request whose span is exported, becomes its bucket's exemplar.
        """
        tally = self.series.get((method, route, status))
        if tally is None:
            tally = self._tally(method, route, status)
        bucket = bisect_left(LATENCY_BUCKETS, seconds)
        tally[bucket] += 1
        tally[-1] += seconds
        if trace_id is not None:
            key = (method if method in METHODS else OTHER_METHOD, route, status)
            exemplars = self.exemplars.get(key)
            if exemplars is None:
                exemplars = self.exemplars[key] = [None] * (len(LATENCY_BUCKETS) + 1)
            exemplars[bucket] = Exemplar(trace_id, seconds, time.time())

    def _tally(self, method: str, route: str, status: int) -> list[float]:
        # Methods outside the standard ones share one label, and are looked up under it each time,
        # so that no key made of client input is ever stored.
        key = (method if method in METHODS else OTHER_METHOD, route, status)
        tally = self.series.get(key)
        if tally is None:
            tally = self.series[key] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        return tally

    def report(self, runtime: Runtime | None) -> Report:
        """This process's report; without `runtime` (a worker that stops), nothing read from the runtime."""
        requests = [Series(*key, list(tally), self._exemplars_of(key)) for key, tally in self.series.items()]
        families = self._collectors().process_families()
        if self.spans_lost is not None:
            lost = Sample("svc_trace_spans_lost_total", {}, float(self.spans_lost()))
            families.append(Family("svc_trace_spans_lost", "Trace spans the exporter lost.", "counter", [lost]))
        if runtime is None:
            return Report(requests, families)
        pool, checks, latency = gauges(runtime)
        return Report(requests, families, self.in_flight, pool, checks, latency)

    def _exemplars_of(self, key: tuple[str, str, int]) -> list[Exemplar | None] | None:
        exemplars = self.exemplars.get(key)
        return None if exemplars is None else list(exemplars)

    def render(self, runtime: Runtime, accept: str) -> tuple[bytes, str]:
        """The exposition for a scrape, in the format `accept` asks for (plain text when it asks for none
        that prometheus-client knows): (body, content type). In multiprocess mode, summed over the run."""
        report = self.report(runtime)
        if self._file is not None:
            self._file.write(report, serving=True)
            sweep(self._file.run_dir)
            report = combine(read_run(self._file.run_dir))
        return self._collectors().render(report, accept)

    def _collectors(self) -> Exposition:
        if self._exposition is None:
            self._exposition = Exposition(self.settings)
        return self._exposition

    @contextlib.asynccontextmanager
    async def running(self, runtime: Runtime) -> AsyncIterator[None]:
        """While the application serves: in multiprocess mode, write this worker's report every `REFRESH_SECONDS`,
        and its counts a last time when it stops (its gauges leave the totals then)."""
        worker_file = self._file
        if worker_file is None:
            yield
            return

        async def publish() -> None:
            while True:
                await asyncio.sleep(REFRESH_SECONDS)
                try:
                    worker_file.write(self.report(runtime), serving=True)
                except Exception:  # a metrics fault must not stop the worker, nor the next attempt
                    logger.exception("Publishing this worker's metrics failed")

        task = asyncio.create_task(publish())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                # Counts only: the engine may be closed by now, and the gauges leave with the worker anyway.
                worker_file.write(self.report(None), serving=False)
            except Exception as exc:  # noqa: BLE001 - a warning, not a traceback in the shutdown log
                logger.warning("Publishing this worker's last metrics failed: %r", exc)
