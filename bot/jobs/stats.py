"""Counts of the jobs for the health check, the metrics and /mj status: read-only queries over
the jobs table, apart from the job store's reads and writes."""

from __future__ import annotations

import sqlalchemy as sa

from bot.jobs.database import Database
from bot.jobs.kinds import all_kinds
from bot.jobs.store import Job
from bot.jobs.tables import UNFINISHED_STATES, JobState, jobs


class JobStats:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def count_unfinished(self) -> int:
        """Jobs neither delivered nor failed, of every process sharing the store: one COUNT
        over the state index (the health check's query)."""
        query = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.state.in_([s.value for s in UNFINISHED_STATES]))
        )
        async with self._database.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def count_by_kind_and_state(self) -> dict[tuple[str, str], int]:
        """How many jobs there are of each (kind, state), in one GROUP BY: every known kind and
        state is present (0 when none), plus any other the table holds (a newer version's)."""
        query = sa.select(jobs.c.kind, jobs.c.state, sa.func.count()).group_by(
            jobs.c.kind, jobs.c.state
        )
        async with self._database.engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        counts = {(kind.name, state.value): 0 for kind in all_kinds() for state in JobState}
        for kind, state, count in rows:
            counts[(str(kind), str(state))] = int(count)
        return counts

    async def states_since(self, since: float, guild_id: int | None = None) -> dict[JobState, int]:
        """How many jobs created since ``since`` (in server ``guild_id``, or anywhere) are in
        each state."""
        query = (
            sa.select(jobs.c.state, sa.func.count())
            .where(jobs.c.created_at >= since, *_in_guild(guild_id))
            .group_by(jobs.c.state)
        )
        async with self._database.engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return {JobState(state): count for state, count in rows}

    async def recent_failures(self, limit: int, guild_id: int | None = None) -> list[Job]:
        """The last ``limit`` failed jobs (of server ``guild_id``, or anywhere), newest first."""
        query = (
            jobs.select()
            .where(jobs.c.state == JobState.FAILED.value, *_in_guild(guild_id))
            .order_by(jobs.c.updated_at.desc())
            .limit(limit)
        )
        async with self._database.engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return [Job.from_row(row) for row in rows]


def _in_guild(guild_id: int | None) -> tuple[sa.ColumnElement[bool], ...]:
    return () if guild_id is None else (jobs.c.guild_id == guild_id,)
