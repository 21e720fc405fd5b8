"""The videos cost category and its cost keys (bot.jobs.categories.VIDEOS, bot.jobs.cost_keys),
on a SQLite file and on the local PostgreSQL: a click of Animate or Extend is one use of the
videos allowance whatever its batch, yet the budget and a server's credits reserve it at its
key's cost (an HD batch of four at twelve SD videos' until readings show more); each video key
is learnt apart from the readings it alone explains, beside generations on the same day.

The kinds of video job live elsewhere; a small kind of the tests' stands in for them, its cost
key read from its options as theirs is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.jobs.admission import Budget, OverQuota, Quota
from bot.jobs.categories import VIDEOS
from bot.jobs.cost_keys import (
    COST_KEYS,
    VIDEO_KEY,
    category_key,
    default_costs,
    floored,
    video_cost_key,
)
from bot.jobs.kinds import Kind, Product, register, unregister
from bot.jobs.spending import DEFAULT_COSTS, Rules, Spending
from bot.jobs.store import Job, JobStore
from bot.jobs.tables import credit_costs
from tests.jobs.test_cost_keys import keys_counted, paid
from tests.jobs.test_spending_store import GUILD, _postgres, _sqlite, split
from tests.names import JobKind

DAY = "2026-12-06"
CLIP = "test_clip"
SD, HD = {"quality": "sd"}, {"quality": "hd"}


class Clip(Kind):
    """A video job of the tests: its quality, batch and whether it extends, from its options."""

    name = CLIP
    product = Product.VIDEO
    category = VIDEOS

    def cost_key(self, job: Job) -> str:
        options = job.options
        return video_cost_key(
            hd=options.get("quality") == "hd",
            batch=int(options.get("batch", "1")),
            extend=options.get("extend") == "yes",
        ).name


@pytest.fixture(autouse=True)
def clip_kind() -> Iterator[None]:
    register(Clip())
    yield
    unregister(CLIP)


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[JobStore]]:
    """Three stores on one database: three processes' worth of connections."""
    source = _sqlite(tmp_path, 3) if request.param == "sqlite" else _postgres(3)
    async for made in source:
        yield made


def quota(category: str = VIDEOS.name, **limits: Any) -> Quota:
    return Quota(category=category, since=time.time() - 3600, **limits)


def budget(credits: int) -> Budget:
    return Budget(DAY, credits, **DEFAULT_COSTS)


async def clip(store: JobStore, options: dict[str, str], *, user: int = 1, **kw: Any) -> Job:
    fields: dict[str, Any] = {"quota": quota(), **kw}
    return await store.create(
        kind=CLIP,
        requester_id=user,
        guild_id=GUILD,
        channel_id=5,
        deadline_seconds=60,
        prompt="p",
        options=options,
        **fields,
    )


async def generation(store: JobStore, **kw: Any) -> Job:
    fields: dict[str, Any] = {"quota": quota("generation"), **kw}
    return await store.create(
        kind=JobKind.IMAGINE,
        requester_id=1,
        guild_id=GUILD,
        channel_id=5,
        deadline_seconds=60,
        prompt="p",
        **fields,
    )


# -- the keys as data -------------------------------------------------------------------------


def test_a_video_job_has_a_key_by_quality_and_batch_and_an_extension_by_quality() -> None:
    animate = {
        (hd, batch): video_cost_key(hd=hd, batch=batch, extend=False).name
        for hd in (False, True)
        for batch in (1, 2, 4)
    }
    assert animate == {
        (False, 1): "video",
        (False, 2): "video_x2",
        (False, 4): "video_x4",
        (True, 1): "video_hd",
        (True, 2): "video_hd_x2",
        (True, 4): "video_hd_x4",
    }
    for batch in (1, 2, 4):
        assert video_cost_key(hd=False, batch=batch, extend=True).name == "video_extend"
        assert video_cost_key(hd=True, batch=batch, extend=True).name == "video_extend_hd"
    for bad in (0, 3, 8, -1):
        with pytest.raises(ValueError, match="1, 2 or 4"):
            video_cost_key(hd=False, batch=bad, extend=False)
        with pytest.raises(ValueError, match="1, 2 or 4"):
            video_cost_key(hd=True, batch=bad, extend=True)


