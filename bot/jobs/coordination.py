"""What processes sharing the database agree on without going through the jobs: leases (a
job's, a shard's), the rings of LISTEN/NOTIFY, the operator notices sent at most so often, and
what was learned about the vendor's API. bot.shards, bot.credits, bot.jobs.leases and
bot.jobs.vary_index use it; the tables are leases, notices and api_facts (bot.jobs.tables).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.jobs.database import Database
from bot.jobs.tables import api_facts, leases, notices

# The NOTIFY channel on which a process that took a callback rings the job's owner.
JOB_CHANNEL = "mjbot_jobs"


class Coordination:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def claim_lease(self, name: str, owner: str, *, ttl: float) -> bool:
        """Lease ``name`` (a job id, a shard) to ``owner`` for ``ttl`` seconds: True unless
        another owner holds a lease on it that has not run out. Conditional UPDATE, else an
        INSERT the primary key lets only one racer make."""
        now = self._database.clock()
        take = (
            leases.update()
            .where(
                leases.c.name == name,
                sa.or_(leases.c.owner == owner, leases.c.until < now),
            )
            .values(owner=owner, until=now + ttl)
        )
        async with self._database.lease_engine.begin() as conn:
            if (await conn.execute(take)).rowcount == 1:
                return True
        try:
            async with self._database.lease_engine.begin() as conn:
                await conn.execute(lease_row(name, owner, now + ttl))
        except IntegrityError:
            return False
        return True

    async def renew_leases(self, owner: str, names: Collection[str], *, ttl: float) -> set[str]:
        """Extend ``owner``'s leases on ``names``; the ones it still holds."""
        if not names:
            return set()
        mine = sa.and_(leases.c.owner == owner, leases.c.name.in_(list(names)))
        async with self._database.lease_engine.begin() as conn:
            await conn.execute(
                leases.update().where(mine).values(until=self._database.clock() + ttl)
            )
            held = await conn.execute(sa.select(leases.c.name).where(mine))
            return {str(row[0]) for row in held.fetchall()}

    async def release_leases(self, owner: str, names: Collection[str]) -> None:
        if not names:
            return
        async with self._database.lease_engine.begin() as conn:
            await conn.execute(
                leases.delete().where(leases.c.owner == owner, leases.c.name.in_(list(names)))
            )

    async def live_leases(self, prefix: str) -> dict[str, str]:
        """Every lease whose name starts with ``prefix`` and has not run out: name → owner."""
        query = sa.select(leases.c.name, leases.c.owner).where(
            leases.c.name.startswith(prefix, autoescape=True),
            leases.c.until >= self._database.clock(),
        )
        async with self._database.lease_engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return {str(row[0]): str(row[1]) for row in rows}

    async def listen_jobs(self, on_job: Callable[[str], None]) -> JobListener:
        """Call ``on_job(job_id)`` for every notify_job of any process (PostgreSQL's LISTEN, on
        a connection of its own, out of the pool)."""
        conn = await self._database.engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection

            def heard(_connection: object, _pid: int, _channel: str, payload: str) -> None:
                on_job(payload)

            await driver.add_listener(JOB_CHANNEL, heard)
        except BaseException:
            await conn.close()
            raise
        return JobListener(conn, driver)

    async def notify_job(self, job_id: str) -> None:
        """Tell every process listening (PostgreSQL's NOTIFY) that ``job_id`` has news."""
        async with self._database.engine.begin() as conn:
            await conn.execute(sa.select(sa.func.pg_notify(JOB_CHANNEL, job_id)))

    async def claim_notice(self, name: str, *, now: float, every: float) -> bool:
        """True for the one caller that may send notice ``name`` at ``now``: the first ever, or
        the first once ``every`` seconds have passed since the last claim, across processes.

        A conditional UPDATE, else an INSERT the primary key lets only one racer make, so two
        replicas asking at once get one True between them.
        """
        renew = (
            notices.update()
            .where(notices.c.name == name, notices.c.sent_at <= now - every)
            .values(sent_at=now)
        )
        async with self._database.engine.begin() as conn:
            if (await conn.execute(renew)).rowcount == 1:
                return True
        try:
            async with self._database.engine.begin() as conn:
                await conn.execute(notices.insert().values(name=name, sent_at=now))
        except IntegrityError:
            return False
        return True

    async def release_notice(self, name: str, *, claimed_at: float) -> None:
        """Give back the claim made at ``claimed_at`` (its notice could not be sent), so that
        the next claim succeeds; a claim another process made since is left alone."""
        query = (
            notices.update()
            .where(notices.c.name == name, notices.c.sent_at == claimed_at)
            .values(sent_at=0.0)
        )
        async with self._database.engine.begin() as conn:
            await conn.execute(query)

    async def api_fact(self, name: str) -> str | None:
        async with self._database.engine.connect() as conn:
            query = sa.select(api_facts.c.value).where(api_facts.c.name == name)
            return (await conn.execute(query)).scalar_one_or_none()

    async def learn_api_fact(self, name: str, value: str) -> str:
        """Record ``value`` unless a fact of that name is known already; the fact as stored
        (the first process to learn it wins, so every process goes by one value)."""
        try:
            async with self._database.engine.begin() as conn:
                await conn.execute(
                    api_facts.insert().values(name=name, value=value, learned_at=time.time())
                )
        except IntegrityError:
            pass
        known = await self.api_fact(name)
        assert known is not None
        return known


class JobListener:
    """A LISTEN of listen_jobs: whether its connection still stands, and how to end it."""

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self._conn = conn
        self._driver = driver

    @property
    def lost(self) -> bool:
        return bool(self._driver.is_closed())

    async def stop(self) -> None:
        # Never back to the pool: it may be dead, and a live one would still be listening.
        with contextlib.suppress(Exception):
            await self._conn.invalidate()
        with contextlib.suppress(Exception):
            await self._conn.close()


def lease_row(name: str, owner: str, until: sa.ColumnElement[float]) -> sa.Insert:
    return leases.insert().from_select(
        ["name", "owner", "until"],
        sa.select(sa.literal(name), sa.literal(owner), until),
    )
