"""SQLite without aiosqlite's hand-offs, for the queries every job makes (``Database.read``,
``Database.scan`` and ``Database.write`` on a SQLite file).

Through SQLAlchemy's async engine each statement on aiosqlite is four or five trips to the
connection's thread and back (cursor, execute, fetch, close, commit), each a future, a wake-up of
the event loop and two switches of the GIL: about 0.9 ms of CPU to read one job, where the same
query on a synchronous connection costs 0.15 ms (docs/performance.md, section 8). Here:

- a read runs at once, on the caller's thread (the event loop's), on a connection of its own: in
  WAL mode a reader takes no lock a writer holds, so it never waits on one, and a read of a few
  rows by an index is tens of microseconds of SQLite;
- a scan, a read whose cost grows with the data (counts over a day, every unfinished job), runs
  in a thread of its own, so that a large one does not hold the loop;
- a write runs as one transaction in one thread of its own, one hand-off for the whole of it: a
  write may wait for another connection's lock (SQLite has one writer at a time), and that wait
  must never be the event loop's. A write whose caller was cancelled before it committed is
  rolled back, as it is on the async engine.

The rest of the bot's SQL stays on the async engine; both see the same file, each commit visible
to the next read of either.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")


class WriteCancelled(Exception):
    """Raised in the writing thread to roll back a write whose caller is gone."""


class DirectSqlite:
    def __init__(
        self, url: str, *, busy_seconds: float, on_connect: Callable[[Any, Any], None]
    ) -> None:
        sync_url = sa.engine.make_url(url).set(drivername="sqlite+pysqlite")
        self._reader = _engine(sync_url, busy_seconds, on_connect)
        self._scanner = _engine(sync_url, busy_seconds, on_connect)
        self._writer = _engine(sync_url, busy_seconds, on_connect)
        self._scans = ThreadPoolExecutor(1, thread_name_prefix="sqlite-scans")
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writes")
        self._closed = False

    def read(self, fn: Callable[[sa.Connection], T]) -> T:
        return _once(self._reader, fn)

    async def scan(self, fn: Callable[[sa.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._scans, _once, self._scanner, fn
        )

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        cancelled = threading.Event()
        running = asyncio.get_running_loop().run_in_executor(
            self._writes, self._transaction, fn, cancelled
        )
        try:
            return await running
        except asyncio.CancelledError:
            # Not yet begun, it never runs; under way, it rolls back rather than commit for a
            # caller that will never see it (a claim made after its claimant gave up would
            # leave a job nobody sends).
            cancelled.set()
            raise

    def _transaction(self, fn: Callable[[sa.Connection], T], cancelled: threading.Event) -> T:
        with self._writer.begin() as conn:
            result = fn(conn)
            if cancelled.is_set():
                raise WriteCancelled
            return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        self._reader.dispose()
        await loop.run_in_executor(self._scans, self._scanner.dispose)
        await loop.run_in_executor(self._writes, self._writer.dispose)
        self._scans.shutdown()
        self._writes.shutdown()


def _once(engine: sa.Engine, fn: Callable[[sa.Connection], T]) -> T:
    with engine.connect() as conn:
        return fn(conn)


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
