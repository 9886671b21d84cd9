"""The schema part of readiness: is the database at the migration scripts' head?

Importing this module imports neither alembic nor SQLAlchemy: the serving process reads the
scripts' heads from their text (`read_script_heads`) and the database's revision with asyncpg.
Applying migrations is `svc.migrations`' job (the command line's).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from svc.probe import Connect, describe_failure, utc_now

__all__ = [
    "RECHECK_AT_HEAD_SECONDS",
    "SCRIPT_LOCATION",
    "SchemaCheck",
    "SchemaStatus",
    "Scripts",
    "compare",
    "database_revisions",
    "describe_revisions",
    "read_script_heads",
]

logger = logging.getLogger("svc.migrations")

#: Alembic's script directory (`env.py`, `versions/`), next to the `svc` package.
SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"
#: Seconds a schema found at head is trusted before it is read again (one short connection per
#: interval and process): a database restored or recreated under a running service is noticed.
RECHECK_AT_HEAD_SECONDS = 30.0
BASE = "base"
VERSION_TABLE_QUERY = "SELECT to_regclass('alembic_version')"
VERSIONS_QUERY = "SELECT version_num FROM alembic_version"


@dataclass(frozen=True, slots=True)
class Scripts:
    """What the revision scripts say: their head(s), and every revision they know."""

    heads: tuple[str, ...]
    known: frozenset[str]


_SCRIPT_NAME = re.compile(r"(?!\.#|__init__).*\.py")
# A module-level `revision = ...` or `down_revision: ... = ...` assignment, on one line.
_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=[ \t]*(.*?)[ \t]*(?:#.*)?$", re.MULTILINE)
_STRING = r"""(?:"([^"\\\n]*)"|'([^'\\\n]*)')"""
_ONE = re.compile(_STRING)
_SEVERAL = re.compile(rf"[(\[]\s*(?:{_STRING}\s*,\s*)*(?:{_STRING}\s*)?[)\]]")


class _NotPlain(Exception):
    """A revision script that only alembic can read (its identifiers are not plain literals on one line)."""


def _identifiers(value: str) -> tuple[str, ...] | None:
    """The revision(s) a literal names: None for `None`; a string; a tuple or list of strings."""
    if value == "None":
        return None
    if _ONE.fullmatch(value) or _SEVERAL.fullmatch(value):
        return tuple(a or b for a, b in _ONE.findall(value))
    raise _NotPlain()


def _revision_of(path: Path) -> tuple[str, tuple[str, ...]]:
    """A script's `revision` and its `down_revision`(s), read from its text without running it.

    Regular expressions, not `ast`: this runs in a worker thread, and on CPython 3.11 `ast` used
    from two threads at once can fail ("AST constructor recursion depth mismatch").
    """
    found: dict[str, tuple[str, ...] | None] = {}
    for name, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8")):
        if name in found:
            raise _NotPlain()  # assigned twice: let alembic run the script
        found[name] = _identifiers(value)
    revision = found.get("revision")
    if revision is None or len(revision) != 1 or "down_revision" not in found:
        raise _NotPlain()
    return revision[0], found["down_revision"] or ()


def read_script_heads(version_locations: Iterable[Path] = ()) -> Scripts:
    """The scripts' heads and known revisions, as `svc.migrations.read_scripts` (alembic) finds them.

    Reads the `*.py` files of `migrations/versions` and of `version_locations` as text, without
    importing alembic or running them, so the serving process never loads alembic. This holds for
    scripts whose `revision` and `down_revision` are module-level assignments of plain literals
    on one line (a string; `None`; a tuple or list of strings), as alembic generates them. A head
    is a revision no script names as its `down_revision`. Anything else (another form of
    assignment, a file that cannot be read, a duplicate revision, a `down_revision` no script
    defines) makes it defer to alembic, which reads the scripts or says what is wrong. Blocking:
    run it in a thread.
    """
    extra = list(version_locations)
    try:
        revisions = [
            _revision_of(path)
            for directory in [SCRIPT_LOCATION / "versions", *extra]
            for path in sorted(directory.iterdir())
            if _SCRIPT_NAME.fullmatch(path.name) and path.is_file()
        ]
    except (_NotPlain, OSError, UnicodeDecodeError):
        return _read_with_alembic(extra)
    known = frozenset(revision for revision, _ in revisions)
    revised = {down for _, downs in revisions for down in downs}
    if len(known) != len(revisions) or not revised <= known:
        return _read_with_alembic(extra)
    return Scripts(tuple(sorted(known - revised)), known)


def _read_with_alembic(version_locations: list[Path]) -> Scripts:
    from svc.migrations import alembic_config, read_scripts

    return read_scripts(alembic_config(version_locations=version_locations))


def describe_revisions(revisions: tuple[str, ...]) -> str:
    """Revisions as people read them: comma-separated, or "base" when there are none."""
    return ", ".join(revisions) if revisions else BASE


