"""SQLite without aiosqlite's hand-offs, for the queries every job makes (``Database.read`` and
``Database.write`` on a SQLite file).

Through SQLAlchemy's async engine each statement on aiosqlite is four or five trips to the
connection's thread and back (cursor, execute, fetch, close, commit), each a future, a wake-up of
the event loop and two switches of the GIL: about 0.9 ms of CPU to read one job, where the same
query on a synchronous connection costs 0.15 ms (docs/performance.md, section 8). Here:

- a read runs at once, on the caller's thread (the event loop's), on a connection of its own: in
  WAL mode a reader takes no lock a writer holds, so it never waits on one, and a read by primary
  key is tens of microseconds of SQLite;
- a write runs as one transaction in one thread of its own, one hand-off for the whole of it: a
  write may wait for another connection's lock (SQLite has one writer at a time), and that wait
  must never be the event loop's.

The rest of the bot's SQL stays on the async engine; both see the same file, each commit visible
to the next read of either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")


class DirectSqlite:
    def __init__(
        self, url: str, *, busy_seconds: float, on_connect: Callable[[Any, Any], None]
    ) -> None:
        sync_url = sa.engine.make_url(url).set(drivername="sqlite+pysqlite")
        self._reader = _engine(sync_url, busy_seconds, on_connect)
        self._writer = _engine(sync_url, busy_seconds, on_connect)
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writes")

    def read(self, fn: Callable[[sa.Connection], T]) -> T:
        with self._reader.connect() as conn:
            return fn(conn)

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, self._transaction, fn)

    def _transaction(self, fn: Callable[[sa.Connection], T]) -> T:
        with self._writer.begin() as conn:
            return fn(conn)

    async def close(self) -> None:
        self._reader.dispose()
        await asyncio.get_running_loop().run_in_executor(self._writes, self._writer.dispose)
        self._writes.shutdown()


def _engine(url: sa.URL, busy_seconds: float, on_connect: Callable[[Any, Any], None]) -> sa.Engine:
    engine = sa.create_engine(
        url,
        # Each engine's connection is used by one thread at a time, but made by whichever
        # thread opened the store, and closed by the one that closes it.
        connect_args={"timeout": busy_seconds, "check_same_thread": False},
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
    )
    sa.event.listen(engine, "connect", on_connect)
    return engine
