"""Request ids: the caller's `X-Request-ID` when well-formed, else 128 random bits as 32 hex digits."""

from __future__ import annotations

import os
import re
from collections import deque

__all__ = ["HEADER", "new_request_id", "well_formed"]

HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

# One getrandom() call yields a batch of ids, each with its response header (a system call per request would
# cost more than the rest of the id); a deque hands them out, safely across threads.
_BATCH = 256
_ids: deque[tuple[str, tuple[bytes, bytes]]] = deque()
os.register_at_fork(after_in_child=_ids.clear)  # a forked worker must never reuse its parent's ids


def well_formed(value: bytes) -> bool:
    """Whether an inbound id may be used as is: 1 to 128 characters of `[A-Za-z0-9._:-]`."""
    return _VALID.fullmatch(value) is not None


def new_request_id() -> tuple[str, tuple[bytes, bytes]]:
    """A new request id (32 lowercase hex digits from the operating system's random source) and its header."""
    try:
        return _ids.popleft()
    except IndexError:
        block = os.urandom(16 * _BATCH).hex()
        _ids.extend([(rid, (HEADER, rid.encode())) for rid in (block[i : i + 32] for i in range(0, len(block), 32))])
        return _ids.popleft()
