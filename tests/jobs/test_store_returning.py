"""JobStore.transition and update answer with the row their UPDATE ... RETURNING wrote: the
same row a read would give, None for a move from a state the job is not in, and one winner of
two racing moves, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.jobs.database import Database
from bot.jobs.store import JobState, JobStore
from tests.jobs.conftest import postgres_schema
from tests.jobs.test_store import new_job


async def check_returned_rows(store: JobStore) -> None:
    job = await new_job(store, index=1)
    moved = await store.transition(
        job.id, (JobState.REQUESTED,), JobState.SUBMITTING, status_message_id=77
    )
    assert moved is not None and moved == await store.get(job.id)
    assert moved.status_message_id == 77
    done = await store.transition(
        job.id,
        (JobState.SUBMITTING,),
        JobState.SUCCEEDED,
        paid=True,
        result_urls=("https://x/a.png",),
        upstream_task_id="t1",
    )
    assert done == await store.get(job.id)
    assert await store.transition(job.id, (JobState.SUBMITTING,), JobState.FAILED) is None
    assert (await store.get(job.id)).state is JobState.SUCCEEDED
    updated = await store.update(job.id, result_message_id=9)
    assert updated == await store.get(job.id)
    with pytest.raises(LookupError):
        await store.update("0" * 24, result_message_id=9)


async def race(stores: list[JobStore]) -> None:
    for _ in range(30):
        job = await new_job(stores[0], index=2)
        results = await asyncio.gather(
            stores[0].transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING),
            stores[1].transition(
                job.id, (JobState.REQUESTED,), JobState.FAILED, give_back=True, error="x"
            ),
        )
        won = [r for r in results if r is not None]
        assert len(won) == 1, results
        assert won[0] == await stores[1].get(job.id)
        # Settle it so the next round's dedupe does not refuse the new job.
        await stores[0].transition(
            job.id, tuple(s for s in JobState if s is not JobState.FAILED), JobState.FAILED
        )


async def test_returning_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.sqlite3"
    store = await JobStore.open(url)
    other = await JobStore.open(url)
    try:
        await check_returned_rows(store)
        await race([store, other])
    finally:
        await store.close()
        await other.close()


async def test_returning_on_postgresql() -> None:
    async with postgres_schema("review25") as engine:
        store = JobStore(Database(engine()))
        other = JobStore(Database(engine()))
        await check_returned_rows(store)
        await race([store, other])
