"""GRID_REPOSTS_PER_HOUR in the store, on a SQLite file and on the local PostgreSQL: a burst of
concurrent re-posts, from one engine or from three sharing the database as processes would,
never passes the limit by even one; a use given back does not count; the hour rolls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.reposts import WINDOW_SECONDS, Reposts, RepostsUsed
from bot.jobs.store import JobStore
from tests.jobs.conftest import postgres_schema

GUILD, OTHER_GUILD = 1000, 2000
MEMBER, OTHER_MEMBER = 10, 20


@pytest.fixture(params=["sqlite", "postgresql"])
async def engines(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[AsyncEngine]]:
    """Three engines on one database: three processes' worth of connections."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/reposts.sqlite3"
        stores = [await JobStore.open(url) for _ in range(3)]
        try:
            yield [store.engine for store in stores]
        finally:
            for store in stores:
                await store.close()
        return
    async with postgres_schema("reposts_test") as engine:
        yield [engine() for _ in range(3)]


async def test_a_burst_of_reposts_never_passes_the_hourly_limit(
    engines: list[AsyncEngine],
) -> None:
    limits = [Reposts(engine, 10) for engine in engines]

    async def one(n: int) -> bool:
        try:
            await limits[n % 3].take(MEMBER, GUILD)
        except RepostsUsed as used:
            assert used.limit == 10 and used.next_at is not None
            return False
        return True

    taken = await asyncio.gather(*(one(n) for n in range(30)))
    assert taken.count(True) == 10
    # Another member, or the same member in another server, has an hour of their own.
    await limits[0].take(OTHER_MEMBER, GUILD)
    await limits[1].take(MEMBER, OTHER_GUILD)
    with pytest.raises(RepostsUsed):
        await limits[1].take(MEMBER, GUILD)


async def test_the_hour_rolls_and_zero_forbids(engines: list[AsyncEngine]) -> None:
    now = [1_000_000.0]
    limit = Reposts(engines[0], 2, clock=lambda: now[0])
    await limit.take(MEMBER, GUILD)
    now[0] += 600
    await limit.take(MEMBER, GUILD)
    with pytest.raises(RepostsUsed) as used:
        await limit.take(MEMBER, GUILD)
    # The first one stops counting an hour after it was made.
    assert used.value.next_at == 1_000_000.0 + WINDOW_SECONDS
    now[0] = 1_000_000.0 + WINDOW_SECONDS + 1
    await limit.take(MEMBER, GUILD)

    forbidden = Reposts(engines[1], 0)
    with pytest.raises(RepostsUsed) as never:
        await forbidden.take(MEMBER, GUILD)
    assert never.value.next_at is None
    assert await Reposts(engines[2], None).take(MEMBER, GUILD) is None
