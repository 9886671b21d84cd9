"""Identifiers: RFC 9562 UUIDv7 in Python, and the matching server-side default for migrations."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from sqlalchemy import TextClause, text

__all__ = ["uuid7", "uuid_server_default"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_BITS = 42  # 12 bits of rand_a and the top 30 bits of rand_b (RFC 9562, section 6.2, method 1)
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1


def uuid7() -> uuid.UUID:
    """A version 7 UUID: time-ordered, and strictly increasing within this process."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Seeded at random with the top bit clear, so the counter has room to grow.
            _counter = int.from_bytes(os.urandom(6)) & (_COUNTER_MAX >> 1)
        else:
            _counter += 1
            if _counter > _COUNTER_MAX:
                # More ids in one millisecond than the counter holds (or the clock went back): borrow the next one.
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    tail = int.from_bytes(os.urandom(4))
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (counter >> 30) << 64
    value |= 0b10 << 62
    value |= (counter & 0x3FFF_FFFF) << 32
    value |= tail
    return uuid.UUID(int=value)


def uuid_server_default(bind: Any) -> TextClause:
    """`server_default` for a UUID primary key: `uuidv7()` on PostgreSQL 18+, else `gen_random_uuid()`.

    `bind` is a (sync) SQLAlchemy connection, such as `op.get_bind()` in a migration. In Alembic's
    offline mode (`--sql`, `python -m svc lint-migrations`) there is none (`op.get_bind()` is None)
    and no server to ask: the SQL then uses `gen_random_uuid()`, which every supported PostgreSQL has.
    """
    if bind is None:
        return text("gen_random_uuid()")
    version = bind.dialect.server_version_info or (0,)
    return text("uuidv7()" if version[0] >= 18 else "gen_random_uuid()")
