"""The day turns at midnight of QUOTA_TIMEZONE: yesterday's uses stop counting, a refusal says
when more comes, and the credit budget keeps every paid job counted across the turn. The store
is real (the budget's tests on SQLite and on PostgreSQL); only clocks are set."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

import bot.jobs.store
from bot.jobs.admission import Budget, OverQuota, Quota
from bot.jobs.database import Database
from bot.jobs.spending import GENERATION_COST, UPSCALE_COST, VIDEO_COST, Rules, Spending
from bot.jobs.store import Job, JobState, JobStore
from tests.jobs.conftest import postgres_schema
from tests.names import JobKind

BERLIN = ZoneInfo("Europe/Berlin")
GUILD, ALICE = 10, 20


async def test_an_allowance_used_up_late_in_the_day_is_back_after_local_midnight(
    tmp_path: Path,
) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/day.sqlite3")
    # Uses are stamped with the real time; the policy's clock starts there and is moved on.
    clock = [time.time()]
    spending = Spending(
        store.ledger, Rules(imagines=1, timezone="Europe/Berlin"), now=lambda: clock[0]
    )

    async def generate() -> None:
        quota = await spending.quota(JobKind.IMAGINE, ALICE, GUILD, ())
        await store.create(
            kind=JobKind.IMAGINE,
            requester_id=ALICE,
            guild_id=GUILD,
            channel_id=1,
            deadline_seconds=60,
            quota=quota,
        )

    try:
        await generate()
        with pytest.raises(OverQuota) as refused:
            await generate()
        text = spending.refusal(refused.value, JobKind.IMAGINE, ALICE).sentence("Not started")
        midnight = int(spending.today().end)
        assert datetime.fromtimestamp(midnight, BERLIN).strftime("%H:%M:%S") == "00:00:00"
        assert text == f"❌ You have used your 1 generation for today; more <t:{midnight}:R>."
        # The next day, by Berlin's clock: yesterday's use no longer counts.
        yesterday = spending.today().start
        clock[0] = spending.today().end + 60
        await generate()
        used = await store.ledger.member_uses(GUILD, ALICE, yesterday)
        assert used == {"generation": 2, "upscale": 0, "video": 0}
    finally:
        await store.close()


class Clock:
    """The time of the store's stamps and of the budget's days, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def at(self, when: datetime) -> float:
        self.now = when.timestamp()
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock(datetime(2026, 12, 6, 23, 50, tzinfo=UTC))
    # Every stamp the store writes (a job's times, a use's, when the API took it).
    monkeypatch.setattr(bot.jobs.store, "time", SimpleNamespace(time=made))
    return made


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    if request.param == "sqlite":
        opened = await JobStore.open(f"sqlite:///{tmp_path}/budget.sqlite3")
        try:
            yield opened
        finally:
            await opened.close()
    else:
        async with postgres_schema("day_turn_test") as engine:
            yield JobStore(Database(engine()))


async def generation(store: JobStore, spending: Spending) -> Job:
    return await store.create(
        kind=JobKind.IMAGINE,
        requester_id=ALICE,
        guild_id=GUILD,
        channel_id=1,
        deadline_seconds=3600,
        prompt="p",
        quota=await spending.quota(JobKind.IMAGINE, ALICE, GUILD, ()),
    )


async def fits(store: JobStore, spending: Spending, credits: int) -> bool:
    """Whether one more generation fits in a budget of ``credits`` today: what the budget
    counts as spent and reserved, seen from outside."""
    day = spending.today()
    budget = Budget(day.key, credits, GENERATION_COST, UPSCALE_COST, VIDEO_COST)
    quota = Quota(category="generation", since=day.start, budget=budget)
    refused = await store.refusal(
        requester_id=ALICE, guild_id=GUILD, max_unfinished=None, quota=quota
    )
    return refused is None


async def test_what_a_generation_was_seen_to_cost_holds_after_midnight_before_any_reading(
    store: JobStore, clock: Clock
) -> None:
    spending = Spending(store.ledger, Rules(imagines=None, upscales=None, budget=1000), now=clock)
    # Yesterday's readings showed a generation cost 20, not the 8 assumed before any reading.
    await spending.record_credits(1000, clock())
    clock.now += 1
    taken = await generation(store, spending)
    await store.transition(taken.id, (JobState.REQUESTED,), JobState.SUBMITTED, paid=True)
    clock.now += 30
    await spending.record_credits(980, clock())
    # Past midnight, the reading at the turn failed: no reading of the new day yet.
    clock.at(datetime(2026, 12, 7, 0, 0, 30, tzinfo=UTC))
    assert await store.ledger.credit_day(spending.today().key) is None
    assert await fits(store, spending, 20)
    assert not await fits(store, spending, 19)
    # A job of the new day waiting for its turn is reserved at 20 too.
    await generation(store, spending)
    assert await fits(store, spending, 40)
    assert not await fits(store, spending, 39)


async def test_a_job_charged_before_the_days_first_reading_and_stamped_after_it_stays_counted(
    store: JobStore, clock: Clock
) -> None:
    spending = Spending(store.ledger, Rules(imagines=None, upscales=None, budget=1000), now=clock)
    await spending.record_credits(1000, clock())

    async def counted_once_at_least() -> bool:
        # Today's paid generation and one more take 16: with 15, it is in spent or reserved.
        return not await fits(store, spending, 15)

    # Just past midnight the reading at the turn fails; a generation's request goes out and
    # the API charges it (1000 → 992) before its answer is in.
    clock.at(datetime(2026, 12, 7, 0, 0, 30, tzinfo=UTC))
    job = await generation(store, spending)
    await store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
    assert await counted_once_at_least()
    # The day's first reading, late, already has the charge in it; the answer comes after.
    clock.at(datetime(2026, 12, 7, 0, 5, tzinfo=UTC))
    await spending.record_credits(992, clock())
    assert await counted_once_at_least()
    clock.now += 1
    await store.transition(job.id, (JobState.SUBMITTING,), JobState.SUBMITTED, paid=True)
    assert await counted_once_at_least()
    # The next reading shows no new charge, and the job's stamp is now before the last reading.
    clock.at(datetime(2026, 12, 7, 0, 15, tzinfo=UTC))
    await spending.record_credits(992, clock())
    assert await counted_once_at_least()
    day = await spending.credits_today()
    assert day is not None and day.spent == 8
    # And so for the rest of the day, whatever else is read.
    clock.at(datetime(2026, 12, 7, 18, 0, tzinfo=UTC))
    await spending.record_credits(992, clock())
    assert await counted_once_at_least()
