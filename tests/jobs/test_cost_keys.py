"""Costs learnt per cost key (bot.jobs.cost_keys), on a SQLite file and on the local PostgreSQL:
a job is reserved in the budget at its key's cost (an omni reference at its own, however many
come at once), a key is learnt from the readings it alone explains, a new day starts from the
last day's cost of each key; every image generation still counts as a generation for the
allowances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.jobs.admission import Budget, OverQuota, Quota
from bot.jobs.cost_keys import default_costs
from bot.jobs.spending import Rules, Spending
from bot.jobs.store import Job, JobState, JobStore
from bot.jobs.tables import allowance_uses
from tests.jobs.test_spending_store import GUILD, _postgres, _sqlite, split
from tests.names import JobKind

DAY, NEXT_DAY = "2026-12-06", "2026-12-07"
OMNI = {"task_type": "mj_omni_reference"}
DEFAULTS = {"generation_cost": 8, "upscale_cost": 2, "video_cost": 16}


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[JobStore]]:
    """Three stores on one database: three processes' worth of connections."""
    source = _sqlite(tmp_path, 3) if request.param == "sqlite" else _postgres(3)
    async for made in source:
        yield made


def quota(budget: Budget | None = None, *, since: float | None = None) -> Quota:
    since = time.time() - 3600 if since is None else since
    return Quota(category="generation", since=since, budget=budget)


async def create(store: JobStore, kind: JobKind = JobKind.IMAGINE, **kw: Any) -> Job:
    fields: dict[str, Any] = {"prompt": "p", "quota": quota()}
    if kind is not JobKind.IMAGINE:
        fields["parent_task_id"] = f"grid-{time.monotonic_ns()}"
        fields["image_index"] = None if kind is JobKind.REROLL else 0
    return await store.create(
        kind=kind,
        requester_id=kw.pop("user", 1),
        guild_id=GUILD,
        channel_id=5,
        deadline_seconds=60,
        **{**fields, **kw},
    )


async def paid(store: JobStore, *jobs: Job) -> None:
    for job in jobs:
        await store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTED, paid=True)


async def keys_counted(store: JobStore) -> dict[str, tuple[str, str]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(allowance_uses.c.job_id, allowance_uses.c.category, allowance_uses.c.cost_key)
        )
        return {str(job): (str(category), str(key)) for job, category, key in rows}


async def test_each_job_counts_as_its_category_and_is_reserved_at_its_kinds_key(
    stores: list[JobStore],
) -> None:
    store = stores[0]
    text = await create(store)
    typed = await create(store, options={"task_type": "mj_txt2img"})
    omni = await create(store, options=OMNI)
    style = await create(store, options={"task_type": "mj_style_reference"})
    image = await create(store, options={"task_type": "mj_img2img"})
    # A task type no key names is priced as a plain generation.
    other = await create(store, options={"task_type": "mj_something_new"})
    # A re-roll copies its grid's options: it costs what the grid cost.
    reroll = await create(store, JobKind.REROLL, options=OMNI)
    plain_reroll = await create(store, JobKind.REROLL)
    vary = await create(store, JobKind.VARY, options=OMNI)
    up = await create(store, JobKind.UPSCALE, options=OMNI, quota=Quota("upscale", 0.0))
    generation = ("generation", "generation")
    assert await keys_counted(store) == {
        text.id: generation,
        typed.id: generation,
        omni.id: ("generation", "mj_omni_reference"),
        style.id: ("generation", "mj_style_reference"),
        image.id: ("generation", "mj_img2img"),
        other.id: generation,
        reroll.id: ("generation", "mj_omni_reference"),
        plain_reroll.id: generation,
        vary.id: generation,
        up.id: ("upscale", "upscale"),
    }
    # The allowances see generations and an upscale, whatever they cost.
    assert await store.ledger.member_uses(GUILD, 1, 0.0) == {
        "generation": 9,
        "upscale": 1,
        "video": 0,
    }


