"""bot.jobs.sqlite_driver: one trip to aiosqlite's thread per statement, nothing else changed.

The trips are counted at aiosqlite's own door (``Connection._execute``, which every statement,
commit and rollback goes through), on a real SQLite file. The driver serves the async engine
(``Database.engine``), which every part of the bot but the store's calls uses on SQLite; those
run on the event loop (bot.jobs.loop_sqlite, tests/jobs/test_loop_sqlite.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import pytest
import sqlalchemy as sa

from bot.jobs.database import SQLITE_CONNECTIONS, Database
from tests.jobs.test_paid_answer import until

ROWS = sa.table("t", sa.column("n", sa.Integer))
T = TypeVar("T")


async def engine_read(database: Database, fn: Callable[[sa.Connection], T]) -> T:
    async with database.engine.connect() as conn:
        return await conn.run_sync(fn)


async def engine_write(database: Database, fn: Callable[[sa.Connection], T]) -> T:
    async with database.engine.begin() as conn:
        return await conn.run_sync(fn)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    # A lock left taken would fail the next write in a second, not in the default 30.
    database = await Database.open(f"sqlite:///{tmp_path}/x.sqlite3", sqlite_busy_seconds=1)
    await database.write(lambda c: c.execute(sa.text("CREATE TABLE t (n INTEGER PRIMARY KEY)")))
    try:
        yield database
    finally:
        await database.close()


def numbers(conn: sa.Connection) -> list[int]:
    return list(conn.execute(sa.select(ROWS.c.n).order_by(ROWS.c.n)).scalars())


async def test_a_read_is_one_trip_and_a_write_one_more_for_its_commit(
    database: Database, trips: list[str]
) -> None:
    await engine_write(database, lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))
    trips.clear()
    assert await engine_read(database, numbers) == [1, 2]
    # SQLAlchemy's adapter made five: cursor, execute, fetchall, close, and the pool's
    # rollback of a connection that opened no transaction.
    assert len(trips) == 1
    trips.clear()
    await engine_write(database, lambda c: c.execute(sa.delete(ROWS).where(ROWS.c.n == 1)))
    assert trips == ["_run", "commit"]
    assert await engine_read(database, numbers) == [2]


@pytest.mark.parametrize("through", ["engine", "store"])
async def test_a_failed_write_is_rolled_back_and_its_connection_serves_on(
    database: Database, through: str
) -> None:
    read, write = (
        (database.read, database.write)
        if through == "store"
        else (lambda fn: engine_read(database, fn), lambda fn: engine_write(database, fn))
    )
    await write(lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))

    def twice(conn: sa.Connection) -> None:
        conn.execute(sa.insert(ROWS).values(n=3))
        conn.execute(sa.insert(ROWS).values(n=1))

    with pytest.raises(sa.exc.IntegrityError):
        await write(twice)
    assert await read(numbers) == [1, 2]
    await write(lambda c: c.execute(sa.insert(ROWS).values(n=4)))
    assert await read(numbers) == [1, 2, 4]


async def test_a_statement_cancelled_before_the_thread_ran_it_is_rolled_back(
    database: Database,
) -> None:
    """A cancelled caller's statement still runs, later, on the connection's thread: the
    connection must not go back to the pool with the transaction it opened then (the next
    user's commit would commit it, or the file stay locked). SQLAlchemy closes a connection
    whose statement was cancelled; the rollback this driver skips must not be the one that
    mattered either way."""
    running, release = threading.Event(), threading.Event()
    drivers: list[aiosqlite.Connection] = []

    def hold() -> None:
        running.set()
        release.wait(10)

    async def cancelled_insert() -> None:
        async with database.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: aiosqlite.Connection = raw.driver_connection  # type: ignore[assignment]
            drivers.append(driver)
            await asyncio.to_thread(running.wait, 10)
            inserting = asyncio.create_task(conn.execute(sa.insert(ROWS).values(n=1)))
            await until(lambda: driver._tx.qsize() > 0, "the insert sent")
            inserting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await inserting

    using = asyncio.create_task(cancelled_insert())
    await until(lambda: bool(drivers), "a connection")
    held = asyncio.create_task(drivers[0]._execute(hold))  # type: ignore[no-untyped-call]
    # The thread is held while the insert is sent and cancelled: hold it until the connection
    # is back in the pool, or until something was queued behind the insert (a rollback, a
    # close) and the connection waits for it.
    await until(lambda: using.done() or drivers[0]._tx.qsize() > 1, "the connection let go")
    release.set()
    await held
    await using
    await engine_write(database, lambda c: c.execute(sa.insert(ROWS).values(n=2)))
    assert await engine_read(database, numbers) == [2]


async def test_rows_fetched_in_parts_of_the_default_size(database: Database) -> None:
    await engine_write(database, lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))
    first = await engine_read(database, lambda c: c.execute(sa.select(ROWS.c.n)).fetchmany())
    assert len(first) == 1


async def test_a_write_read_as_a_stream_and_left_uncommitted_is_rolled_back(
    database: Database,
) -> None:
    """A streamed result runs on aiosqlite's own server-side cursor, outside the one trip
    that reports whether a transaction is open: the connection must still be rolled back
    before the next caller has it (whose commit would commit what was abandoned)."""
    await engine_write(database, lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))

    def abandoned(conn: sa.Connection) -> None:
        streamed = conn.execution_options(stream_results=True)
        streamed.execute(sa.text("DELETE FROM t WHERE n = 1")).close()

    await engine_read(database, abandoned)
    await engine_write(database, lambda c: c.execute(sa.insert(ROWS).values(n=3)))
    assert await engine_read(database, numbers) == [1, 2, 3]


async def test_a_burst_of_connections_is_kept_for_the_next_one(database: Database) -> None:
    # A SQLite connection is a thread, a file opened and its pragmas (about 3 ms of CPU): a
    # burst of clicks must not open and close them again each time.
    opened: list[object] = []
    sa.event.listen(database.engine.sync_engine, "connect", lambda conn, _: opened.append(conn))

    async def burst() -> None:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(SQLITE_CONNECTIONS):
                conn = await held.enter_async_context(database.engine.connect())
                await conn.execute(sa.select(ROWS.c.n))

    await burst()
    first = len(opened)
    await burst()
    assert first <= SQLITE_CONNECTIONS
    assert len(opened) == first


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"]
)
async def test_a_database_in_memory_opens(url: str) -> None:
    # Its pool holds its one connection and takes no size: the file's pool settings broke it.
    database = await Database.open(url)
    try:
        await database.write(lambda c: c.execute(sa.text("CREATE TABLE t (n INTEGER)")))
        assert (
            await database.read(lambda c: c.execute(sa.text("SELECT count(*) FROM t")).scalar())
            == 0
        )
    finally:
        await database.close()