async def database_revisions(conn: asyncpg.Connection) -> tuple[str, ...]:
    """The revisions recorded in the database's `alembic_version` (empty: no migration applied)."""
    if await conn.fetchval(VERSION_TABLE_QUERY) is None:
        return ()
    rows = await conn.fetch(VERSIONS_QUERY)
    return tuple(sorted(row[0] for row in rows))


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The database's revision compared with the scripts' head(s)."""

    status: str  # pass (at head) | warn (behind, ahead, or not known)
    time: str
    measured_at: float  # time.monotonic()
    current: tuple[str, ...] | None = None  # None: not read
    head: tuple[str, ...] | None = None  # None: scripts not read
    output: str | None = None

    def observed(self) -> dict[str, str | None]:
        return {
            "current": None if self.current is None else describe_revisions(self.current),
            "head": None if self.head is None else describe_revisions(self.head),
        }


def compare(current: tuple[str, ...], scripts: Scripts) -> str | None:
    """Why `current` is not the scripts' head, in plain words; None when it is."""
    if set(current) == set(scripts.heads):
        return None
    now = describe_revisions(current) + (" (no migration applied)" if not current else "")
    expected = describe_revisions(scripts.heads)
    if any(revision not in scripts.known for revision in current):
        return (
            f"Database schema is at {now}, expected {expected}: the database is ahead of "
            "this release's migration scripts (or from another branch)."
        )
    return f"Database schema is at {now}, expected {expected}: migrations are pending (python -m svc migrate)."


class SchemaCheck:
    """Whether the database's schema is at the scripts' head: the schema part of readiness.

    `start()` begins the first comparison in the background (the scripts are read once, in a
    thread), so start-up never waits for it. Until the database is at head, `check()` re-reads
    its revision at most once per `ttl` seconds (concurrent callers share one read, bounded by
    `timeout`), so applying migrations to a running service makes it ready. At head, `last` is
    the answer and the revision is read again in the background `RECHECK_AT_HEAD_SECONDS` later,
    and at once whenever a connection made through `watch(connect)` replaces an earlier one (the
    server may have been restarted, restored or recreated meanwhile).
    """

    def __init__(
        self, connect: Connect, *, timeout: float, ttl: float, scripts: Callable[[], Scripts] = read_script_heads
    ) -> None:
        self._connect = connect
        self.timeout = timeout
        self.ttl = ttl
        self._read_scripts = scripts
        self._scripts: asyncio.Future[Scripts] | None = None
        self._inflight: asyncio.Future[SchemaStatus] | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._closed = False
        self.last: SchemaStatus | None = None

    def start(self) -> None:
        self._begin()

    def watch(self, connect: Connect) -> Connect:
        """`connect`, re-reading the schema after every connection it makes but the first (give it to the probe)."""
        connected = False

        async def reconnect(budget: float) -> Any:
            nonlocal connected
            conn = await connect(budget)
            if connected:
                self._begin()
            connected = True
            return conn

        return reconnect

    def _begin(self) -> asyncio.Future[SchemaStatus]:
        if self._inflight is None:
            if self._recheck is not None:
                self._recheck.cancel()
                self._recheck = None
            self._inflight = asyncio.ensure_future(self._measure())
            self._inflight.add_done_callback(self._finished)
        return self._inflight

    async def check(self) -> SchemaStatus:
        last = self.last
        if last is not None and (last.status == "pass" or time.monotonic() - last.measured_at < self.ttl):
            return last
        inflight = self._begin()
        try:
            async with asyncio.timeout(self.timeout):
                # Shielded: a caller that goes away must not cancel the read others are waiting for.
                return await asyncio.shield(inflight)
        except TimeoutError:
            if self.last is not None:
                return self.last
            return SchemaStatus("warn", utc_now(), time.monotonic(), output="The database schema is being checked.")

    def _finished(self, future: asyncio.Future[SchemaStatus]) -> None:
        self._inflight = None
        if future.cancelled():
            return
        previous, self.last = self.last, future.result()
        if self.last.status == "pass" and not self._closed:
            self._recheck = asyncio.get_running_loop().call_later(RECHECK_AT_HEAD_SECONDS, self._begin)
        if previous is None or previous.output != self.last.output:
            if self.last.output is None:
                logger.info("Database schema is at head (%s)", describe_revisions(self.last.current or ()))
            else:
                logger.warning("%s", self.last.output)

    async def _measure(self) -> SchemaStatus:
        if self._scripts is None:
            self._scripts = asyncio.ensure_future(asyncio.to_thread(self._read_scripts))
        try:
            scripts = await asyncio.shield(self._scripts)
        except Exception as exc:
            if self.last is None:
                logger.exception("The migration scripts could not be read")
            output = f"The migration scripts could not be read ({type(exc).__name__})."
            return SchemaStatus("warn", utc_now(), time.monotonic(), output=output)
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect(self.timeout)
                try:
                    current = await database_revisions(conn)
                except BaseException:
                    conn.terminate()
                    raise
                await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failure = f"The database schema revision could not be read: {describe_failure(exc, self.timeout)}"
            return SchemaStatus("warn", utc_now(), time.monotonic(), head=scripts.heads, output=failure)
        difference = compare(current, scripts)
        status = "pass" if difference is None else "warn"
        return SchemaStatus(status, utc_now(), time.monotonic(), current, scripts.heads, difference)

    async def close(self) -> None:
        """Stop a check in progress or planned (at shutdown), and wait until it has unwound."""
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
        pending = {future for future in (self._inflight, self._scripts) if future is not None and not future.done()}
        for future in pending:
            future.cancel()
        if pending:
            # A read of the scripts runs in a thread and cannot be interrupted: it is abandoned, not waited for.
            await asyncio.wait(pending, timeout=1)
