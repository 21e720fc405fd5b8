"""JobStore on a real SQLite file (and, when one answers locally, on PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.jobs.admission import TooManyJobs
from bot.jobs.coordination import Coordination
from bot.jobs.database import Database, async_database_url
from bot.jobs.kinds.use import ParentUse
from bot.jobs.stats import JobStats
from bot.jobs.store import (
    DuplicateJob,
    Job,
    JobState,
    JobStore,
)
from tests.jobs.conftest import (
    POSTGRES_URL,
    RELEASE_LIVE_UPSCALE,
    postgres_admin,
    postgres_schema,
    release_sqlite,
)
from tests.names import JobKind

PARENT = "grid-task-0001"
CHANNEL = 555
USER = 42


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    store = await JobStore.open(f"sqlite:///{tmp_path}/x.sqlite3")
    try:
        yield store
    finally:
        await store.close()


async def new_job(
    store: JobStore,
    kind: JobKind = JobKind.UPSCALE,
    parent: str | None = PARENT,
    index: int | None = 0,
    **kw: Any,
) -> Job:
    if kind == JobKind.IMAGINE:
        parent, index = None, None
    return await store.create(
        kind=kind,
        requester_id=kw.pop("requester_id", USER),
        guild_id=kw.pop("guild_id", 1),
        channel_id=kw.pop("channel_id", CHANNEL),
        deadline_seconds=kw.pop("deadline_seconds", 600),
        parent_task_id=parent,
        image_index=index,
        **kw,
    )


async def fail(store: JobStore, job: Job) -> Job:
    failed = await store.transition(job.id, (job.state,), JobState.FAILED, error="boom")
    assert failed is not None
    return failed


async def walk_to_delivered(store: JobStore, job: Job) -> Job:
    steps = [
        (JobState.REQUESTED, JobState.SUBMITTING),
        (JobState.SUBMITTING, JobState.SUBMITTED),
        (JobState.SUBMITTED, JobState.SUCCEEDED),
        (JobState.SUCCEEDED, JobState.DELIVERED),
    ]
    current: Job | None = job
    for before, after in steps:
        current = await store.transition(job.id, (before,), after)
        assert current is not None and current.state is after
    assert current is not None
    return current


# -- create ---------------------------------------------------------------------------------------


async def test_create_fills_fields_and_defaults(store: JobStore) -> None:
    job = await new_job(
        store,
        index=2,
        grid_message_id=777,
        status_message_id=888,
        prompt="a red fox",
        options={"speed": "fast"},
        deadline_seconds=100,
    )
    assert job.kind == JobKind.UPSCALE
    assert job.state is JobState.REQUESTED
    assert (job.parent_task_id, job.image_index) == (PARENT, 2)
    assert (job.requester_id, job.guild_id, job.channel_id) == (USER, 1, CHANNEL)
    assert (job.grid_message_id, job.status_message_id) == (777, 888)
    assert job.prompt == "a red fox" and job.options == {"speed": "fast"}
    assert job.upstream_task_id is None and job.result_message_id is None
    assert job.error is None and job.result_urls == ()
    assert job.completed_at is None and job.delivered_at is None
    assert job.created_at == job.updated_at
    assert job.deadline_at == pytest.approx(job.created_at + 100)
    assert not job.finished
    # The id doubles as the Discord message nonce (at most 25 characters).
    assert re.fullmatch(r"[0-9a-f]{24}", job.id)
    assert len(job.id) <= 25
    # The secret goes into a URL path segment and must match the listener's pattern.
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", job.callback_secret)
    assert await store.get(job.id) == job


async def test_ids_and_secrets_are_unique(store: JobStore) -> None:
    made = [await new_job(store, JobKind.IMAGINE) for _ in range(20)]
    assert len({j.id for j in made}) == 20
    assert len({j.callback_secret for j in made}) == 20
    assert not {j.id for j in made} & {j.callback_secret for j in made}


async def test_repr_hides_the_callback_secret(store: JobStore) -> None:
    job = await new_job(store)
    assert job.callback_secret not in repr(job)
    assert job.callback_secret not in str(job)
    assert job.id in repr(job)
    assert job.callback_secret not in job.label


# -- dedupe ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_upscales_of_one_image_make_one_job(store: JobStore) -> None:
    results = await asyncio.gather(
        *(new_job(store, index=1, requester_id=n) for n in range(50)), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, Job)]
    dupes = [r for r in results if isinstance(r, DuplicateJob)]
    assert len(made) == 1, [r for r in results if not isinstance(r, Job | DuplicateJob)]
    assert len(dupes) == 49
    assert all(d.job.id == made[0].id for d in dupes)
    assert all(d.job.state is JobState.REQUESTED for d in dupes)
    live = await store.live_twin("upscale", PARENT, 1)
    assert live is not None and live.id == made[0].id
    assert len(await store.unfinished()) == 1


async def test_duplicate_carries_the_live_job(store: JobStore) -> None:
    first = await new_job(store, index=3)
    submitted = await store.transition(
        first.id, (JobState.REQUESTED,), JobState.SUBMITTED, upstream_task_id="up-123456"
    )
    assert submitted is not None
    with pytest.raises(DuplicateJob) as caught:
        await new_job(store, index=3, requester_id=99)
    assert caught.value.job == submitted
    assert first.id in str(caught.value)


async def test_a_failed_upscale_no_longer_blocks_a_new_one(store: JobStore) -> None:
    first = await new_job(store)
    await fail(store, first)
    assert await store.live_twin("upscale", PARENT, 0) is None
    second = await new_job(store)
    assert second.id != first.id
    live = await store.live_twin("upscale", PARENT, 0)
    assert live is not None and live.id == second.id
    # And once the retry fails too, a third attempt is allowed.
    await fail(store, second)
    third = await new_job(store)
    assert third.id not in (first.id, second.id)


async def test_a_delivered_upscale_still_blocks(store: JobStore) -> None:
    first = await walk_to_delivered(store, await new_job(store))
    assert first.finished
    with pytest.raises(DuplicateJob) as caught:
        await new_job(store)
    assert caught.value.job.id == first.id
    assert caught.value.job.state is JobState.DELIVERED


async def test_other_indexes_and_parents_are_independent(store: JobStore) -> None:
    made = [await new_job(store, index=i) for i in range(4)]
    made.append(await new_job(store, parent="grid-task-0002", index=0))
    assert len({j.id for j in made}) == 5
    with pytest.raises(DuplicateJob):
        await new_job(store, parent="grid-task-0002", index=0)


async def test_imagine_jobs_are_never_deduplicated(store: JobStore) -> None:
    made = await asyncio.gather(*(new_job(store, JobKind.IMAGINE, prompt="same") for _ in range(5)))
    assert len({j.id for j in made}) == 5
    assert all(j.parent_task_id is None and j.image_index is None for j in made)


async def check_variation_dedupe(store: JobStore) -> None:
    """V<n> and 🔄 of one grid: one running job each, whoever clicks; another set once done."""
    results = await asyncio.gather(
        *(new_job(store, JobKind.VARY, index=2, requester_id=n) for n in range(20)),
        *(new_job(store, JobKind.REROLL, index=None, requester_id=n) for n in range(20)),
        return_exceptions=True,
    )
    made = [r for r in results if isinstance(r, Job)]
    dupes = [r for r in results if isinstance(r, DuplicateJob)]
    assert sorted(j.kind for j in made) == [JobKind.REROLL, JobKind.VARY], results
    assert len(dupes) == 38
    vary = next(j for j in made if j.kind == JobKind.VARY)
    reroll = next(j for j in made if j.kind == JobKind.REROLL)
    assert {d.job.id for d in dupes} == {vary.id, reroll.id}
    # Other images of the grid, and an upscale of the same image, are other buttons.
    assert (await new_job(store, JobKind.VARY, index=1)).id != vary.id
    await new_job(store, index=2)
    use = await store.grid_use(PARENT, 1)
    assert use.asked == {("vary", 1), ("vary", 2), ("upscale", 2), ("reroll", None)}
    # Done (or failed), it no longer blocks: a new click makes another set, as on Midjourney.
    await walk_to_delivered(store, vary)
    again = await new_job(store, JobKind.VARY, index=2)
    assert again.id != vary.id
    live = await store.live_twin(JobKind.VARY, PARENT, 2)
    assert live is not None and live.id == again.id
    await fail(store, reroll)
    assert await store.live_twin(JobKind.REROLL, PARENT, None) is None
    assert (await new_job(store, JobKind.REROLL, index=None)).id != reroll.id
    assert images(await store.grid_use(PARENT, 1), "vary") == {1, 2}


async def test_one_running_variation_per_image_and_reroll_per_grid(store: JobStore) -> None:
    await check_variation_dedupe(store)


async def check_api_facts(first: Coordination, second: Coordination) -> None:
    assert await first.api_fact("vary_index_base") is None
    learned = await asyncio.gather(
        first.learn_api_fact("vary_index_base", "1"),
        second.learn_api_fact("vary_index_base", "0"),
    )
    assert learned[0] == learned[1] and learned[0] in ("0", "1")
    # The first value learned stays: a later answer does not overwrite it.
    assert await first.learn_api_fact("vary_index_base", "2") == learned[0]
    assert await second.api_fact("vary_index_base") == learned[0]


async def test_api_facts_keep_the_first_value_learned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/facts.sqlite3"
    first, second = await JobStore.open(url), await JobStore.open(url)
    try:
        await check_api_facts(Coordination(first.database), Coordination(second.database))
    finally:
        await first.close()
        await second.close()
    reopened = await JobStore.open(url)
    try:
        assert await Coordination(reopened.database).api_fact("vary_index_base") in ("0", "1")
    finally:
        await reopened.close()


# -- transitions and updates ----------------------------------------------------------------------


async def test_transition_sets_state_and_fields(store: JobStore) -> None:
    job = await new_job(store)
    moved = await store.transition(
        job.id,
        (JobState.REQUESTED, JobState.SUBMITTING),
        JobState.SUCCEEDED,
        upstream_task_id="up-abcdef",
        result_urls=["https://cdn.example/a.png", "https://cdn.example/b.png"],
        completed_at=123.0,
    )
    assert moved is not None
    assert moved.state is JobState.SUCCEEDED
    assert moved.upstream_task_id == "up-abcdef"
    assert moved.result_urls == ("https://cdn.example/a.png", "https://cdn.example/b.png")
    assert moved.completed_at == 123.0
    assert moved.updated_at >= job.updated_at
    assert await store.get(job.id) == moved


async def test_transition_from_the_wrong_state_changes_nothing(store: JobStore) -> None:
    job = await new_job(store)
    result = await store.transition(
        job.id, (JobState.SUBMITTED,), JobState.SUCCEEDED, upstream_task_id="up-zzzzzz"
    )
    assert result is None
    assert await store.get(job.id) == job
    assert await store.transition("0" * 24, (JobState.REQUESTED,), JobState.FAILED) is None


async def test_concurrent_transitions_from_one_state_have_one_winner(store: JobStore) -> None:
    for _ in range(5):
        job = await new_job(store, JobKind.IMAGINE)
        results = await asyncio.gather(
            store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING, error="a"),
            store.transition(job.id, (JobState.REQUESTED,), JobState.FAILED, error="b"),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        stored = await store.get(job.id)
        assert stored == winners[0]


async def test_update_changes_fields_but_refuses_state(store: JobStore) -> None:
    job = await new_job(store)
    updated = await store.update(job.id, status_message_id=4242, result_message_id=4343)
    assert updated.status_message_id == 4242 and updated.result_message_id == 4343
    assert updated.state is JobState.REQUESTED
    with pytest.raises(ValueError, match="transition"):
        await store.update(job.id, state=JobState.DELIVERED)
    with pytest.raises(ValueError):
        await store.update(job.id, state="delivered", status_message_id=1)
    assert await store.get(job.id) == updated


# -- look-ups -------------------------------------------------------------------------------------


async def test_by_secret_and_by_upstream(store: JobStore) -> None:
    job = await new_job(store)
    other = await new_job(store, index=1)
    assert await store.by_secret(job.callback_secret) == job
    assert await store.by_secret(secrets.token_urlsafe(24)) is None
    assert await store.by_upstream("up-000001") is None
    submitted = await store.transition(
        job.id, (JobState.REQUESTED,), JobState.SUBMITTED, upstream_task_id="up-000001"
    )
    assert await store.by_upstream("up-000001") == submitted
    assert (await store.by_secret(other.callback_secret)) == other


def images(use: ParentUse, kind: str) -> frozenset[int | None]:
    """The images of a parent that jobs of ``kind`` were asked of."""
    return frozenset(index for name, index in use.asked if name == kind)


async def test_live_upscale_and_grid_use(store: JobStore) -> None:
    assert await store.grid_use(PARENT, 1) == ParentUse()
    a = await new_job(store, index=0)
    b = await new_job(store, index=1)
    c = await new_job(store, index=2)
    await new_job(store, parent="grid-task-0002", index=3)
    await walk_to_delivered(store, b)
    await fail(store, c)
    assert images(await store.grid_use(PARENT, 1), "upscale") == {0, 1}
    assert images(await store.grid_use("grid-task-0002", 1), "upscale") == {3}
    # Another server's use of the same grid is not shown here, nor this one's there.
    assert images(await store.grid_use("grid-task-0002", 2), "upscale") == frozenset()
    live_a = await store.live_twin("upscale", PARENT, 0)
    assert live_a is not None and live_a.id == a.id
    live_b = await store.live_twin("upscale", PARENT, 1)
    assert live_b is not None and live_b.state is JobState.DELIVERED
    assert await store.live_twin("upscale", PARENT, 2) is None
    assert await store.live_twin("upscale", PARENT, 3) is None


async def test_unfinished_excludes_final_jobs_in_creation_order(store: JobStore) -> None:
    made = []
    for i in range(6):
        made.append(await new_job(store, index=i % 4, parent=f"grid-{i}"))
        await asyncio.sleep(0.002)  # distinct created_at values
    await walk_to_delivered(store, made[1])
    await fail(store, made[3])
    await store.transition(made[4].id, (JobState.REQUESTED,), JobState.SUBMITTING)
    await store.transition(made[5].id, (JobState.REQUESTED,), JobState.SUBMITTED)
    unfinished = await store.unfinished()
    assert [j.id for j in unfinished] == [made[i].id for i in (0, 2, 4, 5)]
    assert [j.state for j in unfinished] == [
        JobState.REQUESTED,
        JobState.REQUESTED,
        JobState.SUBMITTING,
        JobState.SUBMITTED,
    ]


async def test_reopening_the_file_keeps_the_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/jobs.sqlite3"
    first = await JobStore.open(url)
    try:
        job = await new_job(first, prompt="kept")
        done = await walk_to_delivered(first, await new_job(first, index=1))
    finally:
        await first.close()
    second = await JobStore.open(url)
    try:
        assert await second.get(job.id) == job
        assert await second.by_secret(job.callback_secret) == job
        assert [j.id for j in await second.unfinished()] == [job.id]
        # Dedupe survives the restart too.
        with pytest.raises(DuplicateJob) as caught:
            await new_job(second, index=1)
        assert caught.value.job == done
        await second.ping()
    finally:
        await second.close()


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holding the SQLite file's write lock meanwhile."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


async def test_a_write_waiting_for_the_sqlite_lock_holds_up_neither_the_loop_nor_reads(
    store: JobStore, tmp_path: Path
) -> None:
    """A store write that finds another connection's lock waits in an asyncio.sleep, never
    inside SQLite on the loop (bot.jobs.loop_sqlite): the loop, and reads, stay free; it lands
    once the lock goes."""
    job = await new_job(store)
    with write_lock_held(tmp_path / "x.sqlite3"):
        moving = asyncio.create_task(
            store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
        )
        await asyncio.sleep(0.2)
        assert not moving.done()
        assert (await store.get(job.id)) == job
        assert await store.grid_use(PARENT, 1) == ParentUse(frozenset({("upscale", 0)}))
    moved = await moving
    assert moved is not None and moved.state is JobState.SUBMITTING
    assert await store.get(job.id) == moved


async def test_a_write_cancelled_while_it_waits_for_the_lock_is_rolled_back(
    store: JobStore, tmp_path: Path
) -> None:
    """As on the async engine: a caller that gave up never finds its write done later (a job
    claimed for sending by a submitter cancelled at shutdown would be sent by nobody)."""
    job, other = await new_job(store), await new_job(store, index=1)
    with write_lock_held(tmp_path / "x.sqlite3"):
        moving = asyncio.create_task(
            store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
        )
        await asyncio.sleep(0.2)
        moving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await moving
    # Nothing of the cancelled write is left to land: the next write finds the job as it was.
    assert await store.update(other.id, status_message_id=5) is not None
    assert (await store.get(job.id)) == job


async def test_a_row_that_cannot_be_read_leaves_later_reads_current(store: JobStore) -> None:
    """A failed read must not leave its statement open on the loop's connection, which would
    keep that connection on the file as it was (a committed move unseen by every later read)."""
    broken, job = await new_job(store), await new_job(store, index=1)

    def corrupt(conn: sa.Connection) -> None:
        conn.execute(sa.text("UPDATE jobs SET options = '{' WHERE id = :id"), {"id": broken.id})

    await store.database.write(corrupt)
    # Each failure kept, as a failed task keeps its exception and the frames it went through.
    with pytest.raises(ValueError) as scanned:
        await store.unfinished()
    with pytest.raises(ValueError) as read:
        await store.get(broken.id)
    moved = await store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
    assert moved is not None
    assert await store.get(job.id) == moved
    assert [j.id for j in await store.unfinished([job.id])] == [job.id]
    assert scanned.value is not None and read.value is not None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/bot.sqlite3", "sqlite+aiosqlite:///data/bot.sqlite3"),
        ("sqlite:////abs/path.db", "sqlite+aiosqlite:////abs/path.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_async_database_url(url: str, expected: str) -> None:
    assert async_database_url(url) == expected


async def check_per_requester_limit(store: JobStore) -> None:
    limited = await asyncio.gather(
        *(new_job(store, parent=f"limit-{n}", requester_id=7, max_unfinished=3) for n in range(8)),
        return_exceptions=True,
    )
    made = [r for r in limited if isinstance(r, Job)]
    assert len(made) == 3, limited
    assert all(isinstance(r, TooManyJobs) and r.limit == 3 for r in limited if r not in made)
    # Finished jobs no longer count, other requesters never did.
    await walk_to_delivered(store, made[0])
    await fail(store, made[1])
    assert (await new_job(store, parent="limit-x", requester_id=7, max_unfinished=3)).id
    assert (await new_job(store, parent="limit-y", requester_id=7, max_unfinished=3)).id
    with pytest.raises(TooManyJobs):
        await new_job(store, parent="limit-z", requester_id=7, max_unfinished=3)
    other = await new_job(store, parent="limit-z", requester_id=8, max_unfinished=3)
    assert other.requester_id == 8 and other.guild_id == 1 and other.options == {}


async def test_per_requester_limit_of_unfinished_jobs(store: JobStore) -> None:
    await check_per_requester_limit(store)


# -- notices: the low-credit warning's once-an-hour budget -------------------------------------

HOUR = 3600.0


async def check_notice_claims(store: Coordination, replica: Coordination) -> None:
    """``replica`` is another process' connection to the same database."""
    t = 1_700_000_000.0
    assert await store.claim_notice("low", now=t, every=HOUR)
    assert not await replica.claim_notice("low", now=t + 1, every=HOUR)
    assert not await store.claim_notice("low", now=t + HOUR - 1, every=HOUR)
    assert await store.claim_notice("another", now=t + 1, every=HOUR)
    assert await replica.claim_notice("low", now=t + HOUR, every=HOUR)
    # Giving back a claim that is no longer the latest changes nothing.
    await store.release_notice("low", claimed_at=t)
    assert not await store.claim_notice("low", now=t + HOUR + 1, every=HOUR)
    # Given back (its post failed), the next claim succeeds at once.
    await replica.release_notice("low", claimed_at=t + HOUR)
    assert await store.claim_notice("low", now=t + HOUR + 1, every=HOUR)

    for now in (t, t + HOUR):
        race = await asyncio.gather(
            *(
                s.claim_notice("race", now=now, every=HOUR)
                for _ in range(10)
                for s in (store, replica)
            )
        )
        assert sum(race) == 1, race


