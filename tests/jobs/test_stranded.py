"""Stranded jobs: every unfinished job has a live owner that moves it on, and its deadline
applies, even after its watcher crashed or its start raised (the tracker's sweep). Expired
follow-ups are swept too. Faults are injected once, at a chosen call, never by timing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from bot.jobs import texts
from bot.jobs.database import Database
from bot.jobs.store import FollowUp, Job, JobState, JobStore
from bot.jobs.tables import follow_ups, leases
from bot.jobs.tracker import Tracker
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.models import Task
from tests.fakes.publisher import RecordingPublisher
from tests.jobs.conftest import Rig, postgres_schema
from tests.names import JobKind

USER = 42
# Sweeps often, so that a test waits for the sweep's outcome rather than for a guessed time.
OFTEN = 0.05
# With leases, the sweep runs at each renewal: every third of this.
LEASE = 1.5


class Boom(RuntimeError):
    """A fault no code path expects (a bug, a driver error nobody foresaw)."""


@dataclass
class Process:
    tracker: Tracker
    store: JobStore
    publisher: RecordingPublisher

    async def lease_owner(self, job_id: str) -> str | None:
        async with self.store.engine.connect() as conn:
            query = sa.select(leases.c.owner).where(leases.c.name == job_id)
            return (await conn.execute(query)).scalar_one_or_none()


Started = Callable[..., Awaitable[Process]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def started(request: pytest.FixtureRequest, rig: Rig) -> AsyncIterator[Started]:
    """Starts the bot's tracker as a process does (recovery, then the keeper's turns): on the
    rig's SQLite store, or with leases on a PostgreSQL schema of its own."""
    schema = (
        postgres_schema("stranded_test")
        if request.param == "postgresql"
        else contextlib.nullcontext(None)
    )
    async with schema as engine:
        trackers: list[Tracker] = []

        async def start(**options: Any) -> Process:
            publisher = options.pop("publisher", None) or rig.publisher
            if engine is None:
                tracker = rig.tracker(publisher=publisher, sweep_seconds=OFTEN, **options)
            else:
                tracker = rig.tracker(
                    store=JobStore(Database(engine())),
                    publisher=publisher,
                    lease_seconds=LEASE,
                    **options,
                )
            trackers.append(tracker)
            await tracker.recover()
            return Process(tracker, tracker.store, publisher)

        try:
            yield start
        finally:
            # Before the schema goes: a tracker gives its leases back on closing.
            for tracker in trackers:
                await tracker.close()


async def upscale(tracker: Tracker, parent: str, index: int = 1) -> Job:
    outcome = await tracker.request_on_grid(
        JobKind.UPSCALE,
        parent_task_id=parent,
        image_index=index,
        requester_id=USER,
        guild_id=1,
        channel_id=555,
        grid_message_id=777,
    )
    return outcome.job


def record_info_raising(
    monkeypatch: pytest.MonkeyPatch, task_id: Callable[[], str | None], times: int | None
) -> list[str]:
    """record-info raises Boom for the task ``task_id()`` names, ``times`` times (None: always);
    the ids it was asked about."""
    real = MidjourneyClient.record_info
    asked: list[str] = []
    left = [times]

    async def record_info(self: MidjourneyClient, asked_id: str) -> Task:
        asked.append(asked_id)
        if asked_id == task_id() and (left[0] is None or left[0] > 0):
            if left[0] is not None:
                left[0] -= 1
            raise Boom("record-info parser bug")
        return await real(self, asked_id)

    monkeypatch.setattr(MidjourneyClient, "record_info", record_info)
    return asked


