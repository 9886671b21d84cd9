"""The notes resource: a table, its migration, typed handlers, and tests — svc's example of a service.

`uv run python -m examples.notes migrate` applies svc's and this service's migrations;
`uv run uvicorn examples.notes.app:app` serves svc's endpoints plus /notes. Kept light: importing
this package imports nothing (the service's modules import SQLAlchemy, and are imported at start-up).
"""
