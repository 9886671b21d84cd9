"""The notes service as svc serves it: `SERVICE=examples.notes.service:service`."""

from __future__ import annotations

from pathlib import Path

from examples.notes.models import Base
from examples.notes.routes import ROUTES
from svc import Service

service = Service(routes=ROUTES, migrations=Path(__file__).parent / "migrations", metadata=Base.metadata)
