"""bot.jobs.sqlite_driver: one trip to aiosqlite's thread per statement, nothing else changed.

The trips are counted at aiosqlite's own door (``Connection._execute``, which every statement,
commit and rollback goes through), on a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa

from bot.jobs.database import SQLITE_CONNECTIONS, Database
from bot.jobs.store import JobState, JobStore
from tests.jobs.test_paid_answer import until
from tests.jobs.test_store import new_job

ROWS = sa.table("t", sa.column("n", sa.Integer))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    # A lock left taken would fail the next write in a second, not in the default 30.
    database = await Database.open(f"sqlite:///{tmp_path}/x.sqlite3", sqlite_busy_seconds=1)
    await database.write(lambda c: c.execute(sa.text("CREATE TABLE t (n INTEGER PRIMARY KEY)")))
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function sent to an aiosqlite thread from now on."""
    sent: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return sent


def numbers(conn: sa.Connection) -> list[int]:
    return list(conn.execute(sa.select(ROWS.c.n).order_by(ROWS.c.n)).scalars())


async def test_a_read_is_one_trip_and_a_write_one_more_for_its_commit(
    tmp_path: Path, trips: list[str]
) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/store.sqlite3")
    try:
        job = await new_job(store)
        trips.clear()
        assert await store.get(job.id) == job
        # SQLAlchemy's adapter made five: cursor, execute, fetchall, close, and the pool's
        # rollback of a connection that opened no transaction.
        assert len(trips) == 1
        trips.clear()
        moved = await store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
        assert moved is not None and moved.state is JobState.SUBMITTING
        assert trips == ["_run", "commit"]
        assert await store.get(job.id) == moved
    finally:
        await store.close()


async def test_a_failed_write_is_rolled_back_and_its_connection_serves_on(
    database: Database,
) -> None:
    await database.write(lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))

    def twice(conn: sa.Connection) -> None:
        conn.execute(sa.insert(ROWS).values(n=3))
        conn.execute(sa.insert(ROWS).values(n=1))

    with pytest.raises(sa.exc.IntegrityError):
        await database.write(twice)
    assert await database.read(numbers) == [1, 2]
    await database.write(lambda c: c.execute(sa.insert(ROWS).values(n=4)))
    assert await database.read(numbers) == [1, 2, 4]


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
    await database.write(lambda c: c.execute(sa.insert(ROWS).values(n=2)))
    assert await database.read(numbers) == [2]


async def test_rows_fetched_in_parts_of_the_default_size(database: Database) -> None:
    await database.write(lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))
    first = await database.read(lambda c: c.execute(sa.select(ROWS.c.n)).fetchmany())
    assert len(first) == 1


async def test_a_write_read_as_a_stream_and_left_uncommitted_is_rolled_back(
    database: Database,
) -> None:
    """A streamed result runs on aiosqlite's own server-side cursor, outside the one trip
    that reports whether a transaction is open: the connection must still be rolled back
    before the next caller has it (whose commit would commit what was abandoned)."""
    await database.write(lambda c: c.execute(sa.insert(ROWS), [{"n": 1}, {"n": 2}]))

    def abandoned(conn: sa.Connection) -> None:
        streamed = conn.execution_options(stream_results=True)
        streamed.execute(sa.text("DELETE FROM t WHERE n = 1")).close()

    await database.read(abandoned)
    await database.write(lambda c: c.execute(sa.insert(ROWS).values(n=3)))
    assert await database.read(numbers) == [1, 2, 3]


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
