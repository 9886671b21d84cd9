"""The slow-statement log: SQL that took at least `DB_SLOW_QUERY_MS`, at WARNING, with its text but never its parameters.

SQLAlchemy's statements are timed by engine events (`install_slow_query_log`); the fast path
(`svc.db.Connection`) times its own and logs through `log_slow_statement`, in the same shape. With
tracing on, `install_statement_spans` gives SQLAlchemy's statements spans the same way (the fast
path makes its own through `svc.tracing.statement_span`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext

from svc.tracing import statement_span

if TYPE_CHECKING:  # the asyncio extension imports the ORM: not needed to install the log
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["MAX_STATEMENT_CHARS", "install_slow_query_log", "install_statement_spans", "log_slow_statement"]

logger = logging.getLogger("svc.db.slow")
#: Statements are cut to this many characters: enough to recognise one, not enough to flood the log.
MAX_STATEMENT_CHARS = 1000
_STARTED = "svc.statement_started"
_SPAN = "svc.statement_span"


def _one_line(statement: str) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= MAX_STATEMENT_CHARS else text[: MAX_STATEMENT_CHARS - 1] + "…"


def install_slow_query_log(engine: AsyncEngine | Engine, threshold_ms: float) -> None:
    """Log every statement on `engine` that runs for `threshold_ms` or longer (0 logs them all).

    The statement text is what SQLAlchemy sends, with placeholders (`$1`) where the parameters go;
    the parameters themselves are never read. Statements that fail after the threshold (such as
    those cancelled by `DB_COMMAND_TIMEOUT`) are logged too.
    """
    threshold = threshold_ms / 1000
    target = engine if isinstance(engine, Engine) else engine.sync_engine

    # A connection runs one statement at a time, so one slot per connection is enough.
    def started(conn: Connection, **_: Any) -> None:
        conn.info[_STARTED] = time.perf_counter()

    def finished(conn: Connection, statement: str, **_: Any) -> None:
        start = conn.info.pop(_STARTED, None)
        if start is not None and (elapsed := time.perf_counter() - start) >= threshold:
            log_slow_statement(statement, elapsed, failed=False)

    def failed(ctx: ExceptionContext) -> None:
        conn, statement = ctx.connection, ctx.statement
        start = conn.info.pop(_STARTED, None) if conn is not None else None
        if start is not None and statement is not None and (elapsed := time.perf_counter() - start) >= threshold:
            log_slow_statement(statement, elapsed, failed=True)

    event.listen(target, "before_cursor_execute", started, named=True)
    event.listen(target, "after_cursor_execute", finished, named=True)
    event.listen(target, "handle_error", failed)


def install_statement_spans(engine: AsyncEngine | Engine) -> None:
    """Give every statement on `engine` run while a request's span is recorded a child span (`svc.tracing`):
    its text, never its parameters; a failed statement's span is marked failed with the error's type."""
    target = engine if isinstance(engine, Engine) else engine.sync_engine

    def started(conn: Connection, statement: str, **_: Any) -> None:
        if (span := statement_span(statement)) is not None:
            conn.info[_SPAN] = span

    def finished(conn: Connection, **_: Any) -> None:
        if (span := conn.info.pop(_SPAN, None)) is not None:
            span.end()

    def failed(ctx: ExceptionContext) -> None:
        conn = ctx.connection
        if conn is not None and (span := conn.info.pop(_SPAN, None)) is not None:
            span.failed(ctx.original_exception)
            span.end()

    event.listen(target, "before_cursor_execute", started, named=True)
    event.listen(target, "after_cursor_execute", finished, named=True)
    event.listen(target, "handle_error", failed)


def log_slow_statement(statement: str, elapsed: float, *, failed: bool) -> None:
    """Log `statement` (its text only, cut to one line of at most `MAX_STATEMENT_CHARS`) as slow: it ran `elapsed` s."""
    duration_ms = round(elapsed * 1000, 3)
    text = _one_line(statement)
    logger.warning(
        "Slow SQL statement%s (%.1f ms): %s",
        " failed" if failed else "",
        duration_ms,
        text,
        extra={"duration_ms": duration_ms, "statement": text, "failed": failed},
    )
