"""The connection pool: SQLAlchemy's asyncio queue pool, with a lane for the fast path.

The ORM checks connections out the usual way: in a greenlet, behind a connection proxy, with checkout
events and a reset on return. The fast path (`Database.connection()`, `transaction()`, `run()`) needs
none of that: it takes a pooled connection's entry straight from the same queue and puts it
back, and waits on that queue like any other checkout when none is idle. One pool, one budget:
`checkedout()` counts both, and waiters of either kind are served in the order they came.
The lane costs a fraction of a full checkout (bench/README.md has the numbers).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty, Full

__all__ = ["Pool"]


class _Queue(AsyncAdaptedQueue[ConnectionPoolEntry]):
    async def next(self) -> ConnectionPoolEntry:
        """The next entry put back, in turn with every checkout waiting for one."""
        return await self._queue.get()


class Pool(AsyncAdaptedQueuePool):
    """`AsyncAdaptedQueuePool` plus the fast path's lane: `take()`, `give_back()`.

    An entry taken by the lane is out of the queue exactly as a checked-out connection is, until
    `give_back()`, which closes a connection that is not fit to be used again.
    """

    _queue_class = _Queue

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle = cast("_Queue", self._pool)

    async def take(self) -> tuple[asyncpg.Connection, ConnectionPoolEntry]:
        """An entry out of the pool, with its asyncpg connection: an idle one, else a new connection while
        the pool has room, else the next one put back, in turn with every checkout waiting.

        Waits at most the pool's timeout (then `sqlalchemy.exc.TimeoutError`, as a checkout raises). An
        entry that is closed, due for recycling or invalidated is reconnected first (on failure it goes
        back, invalidated, and the error is raised as a checkout raises it).
        """
        try:
            entry = self._idle.get_nowait()
        except Empty:
            if self._max_overflow == -1 or self._overflow < self._max_overflow:
                entry = await greenlet_spawn(self._do_get)  # connects (SQLAlchemy's connect runs in a greenlet)
            else:
                try:
                    async with asyncio.timeout(self._timeout):
                        entry = await self._idle.next()
                except TimeoutError:
                    raise sa_exc.TimeoutError(
                        f"QueuePool limit of size {self.size()} overflow {self.overflow()} reached, "
                        f"connection timed out, timeout {self._timeout:.2f}"
                    ) from None
        dbapi: Any = entry.dbapi_connection
        if dbapi is None or not self._fresh(entry) or dbapi.driver_connection.is_closed():
            try:
                dbapi = await greenlet_spawn(_renew, entry)
            except BaseException:
                self._do_return_conn(entry)  # invalidated: the next checkout connects anew
                raise
        return dbapi.driver_connection, entry

    def _fresh(self, entry: ConnectionPoolEntry) -> bool:
        """What a checkout checks before use (`_ConnectionRecord.get_connection`): not due for recycling, and
        started after the pool's last invalidation (a disconnect seen on any connection) and its own."""
        record: Any = entry
        started: float = record.starttime
        if self._recycle > -1 and time.time() - started > self._recycle:
            return False
        return self._invalidate_time <= started and record._soft_invalidate_time <= started

    async def give_back(self, entry: ConnectionPoolEntry, *, discard: bool = False) -> None:
        """Put back an entry from `take()`. Its connection is closed first (the next checkout connects anew)
        when it has closed, when a transaction was left open on it, or with `discard`."""
        driver = cast(Any, entry.dbapi_connection).driver_connection
        try:
            if discard or driver.is_closed() or driver.is_in_transaction():
                await greenlet_spawn(entry.invalidate)
        finally:  # back even when cancelled while closing (invalidated then: the next checkout connects)
            try:
                self._idle.put_nowait(entry)
            except Full:  # an overflow connection took its place meanwhile: this one closes, as QueuePool does
                await greenlet_spawn(self._do_return_conn, entry)


def _renew(entry: ConnectionPoolEntry) -> Any:
    """Reconnect `entry` (in a greenlet): its connection closed, recycled or invalidated; its new DBAPI connection."""
    record: Any = entry
    dbapi = record.dbapi_connection
    if dbapi is not None and dbapi.driver_connection.is_closed():
        record.invalidate()
    return record.get_connection()
