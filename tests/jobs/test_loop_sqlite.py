"""bot.jobs.loop_sqlite: on a SQLite file the store's calls run on the event loop, never wait
inside SQLite, and leave the file's checkpoints to aiosqlite's threads.

Another connection holding the file's write lock is a plain sqlite3 connection of the test's
(as another process, or the async engine's connection in a transaction, would hold it)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.jobs.admission import Budget, Quota
from bot.jobs.database import Database
from bot.jobs.store import JobState, JobStore
from tests.jobs.test_paid_answer import until
from tests.jobs.test_sqlite_driver import ROWS, numbers
from tests.jobs.test_store import new_job

BUSY_SECONDS = 1.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "x.sqlite3"


@pytest.fixture
async def database(path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{path}", sqlite_busy_seconds=BUSY_SECONDS)
    await database.write(lambda c: c.execute(sa.text("CREATE TABLE t (n INTEGER PRIMARY KEY)")))
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def other(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection to the file, in autocommit: the test begins what it holds."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        yield conn
    finally:
        conn.close()


class Counted:
    """An insert of ``n`` that counts how many times it was run."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.runs = 0

    def __call__(self, conn: sa.Connection) -> None:
        self.runs += 1
        conn.execute(sa.insert(ROWS).values(n=self.n))


async def waiting_for_the_lock(
    database: Database, other: sqlite3.Connection, runs: int
) -> tuple[Counted, asyncio.Task[None]]:
    """An insert sent while ``other`` holds the write lock, once it has been run ``runs``
    times. The loop goes on while it waits: this test's own polling runs meanwhile."""
    other.execute("BEGIN IMMEDIATE")
    insert = Counted(1)
    writing = asyncio.create_task(database.write(insert))
    await until(lambda: insert.runs >= runs, f"the write run {runs} times")
    return insert, writing


async def test_a_store_call_on_a_sqlite_file_sends_nothing_to_a_thread(
    tmp_path: Path, trips: list[str]
) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/store.sqlite3")
    try:
        trips.clear()
        job = await new_job(store)
        assert await store.get(job.id) == job
        moved = await store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
        assert moved is not None and moved.state is JobState.SUBMITTING
        assert await store.get(job.id) == moved
        # Through aiosqlite: one trip for each statement and one for each commit.
        assert trips == []
    finally:
        await store.close()


async def test_a_write_that_finds_the_file_locked_is_tried_again_and_lands_once(
    database: Database, other: sqlite3.Connection
) -> None:
    _, writing = await waiting_for_the_lock(database, other, runs=2)
    assert not writing.done()
    other.execute("ROLLBACK")
    await writing
    assert await database.read(numbers) == [1]


async def test_a_write_locked_past_the_busy_timeout_fails_and_the_next_one_lands(
    database: Database, other: sqlite3.Connection
) -> None:
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sa.exc.OperationalError, match="locked"):
        await database.write(Counted(1))
    other.execute("ROLLBACK")
    await database.write(Counted(2))
    assert await database.read(numbers) == [2]


async def test_a_read_does_not_wait_for_another_connections_write(
    database: Database, other: sqlite3.Connection
) -> None:
    await database.write(Counted(1))
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (n) VALUES (2)")
    runs = 0

    def read(conn: sa.Connection) -> list[int]:
        nonlocal runs
        runs += 1
        return numbers(conn)

    assert await database.read(read) == [1]
    assert runs == 1
    other.execute("COMMIT")
    assert await database.read(numbers) == [1, 2]


async def test_a_write_cancelled_while_it_waits_for_the_lock_leaves_nothing_behind(
    database: Database, other: sqlite3.Connection
) -> None:
    _, writing = await waiting_for_the_lock(database, other, runs=1)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    other.execute("ROLLBACK")
    # Nothing of the cancelled write stays, and the loop's connection holds no lock: another
    # connection writes at once (its busy timeout is 0).
    other.execute("INSERT INTO t (n) VALUES (3)")
    assert await database.read(numbers) == [3]


async def test_a_read_that_failed_with_its_result_open_does_not_pin_an_old_snapshot(
    database: Database, other: sqlite3.Connection
) -> None:
    """A result left open by a function that raised, while the error is kept (a failed task
    keeps it), held the connection on the file as it was: stale reads, every write "locked"
    (found by the review of the change)."""
    await database.write(Counted(1))
    await database.write(Counted(2))

    def half_read(conn: sa.Connection) -> None:
        result = conn.execute(sa.select(ROWS.c.n))
        result.fetchone()
        raise ValueError("a row that would not build")

    kept: list[BaseException] = []
    try:
        await database.read(half_read)
    except ValueError as exc:
        kept.append(exc)
    other.execute("INSERT INTO t (n) VALUES (3)")
    assert await database.read(numbers) == [1, 2, 3]
    await database.write(Counted(4))
    assert await database.read(numbers) == [1, 2, 3, 4]
    assert kept


async def test_a_call_after_the_database_closed_is_refused(path: Path) -> None:
    database = await Database.open(f"sqlite:///{path}")
    await database.close()
    with pytest.raises(sa.exc.ResourceClosedError):
        await database.write(Counted(1))


async def test_the_loop_never_checkpoints_and_the_database_does_it_in_a_thread(
    database: Database, trips: list[str]
) -> None:
    # A checkpoint copies the log into the file and syncs the disk: not on the event loop.
    autocheckpoint = await database.read(
        lambda c: c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    )
    assert autocheckpoint == 0
    trips.clear()
    await database.checkpoint()
    assert trips == ["_run"]


async def test_a_job_checked_against_the_days_costs_is_stored_off_the_loop(
    tmp_path: Path, trips: list[str]
) -> None:
    # The credit budget and a server's credits add up every job of the day (about 1 µs a job
    # in SQLite): such a check runs on aiosqlite's thread, never holding up the loop.
    store = await JobStore.open(f"sqlite:///{tmp_path}/store.sqlite3")
    budget = Budget("2026-12-08", 1000, generation_cost=8, upscale_cost=2, video_cost=16)

    async def create(n: int, quota: Quota | None) -> None:
        await store.create(
            kind="upscale",
            parent_task_id=f"grid-{n}",
            image_index=0,
            requester_id=1,
            guild_id=2,
            channel_id=3,
            deadline_seconds=60,
            max_unfinished=10,
            quota=quota,
        )

    try:
        trips.clear()
        await create(0, Quota(category="upscale", since=0, member_limit=5))
        assert trips == []
        await create(1, Quota(category="upscale", since=0, budget=budget))
        await create(2, Quota(category="upscale", since=0, server_credits=budget))
        assert trips.count("commit") == 2 and "_run" in trips
    finally:
        await store.close()
