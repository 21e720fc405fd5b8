"""SQLite without aiosqlite's hand-offs, for the queries every job makes (``Database.read`` and
``Database.write`` on a SQLite file).

Through SQLAlchemy's async engine each statement on aiosqlite is four or five trips to the
connection's thread and back (cursor, execute, fetch, close, commit), each a future, a wake-up of
the event loop and two switches of the GIL: about 0.9 ms of CPU to read one job. Here each read
or write is one function of plain statements on a synchronous connection, handed to a thread in
one trip (about 0.35 ms to read one job; bench/storecost.py):

- reads run in two threads of their own, each with its connection: in WAL mode a reader takes
  no lock a writer holds, but SQLite may still make it wait (a busy handler, the WAL being
  restarted under a burst of writes), and that wait must never be the event loop's; two, so
  that a long read (counts over a day, every unfinished job) does not hold up the next;
- writes run as one transaction each in one thread of its own: a write may wait for another
  connection's lock (SQLite has one writer at a time). A write whose caller was cancelled
  before it committed is rolled back, as it is on the async engine.

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

# Threads (and connections) for reads.
READERS = 2


class WriteCancelled(Exception):
    """Raised in the writing thread to roll back a write whose caller is gone."""


class DirectSqlite:
    def __init__(
        self, url: str, *, busy_seconds: float, on_connect: Callable[[Any, Any], None]
    ) -> None:
        sync_url = sa.engine.make_url(url).set(drivername="sqlite+pysqlite")
        self._reader = _engine(sync_url, busy_seconds, on_connect, READERS)
        self._writer = _engine(sync_url, busy_seconds, on_connect, 1)
        self._reads = ThreadPoolExecutor(READERS, thread_name_prefix="sqlite-reads")
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writes")
        self._closed = False

    async def read(self, fn: Callable[[sa.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, self._read, fn)

    def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        with self._reader.connect() as conn:
            return fn(conn)

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
        await loop.run_in_executor(self._reads, self._reader.dispose)
        await loop.run_in_executor(self._writes, self._writer.dispose)
        self._reads.shutdown()
        self._writes.shutdown()


def _engine(
    url: sa.URL, busy_seconds: float, on_connect: Callable[[Any, Any], None], connections: int
) -> sa.Engine:
    engine = sa.create_engine(
        url,
        # A connection is used by one thread at a time, not always the one that made it.
        connect_args={"timeout": busy_seconds, "check_same_thread": False},
        hide_parameters=True,
        pool_size=connections,
        max_overflow=0,
    )
    sa.event.listen(engine, "connect", on_connect)
    return engine
