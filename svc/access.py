"""The access log: one line per request, from the edge.

It is the only logging on the hot path. While svc's handler is the line's only destination (as in
production), `AccessLog` asks that handler's formatter for the line (`LineFormatter.line`, the same
code `format(record)` uses) and batches the lines of one event-loop iteration into one write,
instead of making a `LogRecord` per request. Any other logging set-up (an extra handler, a filter,
pytest's capture) gets ordinary records.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading

import svc.logging
from svc.clock import utc_now
from svc.context import current
from svc.logging import Line, SvcHandler

__all__ = ["AccessLog", "flush_access_log"]


class _Lines:
    """Lines waiting for the end of the current event-loop iteration, then written in one call.

    Lines are written as UTF-8 (as JSON text must be, RFC 8259) to the binary stream under the
    handler's text stream when it has one. A lock guards the buffer: lines are added on the event
    loop's thread, but a flush may come from any (`configure_logging`, `atexit`).
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.handler: SvcHandler | None = None
        self.lock = threading.Lock()

    def add(self, handler: SvcHandler, line: bytes) -> None:
        with self.lock:
            if self.handler is not handler:
                self._write(*self._take())
                self.handler = handler
            now = False
            if not self.data:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:
                    now = True
            self.data += line
            self.data += b"\n"
        if now:
            self.flush()

    def _take(self) -> tuple[SvcHandler | None, bytearray]:
        handler, data = self.handler, self.data
        self.data = bytearray()
        return handler, data

    def flush(self) -> None:
        with self.lock:
            handler, data = self._take()
        self._write(handler, data)

    @staticmethod
    def _write(handler: SvcHandler | None, data: bytearray) -> None:
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

    def _direct_handler(self) -> SvcHandler | None:
        handler = svc.logging.handler
        root_handlers = logging.root.handlers
        if handler is None or len(root_handlers) != 1 or root_handlers[0] is not handler or logging.root.filters:
            return None
        for node in self._chain:
            if node.handlers or node.filters or not node.propagate or node.disabled:
                return None
        return handler

    def write(
        self,
        method: str,
        path: str,
        *,
        route: str,
        status: int,
        duration_us: int,
        size: int,
        client: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        """Log one request (call it from the request's context: the line carries its request id and trace context).

        `duration_us` is in whole microseconds; the line says milliseconds (`duration_ms`, 3 decimals).
        `client` is the client's address (the proxy's, unless the peer is a trusted proxy).
        """
        ms, us = divmod(duration_us, 1000)
        message = f"{method} {path} {status} {ms}.{us:03d}ms"
        extra = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": duration_us / 1000,
            "bytes": size,
            "client": client,
            "user_agent": user_agent,
        }
        handler = self._direct_handler()
        if handler is None:
            self.logger.info("%s", message, extra=extra)
            return
        request_id, context = current.get() or (None, None)
        fields = Line(utc_now(), self._level_name, self.logger.name, message, request_id, extra)
        if context is not None:
            fields = fields._replace(trace_id=context.trace_id, span_id=context.span_id)
        _lines.add(handler, handler.formatter.line(fields))
