"""The store's calls on a SQLite file, run on the event loop itself.

A trip to aiosqlite's thread costs about 0.2 ms of CPU on these VMs (a future, the loop woken
through its self-pipe, two switches of the GIL): ten times the statement it carries, and the
largest part of a job's store CPU (docs/performance.md §8). ``Database.read``/``write`` take
plain functions of a synchronous connection with no awaits; on a SQLite file they run here, on
one synchronous connection, where a statement costs what SQLAlchemy and SQLite cost.

What keeps the loop from ever waiting inside SQLite:
- One connection, used by the loop alone: each call runs to its end before the loop goes on,
  so no call of this process waits for another's lock.
- A busy timeout of 0: where another connection holds the file's write lock (the async
  engine's, which the rest of the bot uses; another process, such as ``python -m bot db``),
  SQLite answers "busy" at once, the call is rolled back and tried again after an
  ``asyncio.sleep``, for as long as those connections would wait (``SQLITE_BUSY_SECONDS``).
  A call is a function of statements and nothing else, so trying it again is running it once.
- No checkpoint on this connection (``wal_autocheckpoint=0``): a checkpoint copies the log into
  the file and syncs it. The async engine's connections do it as they commit, and the keeper's
  sweep asks for one (``Database.checkpoint``), on aiosqlite's threads.
WAL, which the async engine sets on the file, lets this connection read while another writes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError, SQLAlchemyError

T = TypeVar("T")

log = logging.getLogger(__name__)

# Between tries of a call that found the file locked: short at first (another connection's
# transaction lasts a few milliseconds), then no longer than a lease renewal can afford.
FIRST_PAUSE = 0.002
LONGEST_PAUSE = 0.1


def _busy(exc: OperationalError) -> bool:
    cause = exc.orig
    code = getattr(cause, "sqlite_errorcode", None)
    return (
        isinstance(cause, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    )


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class LoopSQLite:
    def __init__(self, path: Path, *, busy_seconds: float) -> None:
        self._engine = sa.create_engine(
            f"sqlite:///{path}",
            poolclass=sa.pool.StaticPool,
            # The loop's thread alone uses it; check_same_thread would only refuse a test's
            # second event loop in another thread.
            connect_args={"timeout": 0, "check_same_thread": False},
            hide_parameters=True,
        )
        sa.event.listen(self._engine, "connect", _pragmas)
        self._busy_seconds = busy_seconds
        self._conn: sa.Connection | None = None
        self._closed = False

    def _connection(self) -> sa.Connection:
        if self._closed:
            raise sa.exc.ResourceClosedError("the store is closed")
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._engine.connect()
        return self._conn

    def _end(self, conn: sa.Connection, failure: BaseException) -> None:
        """After ``fn`` failed: what it left open is rolled back. A failure of SQLite's own
        comes with the failed statement closed; any other (a bug, a row that would not build)
        may leave a result open, which keeps the connection on its old snapshot of the file
        (stale reads, every write "locked") for as long as the error is kept somewhere, and a
        connection that cannot roll back may hold a lock: such a connection is closed."""
        if isinstance(failure, sa.exc.DBAPIError):
            try:
                conn.rollback()
                return
            except SQLAlchemyError:
                log.warning("a SQLite connection failed to roll back; opening another")
            except BaseException:
                self._drop(conn)
                raise
        self._drop(conn)

    def _drop(self, conn: sa.Connection) -> None:
        conn.invalidate()
        self._conn = None

    async def run(self, fn: Callable[[sa.Connection], T], *, commit: bool) -> T:
        """``fn`` on the connection, committed (``commit``) or rolled back after; tried again
        while the file is locked by another connection, up to the busy timeout."""
        deadline = time.monotonic() + self._busy_seconds
        pause = FIRST_PAUSE
        # A call that never waits would never let the loop go on: a loop over many store calls
        # (the sweep over every unfinished job) would be one turn of the loop, every click and
        # renewal waiting behind it. Through aiosqlite each call let the loop look around.
        await asyncio.sleep(0)
        while True:
            conn = self._connection()
            try:
                result = fn(conn)
                if commit:
                    conn.commit()
                else:
                    conn.rollback()
                return result
            except OperationalError as exc:
                self._end(conn, exc)
                if not _busy(exc) or time.monotonic() + pause > deadline:
                    raise
            except BaseException as exc:
                self._end(conn, exc)
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()
