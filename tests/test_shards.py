"""Shard leases on the real PostgreSQL: each shard run by one process, a standby taking the shards
of a process that stopped renewing, and a process that cannot renew stopping before its lease
can run out. Each "process" is a ShardLeases with a store engine of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import UpscaleBot
from bot.health import HealthMonitor
from bot.jobs.coordination import Coordination
from bot.jobs.database import Database
from bot.jobs.store import JobStore
from bot.shards import ShardLeases, shard_of
from tests.jobs.conftest import postgres_schema

# Long enough that a database round trip on a busy machine never eats the two thirds a
# process may act on its lease without renewing.
TTL = 3.0


@pytest.fixture
async def engine() -> AsyncIterator[Callable[[], AsyncEngine]]:
    async with postgres_schema("shards_test") as make:
        yield make


def process(
    engine: Callable[[], AsyncEngine],
    owner: str,
    *,
    count: int = 2,
    most: int | None = 1,
    allowed: list[int] | None = None,
) -> ShardLeases:
    return ShardLeases(
        Coordination(Database(engine())),
        owner=owner,
        count=count,
        allowed=allowed,
        most=most,
        ttl=TTL,
    )


async def test_each_shard_has_one_process_and_the_third_stands_by(
    engine: Callable[[], AsyncEngine],
) -> None:
    a, b, c = (process(engine, name) for name in "abc")
    results = await asyncio.gather(a.step(), b.step(), c.step())
    won = sorted(shard for taken, _ in results for shard in taken)
    assert won == [0, 1]
    assert sorted(len(p.held) for p in (a, b, c)) == [0, 1, 1]
    # Renewed, nobody changes hands.
    for _ in range(3):
        await asyncio.gather(a.step(), b.step(), c.step())
    assert sorted(a.held + b.held + c.held) == [0, 1]


async def test_a_standby_takes_the_shard_of_a_process_that_stopped_renewing(
    engine: Callable[[], AsyncEngine],
) -> None:
    a, b = process(engine, "a", most=2), process(engine, "b")
    assert (await a.step())[0] == [0, 1]
    assert await b.step() == ([], [])
    # a is gone: no more renewals. Its leases run out by the database's clock.
    await asyncio.sleep(TTL * 1.5)
    won, _ = await b.step()
    assert won == [0]
    # a comes back to life: shard 0 is b's now; shard 1, which nobody took meanwhile, it
    # keeps (it acted on neither while its lease was out, see below).
    won, lost = await a.step()
    assert (won, lost) == ([], [0])
    assert a.held == [1]


class CutOff(Coordination):
    """A store whose database stops answering renewals (a network split, a failover)."""

    cut = False

    async def renew_leases(self, owner: str, names: Collection[str], *, ttl: float) -> set[str]:
        if self.cut:
            raise ConnectionResetError("the database went away")
        return await super().renew_leases(owner, names, ttl=ttl)


async def test_a_process_that_cannot_renew_stops_before_its_lease_can_run_out(
    engine: Callable[[], AsyncEngine],
) -> None:
    now = [0.0]
    store = CutOff(Database(engine()))
    a = ShardLeases(store, owner="a", count=2, allowed=None, most=1, ttl=TTL, clock=lambda: now[0])
    assert (await a.step())[0] == [0]
    guild_on_0 = next(g << 22 for g in range(10) if shard_of(g << 22, 2) == 0)
    assert a.holds(0) and a.holds_guild(guild_on_0)
    store.cut = True
    now[0] = TTL / 3
    assert await a.step() == ([], [])
    assert a.holds(0)
    # Two thirds of the lease by its own clock, no renewal since: it no longer acts on
    # shard 0's events (a frozen process that wakes up reads them late), and its step gives
    # the shard up, while the lease still has a third to run.
    now[0] = TTL * 2 / 3
    assert not a.holds(0) and not a.holds_guild(guild_on_0)
    _, lost = await a.step()
    assert lost == [0]
    assert (await store.live_leases("shard:"))["shard:0/2"] == "a"


async def test_another_shard_count_stands_by_and_says_why(
    engine: Callable[[], AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    a = process(engine, "a", count=2, most=2)
    odd = process(engine, "b", count=3, most=3)
    await a.step()
    with caplog.at_level(logging.ERROR, logger="bot.shards"):
        assert await odd.step() == ([], [])
    assert "another SHARD_COUNT" in caplog.text
    assert odd.held == []


async def test_only_the_shards_a_process_may_run(engine: Callable[[], AsyncEngine]) -> None:
    a = process(engine, "a", count=4, most=None, allowed=[1, 3])
    assert (await a.step())[0] == [1, 3]
    b = process(engine, "b", count=4, most=None)
    assert (await b.step())[0] == [0, 2]


async def test_without_leases_every_allowed_shard_is_run_at_once(tmp_path: object) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/bot.sqlite3")
    try:
        alone = ShardLeases(
            Coordination(store.database), owner="a", count=3, allowed=None, most=None, ttl=None
        )
        assert await alone.step() == ([0, 1, 2], [])
        assert await alone.step() == ([], [])
        assert all(alone.holds(shard) for shard in range(3))
    finally:
        await store.close()


async def test_a_session_back_after_its_lease_went_is_closed_not_counted_up(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A reconnect under way when the lease was lost finishes later: the session that comes
    back is not this process's any more (bot.app.UpscaleBot._session_up)."""
    store = await JobStore.open(f"sqlite:///{tmp_path}/bot.sqlite3")
    health = HealthMonitor()
    try:
        async with UpscaleBot(guild_id=None, health=health) as bot:
            leases = ShardLeases(
                Coordination(store.database), owner="a", count=2, allowed=[0], most=None, ttl=None
            )
            await leases.step()
            bot._shard_leases = leases
            with caplog.at_level(logging.WARNING, logger="bot.app"):
                await bot.on_shard_resumed(1)
            assert "shard 1 came back after its lease was lost" in caplog.text
            assert not (await health.check()).gateway_connected
            await bot.on_shard_resumed(0)
            assert (await health.check()).gateway_connected
    finally:
        await store.close()
