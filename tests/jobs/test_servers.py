"""The owner's door in the store: what the settings serve, what owners decided, and how soon
another process sees a decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.jobs.servers import Servers
from bot.jobs.store import JobStore

LISTED, OTHER = 111111111111111111, 222222222222222222


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    made = await JobStore.open(f"sqlite:///{tmp_path}/servers.sqlite3")
    yield made
    await made.close()


async def test_settings_serve_until_an_owner_decides_otherwise(store: JobStore) -> None:
    servers = Servers(store.engine, allowed=(LISTED,), jobs=50, credits=None)
    listed, other = await servers.rules(LISTED), await servers.rules(OTHER)
    assert (listed.served, listed.jobs, listed.credits) == (True, 50, None)
    assert not other.served
    assert not (await servers.decide(LISTED, by=1, served=False)).served
    opened = await servers.decide(OTHER, by=1, served=True, jobs=None, credits=0)
    assert (opened.served, opened.jobs, opened.credits) == (True, None, 0)
    assert (opened.jobs_by_owner, opened.credits_by_owner) == (True, True)
    again = await servers.reset_caps(OTHER, by=1)
    assert (again.served, again.jobs, again.credits, again.jobs_by_owner) == (True, 50, None, False)
    assert [r.guild_id for r in await servers.every(())] == [LISTED, OTHER]


async def test_another_process_sees_a_decision_once_its_read_is_stale(store: JobStore) -> None:
    now = [1_000_000.0]
    here = Servers(store.engine, allowed=(LISTED,), now=lambda: now[0])
    there = Servers(store.engine, allowed=(LISTED,), now=lambda: now[0])
    assert (await there.rules(LISTED)).served
    await here.decide(LISTED, by=1, served=False)
    # The process that decided sees it at once; another within its read's freshness.
    assert not (await here.rules(LISTED)).served
    assert (await there.rules(LISTED)).served
    now[0] += 2.0
    assert not (await there.rules(LISTED)).served
