"""The cached RFC 3339 timestamps of health bodies and log lines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from svc.clock import utc_now, utc_text


def iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    "epochs_ms",
    [
        [0, 1, 999, 1000, 1001],  # within and across a second
        [1_767_225_599_999, 1_767_225_600_000, 1_767_225_599_998],  # across a new year, and back
        [1_700_000_000_123, 1_700_000_060_123, 1_700_000_000_123],  # a minute apart, same milliseconds
    ],
)
def test_utc_text_is_the_iso_time_to_the_millisecond_whatever_came_before(epochs_ms: list[int]) -> None:
    assert [utc_text(ms) for ms in epochs_ms] == [iso(ms) for ms in epochs_ms]


def test_utc_now_is_the_current_time() -> None:
    before = datetime.now(UTC)
    now = datetime.fromisoformat(utc_now())
    after = datetime.now(UTC)
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= now <= after
