"""SQLAlchemy's aiosqlite adapter with one trip to the connection's thread per statement.

SQLAlchemy's own adapter makes four for every statement (open a cursor, execute, fetch, close)
and a fifth when a connection goes back to the pool (a rollback, even after a read that opened
no transaction). Each trip is a future, a wake-up of the event loop through its self-pipe and
two switches of the GIL: most of a store call's CPU (docs/performance.md §8). Here a statement
is run, fetched and closed in one call on aiosqlite's thread, and a rollback with no transaction
open, a no-op in sqlite3 itself, stays on the loop. SQLite itself, its locking and the same SQL
are unchanged; the statements still run on aiosqlite's thread, never on the loop.

aiosqlite's ``Connection._execute`` (run a function on its thread) is what SQLAlchemy's adapter
already reaches into for the isolation level; pyproject.toml bounds the aiosqlite version.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# What one statement leaves behind: its description, every row, rowcount, lastrowid, and
# whether a transaction is open after it (read on the thread, once the statement is done).
_Outcome = tuple[Any, list[Any], int, int | None, bool]


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid, conn.in_transaction
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor whose results arrive whole with the statement's one trip."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _async_soft_close(self) -> None:
        """Nothing is left open on the thread: the rows are here already."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._take(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._take(operation, seq_of_parameters, many=True)

    def _take(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapted: _OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        outcome = adapted.trip(operation, parameters, many)
        self._description, rows, self._rowcount, self._lastrowid, _ = outcome
        self._rows = collections.deque(rows)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    # Whether the thread may hold an open transaction: true from the moment anything is sent
    # until the thread itself reports none open. A statement whose caller was cancelled still
    # runs (and may begin a transaction) after the caller is gone, so it stays true then.
    __slots__ = ("_maybe_open",)

    _cursor_cls: type[AsyncAdapt_aiosqlite_cursor] = _OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._maybe_open = False

    def cursor(self, server_side: bool = False) -> Any:
        if server_side:
            # aiosqlite's own cursor (stream_results, yield_per): it runs outside ``trip``,
            # so nothing it opens is known of; the pool rolls back after it.
            self._maybe_open = True
        return super().cursor(server_side=server_side)

    def trip(self, operation: Any, parameters: Any, many: bool) -> _Outcome:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        self._maybe_open = True
        try:
            call = connection._execute(_run, connection._conn, operation, parameters, many)  # type: ignore[no-untyped-call]
            outcome: _Outcome = await_(call)
        except Exception as error:
            self._handle_exception(error)
        self._maybe_open = outcome[4]
        return outcome

    def commit(self) -> None:
        self._maybe_open = True
        super().commit()
        self._maybe_open = False

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back. After a read no transaction is
        # open and sqlite3's rollback would do nothing, after a trip to the thread and back.
        if self._maybe_open:
            super().rollback()
            self._maybe_open = False


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The module for ``create_async_engine(..., module=...)`` on ``sqlite+aiosqlite``."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> _OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)
