"""Daily allowances and the credit budget in the store, on a SQLite file and on the local
PostgreSQL: storms of concurrent requests, from one store or from several sharing a database as
processes would, never pass a limit by even one; a dedupe or a refusal costs nothing; a failure
is given back; the credit ledger adds readings up once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.jobs.admission import Budget, OverQuota, Quota, TooManyJobs, admitted_insert
from bot.jobs.allowances import Allowance, resolve
from bot.jobs.database import Database
from bot.jobs.ledger import KEEP, LimitRow
from bot.jobs.store import DuplicateJob, Job, JobState, JobStore
from bot.jobs.tables import UNLIMITED_ROW, allowance_uses
from tests.jobs.conftest import postgres_schema, release_sqlite
from tests.names import JobKind

GUILD, OTHER_GUILD = 1000, 2000
DAY = "2026-12-06"
# What a job of each cost category is taken to cost before readings (Budget's fields).
COSTS = {"generation_cost": 8, "upscale_cost": 2, "video_cost": 16}


async def _sqlite(tmp_path: Path, n: int) -> AsyncIterator[list[JobStore]]:
    url = f"sqlite:///{tmp_path}/spending.sqlite3"
    stores = [await JobStore.open(url) for _ in range(n)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def _postgres(n: int) -> AsyncIterator[list[JobStore]]:
    # One engine per store: separate connection pools, as separate processes would have.
    async with postgres_schema("spending_test") as engine:
        yield [JobStore(Database(engine())) for _ in range(n)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[JobStore]]:
    """Three stores on one database: three processes' worth of connections."""
    source = _sqlite(tmp_path, 3) if request.param == "sqlite" else _postgres(3)
    async for made in source:
        yield made


def quota(category: str = "upscale", **limits: Any) -> Quota:
    return Quota(category=category, since=time.time() - 3600, **limits)


async def upscale(
    store: JobStore, n: int, *, user: int = 1, guild: int | None = GUILD, **kw: Any
) -> Job:
    return await store.create(
        kind=JobKind.UPSCALE,
        parent_task_id=f"grid-{n // 4}",
        image_index=n % 4,
        requester_id=user,
        guild_id=guild,
        channel_id=5,
        deadline_seconds=60,
        **kw,
    )


async def generate(store: JobStore, *, user: int = 1, **kw: Any) -> Job:
    return await store.create(
        kind=JobKind.IMAGINE,
        requester_id=user,
        guild_id=GUILD,
        channel_id=5,
        deadline_seconds=60,
        prompt="p",
        **kw,
    )


async def uses(store: JobStore) -> int:
    async with store.engine.connect() as conn:
        return int(
            (
                await conn.execute(sa.select(sa.func.count()).select_from(allowance_uses))
            ).scalar_one()
        )


def split(results: list[Any]) -> tuple[list[Job], list[BaseException]]:
    made = [r for r in results if isinstance(r, Job)]
    others = [r for r in results if not isinstance(r, Job)]
    return made, others


async def test_a_storm_of_one_member_never_passes_the_allowance(stores: list[JobStore]) -> None:
    limit = quota(member_limit=40)
    results = await asyncio.gather(
        *(upscale(stores[n % 3], n, quota=limit) for n in range(60)), return_exceptions=True
    )
    made, refused = split(results)
    assert len(made) == 40, refused[:3]
    assert len(refused) == 20
    assert all(isinstance(r, OverQuota) and (r.which, r.limit) == ("member", 40) for r in refused)
    assert await uses(stores[0]) == 40


async def test_a_storm_of_a_whole_server_never_passes_its_limit(stores: list[JobStore]) -> None:
    limit = quota(server_limit=25)
    results = await asyncio.gather(
        *(upscale(stores[n % 3], n, user=100 + n, quota=limit) for n in range(30)),
        return_exceptions=True,
    )
    made, refused = split(results)
    assert len(made) == 25
    assert all(isinstance(r, OverQuota) and r.which == "server" for r in refused)
    # Another server has its own day.
    assert await upscale(stores[0], 99, guild=OTHER_GUILD, quota=limit)


