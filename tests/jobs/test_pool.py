"""The writes that must not wait (a paid task's id) never wait behind a storm of requests for a
pooled connection, on PostgreSQL: admissions queued on the budget's lock, submissions queued on
the pace's lock, hold a few connections of a process's pool, never all of them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bot.jobs.admission import Budget, Quota
from bot.jobs.database import Database
from bot.jobs.pace import PACE_LOCK, SharedPace
from bot.jobs.store import JobStore
from bot.jobs.throttle import SubmitThrottle
from tests.jobs.conftest import postgres_admin, postgres_schema
from tests.names import JobKind

# More than a pool holds (5 and 10 overflow): before, every one of them held a connection.
STORM = 40
# The budget's advisory lock key (bot.jobs.admission).
BUDGET_LOCK = 1


async def waiting_on_a_lock(admin: Any) -> None:
    """Until the storm waits on the lock held (then a little more for the rest of it)."""
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    for _ in range(1000):
        if await admin.fetchval(query):
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("nothing waits on the lock")


async def a_job(store: JobStore, n: int, **kw: object) -> str:
    job = await store.create(
        kind=JobKind.UPSCALE,
        parent_task_id=f"grid-{n}",
        image_index=0,
        requester_id=100 + n,
        guild_id=1,
        channel_id=2,
        deadline_seconds=60,
        **kw,  # type: ignore[arg-type]
    )
    return job.id


async def test_a_write_after_payment_does_not_wait_behind_admissions_on_the_budgets_lock() -> None:
    async with postgres_schema("pool_test") as engine:
        store = JobStore(Database(engine()))
        paid = await a_job(store, 0)
        quota = Quota(
            category="upscale",
            since=time.time() - 3600,
            budget=Budget("2026-12-07", 10**6, generation_cost=8, upscale_cost=2, video_cost=16),
        )
        admin = await postgres_admin()
        try:
            await admin.execute("SELECT pg_advisory_lock($1)", BUDGET_LOCK)
            storm = [asyncio.create_task(a_job(store, n, quota=quota)) for n in range(1, STORM)]
            await waiting_on_a_lock(admin)
            # The lock is still held: this write can only finish on a connection left free.
            await asyncio.wait_for(store.update(paid, upstream_task_id="task-1"), 10)
            await admin.execute("SELECT pg_advisory_unlock($1)", BUDGET_LOCK)
            assert len(await asyncio.gather(*storm)) == STORM - 1
        finally:
            await admin.close()


async def test_a_write_after_payment_does_not_wait_behind_submissions_on_the_paces_lock() -> None:
    async with postgres_schema("pool_test") as engine:
        made = engine()
        store = JobStore(Database(made))
        paid = await a_job(store, 0)
        pace = SharedPace(
            made, SubmitThrottle(10_000, 10.0, max_waiting=10_000), 10_000, 10.0, owner="p" * 16
        )
        admin = await postgres_admin()
        try:
            await admin.execute("SELECT pg_advisory_lock($1)", PACE_LOCK)
            storm = [asyncio.create_task(pace.acquire()) for _ in range(STORM)]
            await waiting_on_a_lock(admin)
            await asyncio.wait_for(store.update(paid, upstream_task_id="task-1"), 10)
            await admin.execute("SELECT pg_advisory_unlock($1)", PACE_LOCK)
            for turn in await asyncio.gather(*storm):
                await turn.done()
        finally:
            await admin.close()