async def crashed_in_the_post(rig: Rig, tracker: Tracker) -> Job:
    """An upscale whose watcher confirms the result, then crashes in the post, and is gone."""
    job = await upscale(tracker, rig.grid())
    rig.publisher.delivery_errors.append(Boom("a bug in the post"))
    rig.sandbox.complete(job.upstream_task_id or "")
    await until(_now(lambda: not rig.publisher.delivery_errors), "the post was tried")
    await tracker.wait_idle()
    return job


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until ``check()`` holds (a state only the store shows), within a generous bound."""
    for _ in range(1000):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_crashed_watcher_is_resumed_by_the_next_sweep_not_at_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # No periodic sweep here: the test runs each one, to see what happens between two.
    tracker = rig.tracker(sweep_seconds=3600)
    job = await crashed_in_the_post(rig, tracker)
    stranded = await rig.store.get(job.id)
    assert stranded is not None and stranded.state is JobState.SUCCEEDED
    assert rig.publisher.delivered == []

    with caplog.at_level(logging.INFO, logger="bot.jobs.lifecycle.keeper"):
        await tracker.sweep()
        await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
        await tracker.sweep()
    assert [j.id for j in rig.publisher.delivered] == [job.id]
    assert rig.sandbox.count("generateUpscale") == 1
    # One line for the resumption; a sweep that finds nothing says nothing.
    assert [r.getMessage() for r in caplog.records if "stranded" in r.getMessage()] == [
        f"stranded {stranded.label} state=succeeded; resumed"
    ]


@pytest.mark.parametrize("fault", ["start", "foreign-grid check"])
async def test_a_start_that_raised_is_resumed_and_its_lease_given_back(
    started: Started, rig: Rig, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    publisher = RecordingPublisher()
    parent = rig.grid()
    if fault == "start":
        # The status line's post raises something no one expected, once.
        real_post = publisher.post_status
        raised: list[str] = []

        async def post_status(job: Job) -> int | None:
            if not raised:
                raised.append(job.id)
                raise Boom("a bug in the status line")
            return await real_post(job)

        monkeypatch.setattr(publisher, "post_status", post_status)
    else:
        # /upscale of a grid the bot never saw: the look-up of the grid raises, once.
        record_info_raising(monkeypatch, lambda: parent, times=1)
    process = await started(publisher=publisher)

    with pytest.raises(Boom):
        await upscale(process.tracker, parent)
    (job,) = await process.store.unfinished()
    assert job.state is JobState.REQUESTED

    # Nothing else happens to it: the process's own sweep takes it up and sees it through.
    await until(
        lambda: _state_is(process.store, job.id, JobState.SUBMITTED), "the job was submitted"
    )
    submitted = await process.store.get(job.id)
    assert submitted is not None
    rig.sandbox.complete(submitted.upstream_task_id or "")
    await publisher.wait_for(lambda: len(publisher.tidied) == 1)
    assert [j.id for j in publisher.delivered] == [job.id]
    assert rig.sandbox.count("generateUpscale") == 1
    assert await process.lease_owner(job.id) is None


async def test_a_stranded_job_past_its_deadline_fails_as_at_the_deadline(
    started: Started, rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream: list[str] = []
    # Every watcher of this job crashes in its first look: only the sweep can end it.
    record_info_raising(monkeypatch, lambda: upstream[0] if upstream else None, times=None)
    process = await started(deadline=1.0)
    job = await upscale(process.tracker, rig.grid())
    assert job.state is JobState.SUBMITTED and job.upstream_task_id
    upstream.append(job.upstream_task_id)

    await process.publisher.wait_for(lambda: len(process.publisher.failures) == 1, timeout=15)
    assert process.publisher.failures == [(job.id, texts.expired(JobState.SUBMITTED, 1.0))]
    failed = await process.store.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.updated_at >= failed.deadline_at
    assert await process.lease_owner(job.id) is None
    assert process.publisher.delivered == []
    assert rig.sandbox.count("generateUpscale") == 1


async def test_expired_follow_ups_are_swept(started: Started) -> None:
    process = await started()
    # Two jobs that run on (the sandbox finishes nothing here), one of them clicked so long
    # ago that its interaction has expired.
    for name, until_at in (("expired", time.time() - 1), ("alive", time.time() + 600)):
        await process.tracker.request_imagine(
            prompt=name,
            options={"speed": "fast"},
            requester_id=USER,
            guild_id=1,
            channel_id=555,
            status_message_id=None,
            follow_up=FollowUp(1, f"token-{name}", until_at),
        )

    await process.tracker.sweep()
    async with process.store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(follow_ups.c.token))).scalars().all()
    assert rows == ["token-alive"]


def _now(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def now() -> bool:
        return check()

    return now


async def _state_is(store: JobStore, job_id: str, state: JobState) -> bool:
    job = await store.get(job_id)
    return job is not None and job.state is state


async def test_a_stranded_result_past_its_deadline_gets_one_look_and_is_posted(rig: Rig) -> None:
    # Paid and confirmed, only the post was left when the watcher crashed: the sweep looks once
    # more, as a restart would, rather than failing a paid result unposted.
    tracker = rig.tracker(sweep_seconds=3600)
    job = await crashed_in_the_post(rig, tracker)
    await rig.store.update(job.id, deadline_at=time.time() - 1)
    await tracker.sweep()
    await rig.publisher.wait_for(lambda: len(rig.publisher.delivered) == 1)
    await until(lambda: _state_is(rig.store, job.id, JobState.DELIVERED), "delivered")
    assert rig.publisher.failures == []


class StuckFailurePosts(RecordingPublisher):
    """Discord slow to take a failure (a channel's rate limit, retries): until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def announce_failure(self, job: Job, reason: str, follow_up: FollowUp | None) -> None:
        await self.release.wait()
        await super().announce_failure(job, reason, follow_up)


async def test_a_sweep_never_waits_on_discord(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sweep runs in the loop that renews the leases: a failure's post awaited there would
    # let every lease of a live process run out.
    upstream: list[str] = []
    record_info_raising(monkeypatch, lambda: upstream[0] if upstream else None, times=None)
    publisher = StuckFailurePosts()
    tracker = rig.tracker(sweep_seconds=3600, publisher=publisher)
    job = await upscale(tracker, rig.grid())
    upstream.append(job.upstream_task_id or "")
    await tracker.wait_idle()  # its watcher crashed at its first look
    await rig.store.update(job.id, deadline_at=time.time() - 1)
    # Resumed once past its deadline (its watcher crashes again), then failed: neither sweep
    # waits for the failure's post, which Discord holds.
    await asyncio.wait_for(tracker.sweep(), 5)
    await tracker.wait_idle()
    await asyncio.wait_for(tracker.sweep(), 5)
    await until(
        _now(lambda: not tracker._stranded(job.id, job.callback_secret)), "the job is being failed"
    )
    publisher.release.set()
    await publisher.wait_for(lambda: len(publisher.failures) == 1)
    assert publisher.failures == [(job.id, texts.expired(JobState.SUBMITTED, 30.0))]
