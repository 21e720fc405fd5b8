"""Faults the review of issue 23 found in the cost keys, fixed (SQLite file and the local
PostgreSQL): a key never seen alone is reserved at no less than its category's learnt cost, and a
reading a job straddles teaches no cost."""

from __future__ import annotations

import time

from bot.jobs.admission import Budget, OverQuota, Quota
from bot.jobs.store import JobStore
from tests.jobs.test_cost_keys import DAY, DEFAULTS, NEXT_DAY, create, paid, stores
from tests.names import JobKind

__all__ = ["stores"]


async def test_a_cost_inflated_by_a_charge_stamped_late_comes_back_down(
    stores: list[JobStore],
) -> None:
    store, ledger = stores[0], stores[0].ledger
    since = time.time() - 3600
    await ledger.record_credits(DAY, since, 1000, time.time(), **DEFAULTS)
    # A generation (8) stamped paid, and an upscale (2) the API charged before this reading
    # but whose answer (and stamp) came after it: the interval looks like one generation at 10.
    await paid(store, await create(store))
    late = await create(store, JobKind.UPSCALE, quota=Quota("upscale", since))
    await ledger.record_credits(DAY, since, 990, time.time() + 1, **DEFAULTS)
    await paid(store, late)
    await ledger.record_credits(DAY, since, 990, time.time() + 2, **DEFAULTS)
    # From then on, every interval of generations alone shows 8 each, day after day.
    for at, credits in ((3, 982), (4, 974)):
        await paid(store, await create(store))
        await ledger.record_credits(DAY, since, credits, time.time() + at, **DEFAULTS)
    later = time.time() + 86400
    await ledger.record_credits(NEXT_DAY, later, 974, later, **DEFAULTS)
    for at, credits in ((1, 966), (2, 958)):
        job = await create(store, quota=Quota("generation", later))
        await paid(store, job)
        await ledger.record_credits(NEXT_DAY, later, credits, later + at, **DEFAULTS)
    day = await ledger.credit_day(NEXT_DAY)
    assert day is not None
    # Still reserved at 10 for good: a quarter of the budget refused for nothing.
    assert day.generation_cost == 8


IMG2IMG = {"task_type": "mj_img2img"}


async def test_image_prompts_are_reserved_at_least_at_what_a_generation_was_seen_to_cost(
    stores: list[JobStore],
) -> None:
    store, ledger = stores[0], stores[0].ledger
    since = time.time() - 3600
    await ledger.record_credits(DAY, since, 1000, time.time(), **DEFAULTS)
    # Generations really cost 16 (fast mode, a price change), not the configured 8: learnt.
    await paid(store, await create(store))
    await ledger.record_credits(DAY, since, 984, time.time() + 1, **DEFAULTS)
    day = await ledger.credit_day(DAY)
    assert day is not None and day.generation_cost == 16
    # A budget of 64 more: four generations' worth. Image prompts are "priced as a
    # generation" (bot.jobs.cost_keys), yet each is reserved at the default 8 until an
    # interval holds image prompts alone, which a member mixing them with others never lets be.
    limit = Quota("generation", since, budget=Budget(DAY, 16 + 64, **DEFAULTS))
    admitted = 0
    for user in range(10, 20):
        try:
            await create(store, user=user, options=IMG2IMG, quota=limit)
        except OverQuota:
            break
        admitted += 1
    assert admitted <= 4, f"{admitted} image prompts admitted: {admitted * 16} credits of 64"
