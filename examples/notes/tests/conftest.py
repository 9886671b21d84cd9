"""The notes service's tests run on svc's test kit (`svc.testing`): this says which service they test."""

from __future__ import annotations

import pytest


@pytest.fixture
def svc_service() -> str:
    return "examples.notes.service:service"