async def test_notice_claims_once_an_hour_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/notices.sqlite3"
    store, replica = await JobStore.open(url), await JobStore.open(url)
    try:
        await check_notice_claims(Coordination(store.database), Coordination(replica.database))
    finally:
        await store.close()
        await replica.close()


async def test_a_database_from_before_notices_gains_the_table(tmp_path: Path) -> None:
    url = release_sqlite(tmp_path / "old.sqlite3")
    with sqlite3.connect(tmp_path / "old.sqlite3") as conn:
        conn.execute("DROP TABLE notices")
    store = await JobStore.open(url)
    try:
        assert await store.get(RELEASE_LIVE_UPSCALE) is not None
        assert await Coordination(store.database).claim_notice("low", now=time.time(), every=HOUR)
    finally:
        await store.close()


async def test_a_database_from_before_variations_gains_their_dedupe(tmp_path: Path) -> None:
    url = release_sqlite(tmp_path / "old.sqlite3")
    with sqlite3.connect(tmp_path / "old.sqlite3") as conn:
        conn.execute("DROP INDEX uq_running_vary")
        conn.execute("DROP INDEX uq_running_reroll")
        conn.execute("DROP TABLE api_facts")
    store = await JobStore.open(url)
    try:
        assert await store.get(RELEASE_LIVE_UPSCALE) is not None
        await new_job(store, JobKind.VARY, index=0)
        with pytest.raises(DuplicateJob):
            await new_job(store, JobKind.VARY, index=0)
        assert await Coordination(store.database).learn_api_fact("vary_index_base", "0") == "0"
    finally:
        await store.close()