def test_the_video_keys_follow_the_videos_category_and_the_dearest_stays_last() -> None:
    videos = [key for key in COST_KEYS if key.category is VIDEOS]
    assert [(key.name, key.times, key.words) for key in videos] == [
        ("video", 1, "video"),
        ("video_extend", 1, "video extension"),
        ("video_x2", 2, "video ×2"),
        ("video_hd", 3, "HD video"),
        ("video_extend_hd", 3, "HD video extension"),
        ("video_x4", 4, "video ×4"),
        ("video_hd_x2", 6, "HD video ×2"),
        ("video_hd_x4", 12, "HD video ×4"),
    ]
    assert all(category_key(key) is VIDEO_KEY for key in videos)
    # credit_costs.key and allowance_uses.cost_key hold them.
    assert all(len(key.name) <= credit_costs.c.key.type.length for key in COST_KEYS)
    defaults = default_costs(DEFAULT_COSTS)
    assert defaults["video"] == 16 and defaults["video_hd_x4"] == 192
    # A stored key no release names is reserved at the last: it must be the dearest.
    assert COST_KEYS[-1].name == "video_hd_x4"
    assert max(defaults.values()) == defaults[COST_KEYS[-1].name]
    assert list(defaults.values()).count(defaults["video_hd_x4"]) == 1


def test_a_video_key_is_reserved_at_no_less_than_times_an_sd_videos_learnt_cost() -> None:
    learnt = {**default_costs(DEFAULT_COSTS), "video": 20, "video_hd": 75, "video_x4": 50}
    reserved = floored(learnt)
    assert reserved["video"] == 20
    # Learnt above the floor: its own.
    assert reserved["video_hd"] == 75
    # Below or at their defaults: times what an SD video was seen to cost.
    assert reserved["video_x2"] == 40
    assert reserved["video_x4"] == 80
    assert reserved["video_extend"] == 20
    assert reserved["video_extend_hd"] == 60
    assert reserved["video_hd_x4"] == 240
    # Generations are not moved by videos.
    assert reserved["generation"] == 8 and reserved["mj_omni_reference"] == 16


# -- the allowance: one click, one use --------------------------------------------------------


async def test_a_batch_of_videos_is_one_use_of_the_videos_allowance_at_its_own_key(
    stores: list[JobStore],
) -> None:
    store = stores[0]
    limit = quota(member_limit=3)
    four = await clip(store, {**HD, "batch": "4"}, quota=limit)
    two = await clip(store, {**SD, "batch": "2"}, quota=limit)
    extend = await clip(store, {**HD, "batch": "4", "extend": "yes"}, quota=limit)
    with pytest.raises(OverQuota) as over:
        await clip(store, SD, quota=limit)
    assert (over.value.which, over.value.limit) == ("member", 3)
    # Generations have an allowance of their own.
    await generation(store, quota=quota("generation", member_limit=1))
    counted = await keys_counted(store)
    assert counted[four.id] == ("video", "video_hd_x4")
    assert counted[two.id] == ("video", "video_x2")
    assert counted[extend.id] == ("video", "video_extend_hd")
    assert await store.ledger.member_uses(GUILD, 1, 0.0) == {
        "generation": 1,
        "upscale": 0,
        "video": 3,
    }
    spending = Spending(store.ledger, Rules())
    assert await spending.member_usage(GUILD, 1, (), own=True) == (
        "You, today: 1 of 20 generations, 0 of 40 upscales, 3 of 5 videos; "
        f"resets <t:{int(spending.today().end)}:R>."
    )
    told = spending.refusal(over.value, CLIP, 1).reason
    assert told.startswith("You have used your 3 videos for today; more <t:")
    none = spending.refusal(OverQuota("member", 0), CLIP, 1).reason
    assert none == "Your allowance here has no videos; an admin can change that with /mj limit"


# -- the budget and a server's credits --------------------------------------------------------