async def test_a_storm_never_passes_a_servers_credits(stores: list[JobStore]) -> None:
    # 2 per upscale: 12 of the 30 requests fit in the server's 24 credits, whoever asks.
    credits = Budget(DAY, 24, **COSTS)
    limit = quota(server_credits=credits)
    results = await asyncio.gather(
        *(upscale(stores[n % 3], n, user=100 + n, quota=limit) for n in range(30)),
        return_exceptions=True,
    )
    made, refused = split(results)
    assert len(made) == 12, refused[:3]
    assert all(
        isinstance(r, OverQuota) and (r.which, r.limit) == ("server_credits", 24) for r in refused
    )
    # A generation no longer fits either; another server has its own credits.
    with pytest.raises(OverQuota):
        await generate(stores[0], quota=quota("generation", server_credits=credits))
    assert await upscale(stores[0], 99, guild=OTHER_GUILD, quota=limit)


async def test_a_storm_never_passes_the_credit_budget(stores: list[JobStore]) -> None:
    # 8 per generation, 2 per upscale until readings say otherwise: 5 generations fit in 40.
    budget = Budget(DAY, 40, **COSTS)
    limit = quota("generation", budget=budget)
    results = await asyncio.gather(
        *(generate(stores[n % 3], user=n, quota=limit) for n in range(12)),
        return_exceptions=True,
    )
    made, refused = split(results)
    assert len(made) == 5
    assert all(isinstance(r, OverQuota) and (r.which, r.limit) == ("budget", 40) for r in refused)


async def test_one_statement_per_shape_takes_each_requests_own_limits(
    stores: list[JobStore],
) -> None:
    """The admission's INSERT is built once per shape of checks (built per click it cost about
    30 ms of CPU with a budget): every value is bound, none kept from the request that built
    it."""
    store = stores[0]
    built = admitted_insert.cache_info().misses

    def limits(credits: int, members: int, server: int) -> Quota:
        return quota(
            member_limit=members,
            server_limit=server,
            budget=Budget(DAY, credits, **COSTS),
            server_credits=Budget(DAY, credits, **COSTS),
        )

    assert await upscale(store, 0, user=1, quota=limits(100, 5, 5))
    shape_built = admitted_insert.cache_info().misses
    assert shape_built <= built + 1
    # Each refusal comes from this request's own numbers, on the statement already built.
    with pytest.raises(OverQuota) as budget:
        await upscale(store, 1, user=2, quota=limits(3, 5, 5))
    assert (budget.value.which, budget.value.limit) == ("budget", 3)
    with pytest.raises(OverQuota) as member:
        await upscale(store, 2, user=1, quota=limits(100, 1, 5))
    assert (member.value.which, member.value.limit) == ("member", 1)
    with pytest.raises(OverQuota) as server:
        await upscale(store, 3, user=3, quota=limits(100, 5, 1))
    assert (server.value.which, server.value.limit) == ("server", 1)
    assert await upscale(store, 4, user=3, quota=limits(100, 5, 5))
    with pytest.raises(OverQuota) as everywhere:
        # The budget is the whole day's, every server's: 4 credits are taken already.
        await upscale(store, 5, user=4, guild=OTHER_GUILD, quota=limits(2, 5, 5))
    assert everywhere.value.which == "budget"
    assert admitted_insert.cache_info().misses == shape_built


async def test_counts_are_per_kind_per_place_and_per_day(stores: list[JobStore]) -> None:
    store = stores[0]
    await generate(store, quota=quota("generation"))
    await upscale(store, 0, guild=None, quota=quota())
    # Yesterday's upscale, stored with a day that has since turned.
    old = await upscale(store, 1, quota=quota())
    async with store.engine.begin() as conn:
        await conn.execute(
            allowance_uses.update()
            .where(allowance_uses.c.job_id == old.id)
            .values(at=time.time() - 2 * 86400)
        )
    # The generation, the DM's upscale and yesterday's do not count here today.
    await upscale(store, 2, quota=quota(member_limit=1))
    with pytest.raises(OverQuota):
        await upscale(store, 3, quota=quota(member_limit=1))
    assert await store.ledger.member_uses(GUILD, 1, time.time() - 3600) == {
        "generation": 1,
        "upscale": 1,
        "video": 0,
    }
    assert await store.ledger.member_uses(None, 1, time.time() - 3600) == {
        "generation": 0,
        "upscale": 1,
        "video": 0,
    }


