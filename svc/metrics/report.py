"""What one process reports about itself, and how the reports of one server run's workers add up.

A `Report` is plain data (msgspec structs, so a worker can write it to a file and another read it
back): the request tallies, the gauges sampled from the runtime, and the families of
prometheus-client's process and garbage-collector collectors as they were collected. `combine`
adds the reports of a run's workers up into one, as if one process had done all the work:

- counts (request tallies, counter families such as `process_cpu_seconds_total`) are summed over
  every worker the run has had, the exited ones included, so that they never go down;
- gauges (in flight, the pool, process memory and file descriptors) are summed over the live workers;
- the health statuses and the probe latency are the ones a live worker measured last;
- `process_start_time_seconds` is the earliest start of the run's workers, the time its counts count from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

if TYPE_CHECKING:
    from svc.db import PoolStats
    from svc.probe import ProbeResult
    from svc.schema import SchemaStatus

__all__ = [
    "Check",
    "Exemplar",
    "Family",
    "Latency",
    "Pool",
    "Report",
    "Runtime",
    "Sample",
    "Series",
    "combine",
    "gauges",
]

PROBE_CHECK = "postgresql:responseTime"
SCHEMA_CHECK = "postgresql:migrations"
#: Gauge families that are the earliest value of all the run's workers rather than the live workers' sum.
EARLIEST = frozenset({"process_start_time_seconds"})


class Exemplar(msgspec.Struct, frozen=True, array_like=True):
    """A traced request of a latency bucket: its trace id, its seconds and when it was answered (Unix time)."""

    trace_id: str
    seconds: float
    timestamp: float


class Series(msgspec.Struct, array_like=True):
    """The requests answered with one method, route template and status."""

    method: str
    route: str
    status: int
    # The count in each latency bucket (the last is +Inf), then the sum of their seconds.
    tally: list[float]
    # The last traced request of each bucket (None: none); None when tracing never recorded one.
    exemplars: list[Exemplar | None] | None = None


class Pool(msgspec.Struct, frozen=True, array_like=True):
    size: int
    checked_out: int
    overflow: int


class Check(msgspec.Struct, frozen=True, array_like=True):
    """A health check's status (pass, warn, fail) and when it was measured (`time.monotonic()`, which
    is one clock for all the processes of a machine)."""

    status: str
    measured_at: float


class Latency(msgspec.Struct, frozen=True, array_like=True):
    """The database probe's round trip (NaN when it failed) and when it was measured."""

    seconds: float
    measured_at: float


class Sample(msgspec.Struct, frozen=True, array_like=True):
    name: str
    labels: dict[str, str]
    value: float


class Family(msgspec.Struct, frozen=True, array_like=True):
    """A family of samples as a prometheus-client collector gave it."""

    name: str
    documentation: str
    type: str
    samples: list[Sample]


class Report(msgspec.Struct, array_like=True):
    """Everything `/metrics` shows that is not the same in every process."""

    requests: list[Series]
    families: list[Family]
    in_flight: int = 0
    pool: Pool | None = None  # None until the database has been set up
    checks: dict[str, Check] = {}
    probe_latency: Latency | None = None  # None until the first probe


_T_co = TypeVar("_T_co", covariant=True)


class _Latest(Protocol[_T_co]):
    @property
    def last(self) -> _T_co | None: ...


class _Database(Protocol):
    def pool_stats(self) -> PoolStats: ...


class Runtime(Protocol):
    """What the metrics read of the running application; each is None until start-up has made it."""

    @property
    def db(self) -> _Database | None: ...

    @property
    def probe(self) -> _Latest[ProbeResult] | None: ...

    @property
    def schema(self) -> _Latest[SchemaStatus] | None: ...


def gauges(runtime: Runtime) -> tuple[Pool | None, dict[str, Check], Latency | None]:
    """The pool, the health checks' last statuses and the last probe's latency, as they are now."""
    pool = None
    if runtime.db is not None:
        stats = runtime.db.pool_stats()
        pool = Pool(stats.size, stats.checked_out, stats.overflow)
    checks = {}
    latency = None
    probed = runtime.probe.last if runtime.probe is not None else None
    if probed is not None:
        checks[PROBE_CHECK] = Check(probed.status, probed.measured_at)
        seconds = math.nan if probed.latency_ms is None else probed.latency_ms / 1000
        latency = Latency(seconds, probed.measured_at)
    schema = runtime.schema.last if runtime.schema is not None else None
    if schema is not None:
        checks[SCHEMA_CHECK] = Check(schema.status, schema.measured_at)
    return pool, checks, latency


def combine(reports: Iterable[tuple[Report, bool]]) -> Report:
    """The reports of a run's workers, each with whether that worker is live, added up by the rules above."""
    tallies: dict[tuple[str, str, int], list[float]] = {}
    exemplars: dict[tuple[str, str, int], list[Exemplar | None]] = {}
    families: dict[str, tuple[Family, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]]] = {}
    in_flight = 0
    pool: Pool | None = None
    checks: dict[str, Check] = {}
    latency: Latency | None = None
    for report, live in reports:
        for series in report.requests:
            key = (series.method, series.route, series.status)
            if (tally := tallies.get(key)) is None:
                tallies[key] = list(series.tally)
            else:
                tallies[key] = [a + b for a, b in zip(tally, series.tally, strict=True)]
            if series.exemplars is not None:
                exemplars[key] = _latest(exemplars.get(key), series.exemplars)
        for family in report.families:
            _, samples = families.setdefault(family.name, (family, {}))
            for sample in family.samples:
                _add(samples, family, sample, live)
        if not live:
            continue
        in_flight += report.in_flight
        if report.pool is not None:
            pool = report.pool if pool is None else _sum(pool, report.pool)
        for name, check in report.checks.items():
            if name not in checks or check.measured_at > checks[name].measured_at:
                checks[name] = check
        if report.probe_latency is not None and (
            latency is None or report.probe_latency.measured_at > latency.measured_at
        ):
            latency = report.probe_latency
    return Report(
        requests=[
            Series(method, route, status, tally, exemplars.get((method, route, status)))
            for (method, route, status), tally in tallies.items()
        ],
        families=[
            Family(family.name, family.documentation, family.type, list(samples.values()))
            for family, samples in families.values()
        ],
        in_flight=in_flight,
        pool=pool,
        checks=checks,
        probe_latency=latency,
    )


def _add(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], Sample], family: Family, sample: Sample, live: bool
) -> None:
    key = (sample.name, tuple(sorted(sample.labels.items())))
    seen = samples.get(key)
    if family.name in EARLIEST:
        if seen is None or sample.value < seen.value:
            samples[key] = sample
    elif family.type == "counter" or live:
        samples[key] = sample if seen is None else Sample(sample.name, sample.labels, seen.value + sample.value)


def _latest(seen: list[Exemplar | None] | None, more: list[Exemplar | None]) -> list[Exemplar | None]:
    """Per bucket, the later of two workers' exemplars."""
    if seen is None:
        return list(more)
    return [
        b if a is None or (b is not None and b.timestamp > a.timestamp) else a for a, b in zip(seen, more, strict=True)
    ]


def _sum(a: Pool, b: Pool) -> Pool:
    return Pool(a.size + b.size, a.checked_out + b.checked_out, a.overflow + b.overflow)