# -- PostgreSQL (only where one answers) ----------------------------------------------------------


async def test_dedupe_and_transitions_on_postgresql() -> None:
    async with postgres_schema("jobstore_test") as engine:
        store = JobStore(Database(engine()))

        results = await asyncio.gather(
            *(new_job(store, index=1, requester_id=n) for n in range(50)), return_exceptions=True
        )
        made = [r for r in results if isinstance(r, Job)]
        dupes = [r for r in results if isinstance(r, DuplicateJob)]
        assert len(made) == 1 and len(dupes) == 49, results
        assert all(d.job.id == made[0].id for d in dupes)

        await fail(store, made[0])
        retry = await new_job(store, index=1)
        assert retry.id != made[0].id
        await walk_to_delivered(store, retry)
        with pytest.raises(DuplicateJob):
            await new_job(store, index=1)
        other = await new_job(store, index=2)
        assert images(await store.grid_use(PARENT, 1), "upscale") == {1, 2}

        assert await store.transition(other.id, (JobState.SUBMITTED,), JobState.FAILED) is None
        assert await store.get(other.id) == other
        race = await asyncio.gather(
            *(
                store.transition(other.id, (JobState.REQUESTED,), JobState.SUBMITTING)
                for _ in range(10)
            )
        )
        assert sum(r is not None for r in race) == 1
        stored = await store.get(other.id)
        assert stored is not None and stored.state is JobState.SUBMITTING
        assert [j.id for j in await store.unfinished()] == [other.id]
        await check_per_requester_limit(store)
        await check_notice_claims(Coordination(store.database), Coordination(Database(engine())))
        await check_api_facts(Coordination(store.database), Coordination(Database(engine())))