async def test_a_dedupe_or_a_refusal_costs_nothing(stores: list[JobStore]) -> None:
    store = stores[0]
    first = await upscale(store, 0, quota=quota(member_limit=2))
    with pytest.raises(DuplicateJob) as dup:
        await upscale(store, 0, user=2, quota=quota(member_limit=2))
    assert dup.value.job.id == first.id
    await upscale(store, 1, quota=quota(member_limit=2))
    with pytest.raises(OverQuota):
        await upscale(store, 2, quota=quota(member_limit=2))
    assert await uses(store) == 2
    assert await store.get(first.id) is not None
    assert len(await store.unfinished()) == 2


async def test_a_failure_gives_back_unless_told_it_was_paid(stores: list[JobStore]) -> None:
    store = stores[0]
    limit = quota(member_limit=1)
    job = await upscale(store, 0, quota=limit)
    await store.transition(job.id, (JobState.REQUESTED,), JobState.FAILED, give_back=True)
    again = await upscale(store, 1, quota=limit)
    await store.transition(
        again.id, (JobState.REQUESTED,), JobState.FAILED, give_back=False, paid=True
    )
    with pytest.raises(OverQuota):
        await upscale(store, 2, quota=limit)


async def test_the_running_limit_is_told_apart_from_the_allowance(stores: list[JobStore]) -> None:
    store = stores[0]
    for n in range(3):
        await upscale(store, n, max_unfinished=3, quota=quota(member_limit=10))
    with pytest.raises(TooManyJobs):
        await upscale(store, 3, max_unfinished=3, quota=quota(member_limit=10))
    refusal = await store.refusal(
        requester_id=1, guild_id=GUILD, max_unfinished=3, quota=quota(member_limit=10)
    )
    assert isinstance(refusal, TooManyJobs)
    assert (
        await store.refusal(
            requester_id=1, guild_id=GUILD, max_unfinished=10, quota=quota(member_limit=10)
        )
        is None
    )


