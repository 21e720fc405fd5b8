"""The vendor may not know a task for a while after taking it: a 404 of record-info fails a job
only once that grace has passed since the API took the request, however long the job waited
for its turn before. The store is real (SQLite and PostgreSQL), the API is the sandbox; only
the tracker's and the store's clocks are moved."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

import bot.jobs.lifecycle.keeper
import bot.jobs.lifecycle.submitter
import bot.jobs.lifecycle.watcher
import bot.jobs.store
from bot.jobs.admission import Quota
from bot.jobs.database import Database
from bot.jobs.store import Job, JobState, JobStore
from tests.jobs.conftest import Rig, postgres_schema
from tests.jobs.test_tracker import USER
from tests.names import JobKind


class Clock:
    """The wall clock, moved on by the test: a queue's wait without waiting."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    moved = SimpleNamespace(time=made, monotonic=time.monotonic)
    for module in (
        bot.jobs.lifecycle.submitter,
        bot.jobs.lifecycle.watcher,
        bot.jobs.lifecycle.keeper,
    ):
        monkeypatch.setattr(module, "time", moved)
    monkeypatch.setattr(bot.jobs.store, "time", moved)
    return made


async def state_of(store: JobStore, job_id: str) -> JobState:
    job = await store.get(job_id)
    assert job is not None
    return job.state


async def counted_click(rig: Rig, store: JobStore, clock: Clock, index: int) -> Job:
    """A click on a grid as stored and counted, not sent yet."""
    return await store.create(
        kind=JobKind.UPSCALE,
        parent_task_id=rig.grid(),
        image_index=index,
        requester_id=USER,
        guild_id=1,
        channel_id=555,
        deadline_seconds=3600,
        callback_secret=rig.callback_secrets.new(),
        quota=Quota(category="upscale", since=clock() - 3600),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, rig: Rig) -> AsyncIterator[JobStore]:
    if request.param == "sqlite":
        yield rig.store
    else:
        async with postgres_schema("grace_test") as engine:
            yield JobStore(Database(engine()))


async def test_a_404_for_a_task_just_taken_after_minutes_in_the_queue_is_waited_out(
    rig: Rig, store: JobStore, clock: Clock
) -> None:
    # Stored and counted, then five minutes in a backlog before its turn (a low pace, 429s,
    # a restart with many jobs to take up).
    job = await counted_click(rig, store, clock, 1)
    clock.ahead += 300
    # The vendor does not know the brand-new task at the first look.
    rig.sandbox.fail_next("record-info", 404)
    tracker = rig.tracker(callbacks=False, deadline=3600, store=store)
    assert await tracker.recover() == 1
    await rig.sandbox.wait_for_call("record-info", n=2)
    assert await state_of(store, job.id) is JobState.SUBMITTED
    submitted = await store.get(job.id)
    assert submitted is not None and submitted.upstream_task_id is not None
    rig.sandbox.complete(submitted.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.delivered) == 1)
    assert rig.publisher.failures == []
    assert rig.sandbox.count("generateUpscale") == 1
    await tracker.wait_idle()
    assert await state_of(store, job.id) is JobState.DELIVERED


async def test_a_404_long_after_the_api_took_the_request_still_fails_the_job(
    rig: Rig, store: JobStore, clock: Clock
) -> None:
    job = await counted_click(rig, store, clock, 2)
    await store.transition(
        job.id, (JobState.REQUESTED,), JobState.SUBMITTED, paid=True, upstream_task_id="gone"
    )
    # Taken three minutes ago, and the vendor still does not know it.
    clock.ahead += 180
    tracker = rig.tracker(callbacks=False, deadline=3600, store=store)
    await tracker.recover()
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    await tracker.wait_idle()
    assert await state_of(store, job.id) is JobState.FAILED
