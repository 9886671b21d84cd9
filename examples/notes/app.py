"""`uvicorn examples.notes.app:app`: svc's endpoints plus /notes, configured from the environment."""

from __future__ import annotations

from svc.app import lazy_app

__getattr__ = lazy_app(service="examples.notes.service:service")