async def test_variation_dedupe_on_postgresql() -> None:
    async with postgres_schema("jobstore_test") as engine:
        await check_variation_dedupe(JobStore(Database(engine())))


async def test_states_since_and_recent_failures(store: JobStore) -> None:
    old = await new_job(store, parent="old-grid")
    await store.update(old.id, created_at=time.time() - 3 * 24 * 3600)
    running = await new_job(store, parent="g1")
    first = await fail(store, await new_job(store, parent="g2"))
    second = await fail(store, await new_job(store, parent="g3"))
    counts = await JobStats(store.database).states_since(time.time() - 24 * 3600)
    assert counts == {JobState.REQUESTED: 1, JobState.FAILED: 2}
    assert running.state is JobState.REQUESTED
    assert [j.id for j in await JobStats(store.database).recent_failures(5)] == [
        second.id,
        first.id,
    ]
    assert [j.id for j in await JobStats(store.database).recent_failures(1)] == [second.id]


async def test_processes_starting_together_on_a_fresh_postgresql_database_all_open() -> None:
    """Each creates the schema; without taking turns all but one failed on PostgreSQL's
    catalogue (pg_type_typname_nsp_index)."""
    admin = await postgres_admin()
    name = f"schema_race_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        for _ in range(3):
            url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
            opened = await asyncio.gather(
                *(JobStore.open(url) for _ in range(4)), return_exceptions=True
            )
            failures = [o for o in opened if not isinstance(o, JobStore)]
            for store in opened:
                if isinstance(store, JobStore):
                    await store.close()
            assert failures == []
        # And the schema they made works.
        store = await JobStore.open(url)
        try:
            await new_job(store, JobKind.VARY, index=0)
            with pytest.raises(DuplicateJob):
                await new_job(store, JobKind.VARY, index=0)
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