async def test_the_credit_ledger_adds_each_drop_once(stores: list[JobStore]) -> None:
    ledger = stores[0].ledger
    since = time.time() - 3600
    now = time.time()
    await ledger.record_credits(DAY, since, 1000, now, **COSTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and (day.spent, day.last_credits) == (0, 1000)
    # Three upscales taken by the API, then a reading that only they explain: 3 each.
    for n in range(3):
        job = await upscale(stores[0], n, quota=quota())
        await stores[0].transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTED, paid=True)
    await ledger.record_credits(DAY, since, 991, time.time() + 1, **COSTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and (day.spent, day.upscale_cost, day.generation_cost) == (9, 3, 8)
    # A top-up spends nothing; a reading older than the last one is ignored.
    await ledger.record_credits(DAY, since, 5000, time.time() + 2, **COSTS)
    await ledger.record_credits(DAY, since, 10, now + 1.5, **COSTS)
    await ledger.record_credits(DAY, since, 4990, time.time() + 3, **COSTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and (day.spent, day.last_credits) == (19, 4990)


async def test_readings_from_several_processes_at_once_count_each_drop_once(
    stores: list[JobStore],
) -> None:
    since = time.time() - 3600
    base = time.time()
    await stores[0].ledger.record_credits(DAY, since, 1000, base, **COSTS)
    # Ten readings of 900 (one drop of 100) from three processes at once.
    await asyncio.gather(
        *(
            stores[n % 3].ledger.record_credits(DAY, since, 900, base + 1 + n / 100, **COSTS)
            for n in range(10)
        )
    )
    day = await stores[0].ledger.credit_day(DAY)
    assert day is not None and day.spent == 100


async def test_limits_set_keep_the_other_number_and_reset(stores: list[JobStore]) -> None:
    ledger = stores[0].ledger
    await ledger.set_limit(GUILD, "role", 7, imagines=100, now=1.0)
    await ledger.set_limit(GUILD, "role", 7, upscales=UNLIMITED_ROW, now=2.0)
    await ledger.set_limit(GUILD, "member", 1, imagines=5, upscales=KEEP, now=3.0)
    await ledger.set_limit(GUILD, "member", 1, videos=2, now=4.0)
    await ledger.set_limit(OTHER_GUILD, "role", 7, imagines=1, now=3.0)
    assert await ledger.limits(GUILD, 1, (7,)) == [
        LimitRow("member", 1, 5, None, 2),
        LimitRow("role", 7, 100, UNLIMITED_ROW, None),
    ]
    assert await ledger.limits(GUILD, 2, ()) == []
    assert await ledger.reset_limit(GUILD, "member", 1) is True
    assert await ledger.reset_limit(GUILD, "member", 1) is False


def test_a_members_own_limit_beats_roles_and_the_most_generous_role_wins() -> None:
    default = Allowance(20, 40, 5)
    roles = [LimitRow("role", 7, 100, None, 1), LimitRow("role", 8, 50, UNLIMITED_ROW, 3)]
    assert resolve([], default) == default
    assert resolve(roles, default) == Allowance(100, None, 3)
    member = LimitRow("member", 1, 3, None, 0)
    assert resolve([*roles, member], default) == Allowance(3, None, 0)
    assert resolve([LimitRow("role", 9, 0, None, None)], default) == Allowance(0, 40, 5)


async def test_a_database_from_before_spending_control_gains_its_tables(tmp_path: Path) -> None:
    url = release_sqlite(tmp_path / "old.sqlite3")
    with sqlite3.connect(tmp_path / "old.sqlite3") as conn:
        for table in ("allowance_uses", "allowance_limits", "credit_days"):
            conn.execute(f"DROP TABLE {table}")
    store = await JobStore.open(url)
    try:
        await upscale(store, 0, quota=quota(member_limit=1))
        assert await uses(store) == 1
    finally:
        await store.close()


async def test_a_cost_is_only_ever_learnt_upwards(stores: list[JobStore]) -> None:
    ledger = stores[0].ledger
    since = time.time() - 3600
    await ledger.record_credits(DAY, since, 1000, time.time(), **COSTS)
    # Two generations stamped in a window whose drop is one's charge (the other's fell before
    # the last reading): they look like 4 each, yet a generation stays taken at 8.
    for _ in range(2):
        job = await generate(stores[0], quota=quota("generation"))
        await stores[0].transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTED, paid=True)
    await ledger.record_credits(DAY, since, 992, time.time() + 1, **COSTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and (day.spent, day.generation_cost) == (8, 8)


async def test_a_job_queued_before_midnight_is_reserved_against_the_new_day(
    stores: list[JobStore],
) -> None:
    store = stores[0]
    queued = await generate(store, quota=quota("generation"))
    async with store.engine.begin() as conn:
        await conn.execute(
            allowance_uses.update()
            .where(allowance_uses.c.job_id == queued.id)
            .values(at=time.time() - 86400)
        )
    # Today: 16 credits, of which the job still waiting for its turn takes 8.
    budget = Budget(DAY, 16, **COSTS)
    await generate(store, quota=quota("generation", budget=budget))
    with pytest.raises(OverQuota):
        await generate(store, quota=quota("generation", budget=budget))


async def test_a_failed_statement_does_not_show_its_values(tmp_path: Path) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/hidden.sqlite3")
    try:
        secret = "a-callback-secret-that-must-stay-out-of-logs"
        await upscale(store, 0, callback_secret=secret)
        with pytest.raises(sa.exc.IntegrityError) as caught:
            await generate(store, callback_secret=secret)
        assert secret not in str(caught.value)
    finally:
        await store.close()
