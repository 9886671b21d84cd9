"""Wall-clock timestamps for health bodies and log lines: RFC 3339 UTC, millisecond precision.

A timestamp is formatted once per millisecond and reused by everything that asks within the same
millisecond (see bench/README.md for what formatting costs against a health answer).
"""

from __future__ import annotations

import time

__all__ = ["utc_now", "utc_text"]

# (millisecond, its text) and (second, its text), each replaced as one object so threads never see a mismatched pair.
_cache: tuple[int, str] = (-1, "")
_seconds: tuple[int, str] = (-1, "")


def utc_text(epoch_ms: int) -> str:
    """`epoch_ms` (milliseconds since the epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    global _seconds
    seconds, ms = divmod(epoch_ms, 1000)
    cached = _seconds
    if cached[0] != seconds:  # strftime is the slow part: once a second
        cached = _seconds = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{ms:03d}Z"


def utc_now() -> str:
    """The current time as RFC 3339 UTC with millisecond precision (truncated, as `isoformat` does)."""
    global _cache
    now_ms = time.time_ns() // 1_000_000
    cached = _cache
    if cached[0] != now_ms:
        cached = _cache = (now_ms, utc_text(now_ms))
    return cached[1]
