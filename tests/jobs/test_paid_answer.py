"""Once the API has answered a paid call, its task id is never lost: logged at once, and its
write tried again while the store is away (SQLite held locked, PostgreSQL cut off behind a
proxy) for longer than the store's own timeouts, until it is back."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.jobs.database import Database, async_database_url
from bot.jobs.store import JobState, JobStore
from bot.jobs.tracker import Tracker
from bot.jobs.types import Outcome
from bot.midjourney.sandbox import Endpoint
from tests.fakes.cut_proxy import CutProxy
from tests.jobs.conftest import POSTGRES_URL, Rig, postgres_schema
from tests.names import JobKind

# The store's own wait for a lock, made short so that an outage outlasts it many times over
# without the test waiting its production length (30 s).
BUSY_SECONDS = 0.2
# Failed writes seen before the store comes back: the outage outlasts the store's timeout and
# the tracker's first pauses.
FAILED_WRITES = 3
ENDPOINT: dict[JobKind, Endpoint] = {
    JobKind.UPSCALE: "generateUpscale",
    JobKind.VARY: "generateVary",
}


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never came: {what}")
        await asyncio.sleep(0.01)


def messages(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


async def click(tracker: Tracker, kind: JobKind, grid: str) -> Outcome:
    return await tracker.request_on_grid(
        kind,
        parent_task_id=grid,
        image_index=0,
        requester_id=42,
        guild_id=1,
        channel_id=555,
        grid_message_id=777,
    )


@contextlib.asynccontextmanager
async def paid_then_store_away(
    rig: Rig,
    tracker: Tracker,
    kind: JobKind,
    caplog: pytest.LogCaptureFixture,
    store_away: Callable[[], object],
) -> AsyncIterator[tuple[asyncio.Task[Outcome], str]]:
    """A click whose paid call is answered right after ``store_away()`` made the store
    unusable; yields (the click, the paid task's id) once the tracker failed to store it
    FAILED_WRITES times; the block brings the store back."""
    caplog.set_level(logging.INFO, logger="bot.jobs")
    hold = rig.sandbox.hold(ENDPOINT[kind])
    request = asyncio.create_task(click(tracker, kind, rig.grid()))
    await rig.sandbox.wait_held(hold)
    store_away()
    hold.release()
    await until(
        lambda: len(messages(caplog, "could not store the paid task")) >= FAILED_WRITES,
        f"{FAILED_WRITES} failed writes of the task id",
    )
    task_id = rig.sandbox.tasks()[-1].task_id
    # Logged at once, before any write: the only trace of the paid task while the store is away.
    lines = [r.getMessage() for r in caplog.records]
    answered = [i for i, line in enumerate(lines) if line.startswith("paid call answered")]
    first_failure = next(i for i, line in enumerate(lines) if "could not store the paid" in line)
    assert len(answered) == 1 and answered[0] < first_failure
    assert f"task={task_id}" in lines[answered[0]]
    yield request, task_id


async def posted_once(
    rig: Rig, tracker: Tracker, store: JobStore, kind: JobKind, task_id: str
) -> None:
    await rig.publisher.wait_for(lambda: len(rig.publisher.delivered) == 1, timeout=15)
    await tracker.wait_idle()
    job = await store.get(rig.publisher.delivered[0].id)
    assert job is not None and job.state is JobState.DELIVERED
    assert job.upstream_task_id == task_id
    assert len(rig.publisher.delivered) == 1 and rig.publisher.failures == []
    assert rig.sandbox.count(ENDPOINT[kind]) == 1


@pytest.mark.parametrize(
    ("kind", "callbacks"),
    [(JobKind.UPSCALE, True), (JobKind.UPSCALE, False), (JobKind.VARY, False)],
    ids=["callbacks", "polling", "polling, V1 learning the numbering"],
)
async def test_a_paid_task_outlives_a_locked_sqlite_store(
    rig: Rig, caplog: pytest.LogCaptureFixture, kind: JobKind, callbacks: bool
) -> None:
    store = await JobStore.open(rig.database_url, sqlite_busy_seconds=BUSY_SECONDS)
    locker = sqlite3.connect(rig.database_url.split(":///", 1)[1], isolation_level=None)
    try:
        tracker = rig.tracker(store=store, callbacks=callbacks)
        # SQLite's write lock taken by another connection, as another process would.
        away = functools.partial(locker.execute, "BEGIN EXCLUSIVE")
        async with paid_then_store_away(rig, tracker, kind, caplog, away) as (request, task_id):
            # Done while the store is still locked: a callback meanwhile is not stored either.
            rig.sandbox.complete(task_id)
            locker.execute("ROLLBACK")
        outcome = await request
        assert outcome.job.upstream_task_id == task_id
        await posted_once(rig, tracker, store, kind, task_id)
        if kind == JobKind.VARY:
            # Learned once the task id was kept, not before.
            assert await tracker.vary_index.learned() == 0
    finally:
        locker.close()
        await store.close()


@pytest.mark.parametrize("callbacks", [True, False], ids=["callbacks", "polling"])
async def test_a_paid_task_outlives_postgresql_cut_off(
    rig: Rig, caplog: pytest.LogCaptureFixture, callbacks: bool
) -> None:
    async with postgres_schema("paid_answer") as make:
        async with make().connect() as conn:
            schema = (await conn.execute(sa.text("SELECT current_schema()"))).scalar_one()
        server = make_url(POSTGRES_URL)
        proxy = await CutProxy(server.host or "127.0.0.1", server.port or 5432).start()
        url = make_url(async_database_url(POSTGRES_URL)).set(host="127.0.0.1", port=proxy.port)
        store = JobStore(
            Database(
                create_async_engine(
                    url,
                    connect_args={"server_settings": {"search_path": schema}},
                    hide_parameters=True,
                    pool_pre_ping=True,
                )
            )
        )
        # A lease that outlives the outage: the job stays this process's.
        tracker = rig.tracker(store=store, callbacks=callbacks, lease_seconds=30.0)
        try:
            await tracker.recover()
            kind = JobKind.UPSCALE
            async with paid_then_store_away(rig, tracker, kind, caplog, proxy.cut) as (
                request,
                task_id,
            ):
                rig.sandbox.complete(task_id)
                proxy.restore()
            outcome = await request
            assert outcome.job.upstream_task_id == task_id
            await posted_once(rig, tracker, store, kind, task_id)
        finally:
            await tracker.close()
            await store.close()
            await proxy.close()