async def test_a_storm_of_hd_batches_never_passes_the_budget(stores: list[JobStore]) -> None:
    # An HD batch of two is six SD videos' 16 until readings say otherwise: 2 fit in 200, not 3.
    limit = quota(budget=budget(200))
    results = await asyncio.gather(
        *(clip(stores[n % 3], {**HD, "batch": "2"}, user=n, quota=limit) for n in range(12)),
        return_exceptions=True,
    )
    made, refused = split(results)
    assert len(made) == 2, refused[:3]
    assert all(isinstance(r, OverQuota) and (r.which, r.limit) == ("budget", 200) for r in refused)
    # 192 reserved: an SD video's 16 would pass 200; a generation's 8 fits exactly.
    with pytest.raises(OverQuota):
        await clip(stores[0], SD, user=99, quota=limit)
    await generation(stores[0], quota=quota("generation", budget=budget(200)))


async def test_a_video_is_refused_when_its_own_cost_would_pass_the_budget_not_by_one(
    stores: list[JobStore],
) -> None:
    store = stores[0]
    # An HD batch of four is reserved at 192: a budget of 191 refuses it, one of 192 takes it.
    with pytest.raises(OverQuota) as over:
        await clip(store, {**HD, "batch": "4"}, quota=quota(budget=budget(191)))
    assert (over.value.which, over.value.limit) == ("budget", 191)
    await clip(store, {**HD, "batch": "4"}, quota=quota(budget=budget(192)))
    # Nothing is left: not even the cheapest video.
    with pytest.raises(OverQuota):
        await clip(store, SD, user=2, quota=quota(budget=budget(192)))


async def test_a_servers_credits_count_its_videos_at_their_keys(stores: list[JobStore]) -> None:
    store = stores[0]
    credits = quota(server_credits=budget(200))
    await clip(store, {**HD, "batch": "4"}, quota=credits)
    with pytest.raises(OverQuota) as over:
        await clip(store, SD, user=2, quota=credits)
    assert (over.value.which, over.value.limit) == ("server_credits", 200)
    await generation(store, quota=quota("generation", server_credits=budget(200)))
    # Its admins see the same reckoning: 192 + 8.
    usage = await Spending(store.ledger, Rules()).server_usage(GUILD)
    assert usage.startswith("**This server today:** 2 of unlimited jobs, about 200 of unlimited")


# -- costs learnt per key ---------------------------------------------------------------------


async def test_a_day_of_videos_and_generations_learns_each_video_key_apart(
    stores: list[JobStore],
) -> None:
    store, ledger = stores[0], stores[0].ledger
    since = time.time() - 3600

    async def reading(credits: int) -> None:
        # After the jobs it follows were stamped paid, as the credit watch reads.
        await ledger.record_credits(DAY, since, credits, time.time(), **DEFAULT_COSTS)

    await reading(1000)
    # A generation and a video in one interval: 28 between them teaches neither.
    await paid(store, await generation(store), await clip(store, SD))
    await reading(972)
    # Two SD videos alone: 20 each.
    await paid(store, await clip(store, SD), await clip(store, SD))
    await reading(932)
    # An HD video alone: 75, not three SD videos' 60.
    await paid(store, await clip(store, HD))
    await reading(857)
    # An HD extension alone: 70, learnt apart from the HD video.
    await paid(store, await clip(store, {**HD, "extend": "yes"}))
    await reading(787)
    # A generation alone: 10.
    await paid(store, await generation(store))
    await reading(777)
    day = await ledger.credit_day(DAY)
    assert day is not None and day.spent == 223
    assert (day.generation_cost, day.video_cost) == (10, 20)
    videos = {key: cost for key, cost in day.costs.items() if key.startswith("video")}
    assert videos == {
        "video": 20,
        "video_x2": 32,
        "video_x4": 64,
        "video_hd": 75,
        "video_hd_x2": 96,
        "video_hd_x4": 192,
        "video_extend": 16,
        "video_extend_hd": 70,
    }
    # Reserved at no less than times an SD video's learnt 20; /mj status says so by words.
    spending = Spending(ledger, Rules(), now=lambda: time.time() + 86400 * 400)
    assert (await spending.costs_line()).endswith(
        "video 20, video extension 20, video ×2 40, HD video 75, HD video extension 70, "
        "video ×4 80, HD video ×2 120, HD video ×4 240"
    )
    # 223 spent: an HD video at its learnt 75 fits a budget of 298, not one of 297.
    with pytest.raises(OverQuota):
        await clip(store, HD, quota=quota(budget=budget(297)))
    await clip(store, HD, quota=quota(budget=budget(298)))