async def test_a_storm_of_omni_reference_jobs_never_passes_the_budget(
    stores: list[JobStore],
) -> None:
    # Twice a generation's 8 until readings say otherwise: 2 of them fit in 40, not 5.
    limit = quota(Budget(DAY, 40, **DEFAULTS))
    results = await asyncio.gather(
        *(create(stores[n % 3], user=n, options=OMNI, quota=limit) for n in range(12)),
        return_exceptions=True,
    )
    made, refused = split(results)
    assert len(made) == 2, refused[:3]
    assert all(isinstance(r, OverQuota) and (r.which, r.limit) == ("budget", 40) for r in refused)
    # What is left fits a plain generation.
    await create(stores[0], user=99, quota=limit)
    with pytest.raises(OverQuota):
        await create(stores[0], user=99, quota=limit)


async def test_an_omni_reference_job_is_reserved_at_its_learnt_cost(
    stores: list[JobStore],
) -> None:
    store, ledger = stores[0], stores[0].ledger
    since = time.time() - 3600
    await ledger.record_credits(DAY, since, 1000, time.time(), **DEFAULTS)
    await paid(store, await create(store, options=OMNI))
    await ledger.record_credits(DAY, since, 980, time.time() + 1, **DEFAULTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and (day.spent, day.costs["mj_omni_reference"]) == (20, 20)
    # 20 spent; 28 left: one omni reference at 20, then no second one, yet a generation at 8.
    limit = quota(Budget(DAY, 48, **DEFAULTS))
    await create(store, options=OMNI, quota=limit)
    with pytest.raises(OverQuota):
        await create(store, options=OMNI, quota=limit)
    await create(store, quota=limit)


async def test_a_key_is_learnt_from_the_readings_it_alone_explains(
    stores: list[JobStore],
) -> None:
    store, ledger = stores[0], stores[0].ledger
    since = time.time() - 3600
    # Each reading after the jobs it follows were stamped paid, as the credit watch reads.
    await ledger.record_credits(DAY, since, 1000, time.time(), **DEFAULTS)
    # A generation and an omni reference in one interval: 40 between them teaches neither.
    await paid(store, await create(store), await create(store, options=OMNI))
    await ledger.record_credits(DAY, since, 960, time.time(), **DEFAULTS)
    # Two omni references alone: 25 each.
    await paid(store, await create(store, options=OMNI), await create(store, options=OMNI))
    await ledger.record_credits(DAY, since, 910, time.time(), **DEFAULTS)
    # An upscale alone: 3.
    up = await create(store, JobKind.UPSCALE, quota=Quota("upscale", since))
    await paid(store, up)
    await ledger.record_credits(DAY, since, 907, time.time(), **DEFAULTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and day.spent == 93
    # Every key's row is written by the day's first reading; the videos' stay at their defaults.
    assert dict(day.costs) == {
        **default_costs(DEFAULTS),
        "generation": 8,
        "upscale": 3,
        "mj_img2img": 8,
        "mj_style_reference": 8,
        "mj_omni_reference": 25,
    }


async def test_a_new_day_starts_from_the_last_days_cost_of_each_key(
    stores: list[JobStore],
) -> None:
    store, ledger = stores[0], stores[0].ledger
    since = time.time() - 3600
    await ledger.record_credits(DAY, since, 1000, time.time(), **DEFAULTS)
    await paid(store, await create(store, options=OMNI))
    await ledger.record_credits(DAY, since, 975, time.time() + 1, **DEFAULTS)
    # The next day, before its first reading: an omni reference is reserved at 25, not 16.
    later = time.time() + 3600
    await create(store, options=OMNI, quota=quota(Budget(NEXT_DAY, 25, **DEFAULTS), since=later))
    with pytest.raises(OverQuota):
        await create(
            store, user=2, options=OMNI, quota=quota(Budget(NEXT_DAY, 49, **DEFAULTS), since=later)
        )
    # Its first reading starts it from the last day's costs, each key its own.
    await ledger.record_credits(NEXT_DAY, later, 975, time.time() + 4, **DEFAULTS)
    day = await ledger.credit_day(NEXT_DAY)
    assert day is not None
    assert (day.costs["mj_omni_reference"], day.generation_cost, day.upscale_cost) == (25, 8, 2)
    # /mj status and /mj usage tell the owners, each key by its words.
    spending = Spending(ledger, Rules(), now=lambda: time.time() + 86400 * 400)
    assert await spending.costs_line() == (
        "generation 8, upscale 2, image prompt 8, style reference 8, omni reference 25, "
        "video 16, video extension 16, video ×2 32, HD video 48, HD video extension 48, "
        "video ×4 64, HD video ×2 96, HD video ×4 192"
    )
