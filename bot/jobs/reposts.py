"""GRID_REPOSTS_PER_HOUR: how many grids one member may re-post (``/upscale`` without an image,
each a record-info call and four downloads) in one server within a rolling hour.

Counted in the database, so the limit holds across processes and restarts: a use is one
INSERT … SELECT whose condition is the count, so a burst of commands cannot pass it by even one
(SQLite runs one writer at a time; on PostgreSQL an advisory lock on the member makes their
re-posts take turns, as ``bot.jobs.admission`` does for jobs).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.jobs.tables import grid_reposts

WINDOW_SECONDS = 3600.0


class RepostsUsed(Exception):
    """The member has re-posted ``limit`` grids here within the hour; the next one may go at
    ``next_at`` (Unix seconds), never when the limit is 0."""

    def __init__(self, limit: int, next_at: float | None) -> None:
        self.limit = limit
        self.next_at = next_at
        super().__init__(f"at most {limit} grid re-posts an hour")


class Reposts:
    def __init__(
        self,
        engine: AsyncEngine,
        per_hour: int | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        # None: unlimited, nothing counted.
        self._per_hour = per_hour
        self._clock = clock

    async def take(self, requester_id: int, guild_id: int | None) -> None:
        """Count one re-post of the member's here, whatever it then shows: each asks the API
        and may download four images. RepostsUsed when the hour's re-posts are used up."""
        limit = self._per_hour
        if limit is None:
            return
        now = self._clock()
        use_id = secrets.token_hex(12)
        mine = _of(requester_id, guild_id)
        recent = sa.and_(mine, grid_reposts.c.at > now - WINDOW_SECONDS)
        count = sa.select(sa.func.count()).where(recent).scalar_subquery()
        row = sa.select(
            sa.literal(use_id, type_=grid_reposts.c.id.type),
            sa.literal(guild_id, type_=grid_reposts.c.guild_id.type),
            sa.literal(requester_id, type_=grid_reposts.c.requester_id.type),
            sa.literal(now, type_=grid_reposts.c.at.type),
        ).where(count < limit)
        insert = grid_reposts.insert().from_select(["id", "guild_id", "requester_id", "at"], row)
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Under READ COMMITTED two inserts would each miss the other's row in their
                # count: the member's re-posts take turns (the key admission's member lock uses).
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(requester_id)))
            await conn.execute(
                grid_reposts.delete().where(mine, grid_reposts.c.at <= now - WINDOW_SECONDS)
            )
            if (await conn.execute(insert)).rowcount == 1:
                return
            next_at = await _next_at(conn, recent)
        raise RepostsUsed(limit, next_at if limit > 0 else None)


def _of(requester_id: int, guild_id: int | None) -> sa.ColumnElement[bool]:
    place = (
        grid_reposts.c.guild_id.is_(None)
        if guild_id is None
        else grid_reposts.c.guild_id == guild_id
    )
    return sa.and_(grid_reposts.c.requester_id == requester_id, place)


async def _next_at(conn: AsyncConnection, recent: sa.ColumnElement[bool]) -> float | None:
    """When the oldest re-post of the hour stops counting."""
    oldest = (await conn.execute(sa.select(sa.func.min(grid_reposts.c.at)).where(recent))).scalar()
    return None if oldest is None else float(oldest) + WINDOW_SECONDS
