"""The spending tables' queries: limits admins set, what was used today, and the credit ledger.

Counting a new job against the limits happens where it is stored (bot.jobs.admission); this
module reads the counts back for /mj usage, keeps /mj limit's rows, and turns each reading of
the credit endpoint into what the day has spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.jobs import categories, cost_keys
from bot.jobs.admission import same_place
from bot.jobs.database import Database
from bot.jobs.tables import (
    UNFINISHED_STATES,
    JobState,
    allowance_limits,
    allowance_uses,
    credit_costs,
    credit_days,
    jobs,
)

GENERATION = categories.GENERATION.name
UPSCALE = categories.UPSCALE.name
CATEGORIES = tuple(c.name for c in categories.CATEGORIES)
# What a setter leaves as it is (None means unlimited).
KEEP: Any = object()


@dataclass(frozen=True)
class LimitRow:
    target_type: str
    target_id: int
    # A number per cost category, named as its option (bot.jobs.categories). None: not set by
    # this row; -1 (UNLIMITED_ROW): unlimited.
    imagines: int | None
    upscales: int | None
    videos: int | None


@dataclass(frozen=True)
class CreditDay:
    day: str
    spent: int
    last_credits: int
    read_at: float
    # What a job of each cost key was seen to cost that day (bot.jobs.cost_keys), by its name.
    costs: Mapping[str, int]

    @property
    def generation_cost(self) -> int:
        return self.costs[cost_keys.GENERATION_KEY.name]

    @property
    def upscale_cost(self) -> int:
        return self.costs[cost_keys.UPSCALE_KEY.name]

    @property
    def video_cost(self) -> int:
        return self.costs[cost_keys.VIDEO_KEY.name]


async def upsert(
    engine: AsyncEngine, table: sa.Table, key: dict[str, Any], values: dict[str, Any]
) -> None:
    """Update the row of ``table`` at ``key`` with ``values``, making the row if there is none."""
    where = sa.and_(*(table.c[name] == value for name, value in key.items()))
    for _ in range(3):
        async with engine.begin() as conn:
            if (await conn.execute(table.update().where(where).values(**values))).rowcount:
                return
        try:
            async with engine.begin() as conn:
                await conn.execute(table.insert().values(**key, **values))
            return
        except IntegrityError:
            # Another owner or admin made the row meanwhile: update it.
            continue
    raise RuntimeError(f"could not write a row of {table.name} after repeated conflicts")


def _limits_where(*conditions: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """A server's limit rows (``Ledger.limits``), built once: it is asked on every click."""
    return (
        sa.select(
            allowance_limits.c.target_type,
            allowance_limits.c.target_id,
            *(allowance_limits.c[c.limit_column] for c in categories.CATEGORIES),
        )
        .where(allowance_limits.c.guild_id == sa.bindparam("guild"), *conditions)
        .order_by(allowance_limits.c.target_id)
    )


_SERVER_LIMITS = _limits_where()
_MEMBER_LIMITS = _limits_where(
    sa.or_(
        sa.and_(
            allowance_limits.c.target_type == "member",
            allowance_limits.c.target_id == sa.bindparam("member"),
        ),
        sa.and_(
            allowance_limits.c.target_type == "role",
            allowance_limits.c.target_id.in_(sa.bindparam("roles", expanding=True)),
        ),
    )
)


class Ledger:
    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def _engine(self) -> AsyncEngine:
        return self._database.engine

    # -- limits -------------------------------------------------------------------------------

    async def limits(
        self, guild_id: int, member_id: int | None = None, role_ids: tuple[int, ...] = ()
    ) -> list[LimitRow]:
        """The rows of the server for this member and these roles; every row without a member."""
        query = _SERVER_LIMITS if member_id is None else _MEMBER_LIMITS
        params = {"guild": guild_id, "member": member_id, "roles": list(role_ids)}
        rows = await self._database.read(lambda conn: conn.execute(query, params).fetchall())
        return [LimitRow(*row) for row in rows]

    async def set_limit(
        self,
        guild_id: int,
        target_type: str,
        target_id: int,
        *,
        now: float,
        **numbers: int | None,
    ) -> None:
        """Set numbers of a role's or member's row (by cost category option: ``imagines``,
        ``upscales``, ``videos``; KEEP leaves one as it is), making the row if need be."""
        options = {c.option: c.limit_column for c in categories.CATEGORIES}
        unknown = set(numbers) - set(options)
        if unknown:
            raise TypeError(f"no cost category option {sorted(unknown)}")
        values: dict[str, Any] = {"updated_at": now}
        values.update({options[k]: v for k, v in numbers.items() if v is not KEEP})
        await upsert(
            self._engine,
            allowance_limits,
            {"guild_id": guild_id, "target_type": target_type, "target_id": target_id},
            values,
        )

    async def reset_limit(self, guild_id: int, target_type: str, target_id: int) -> bool:
        query = allowance_limits.delete().where(
            allowance_limits.c.guild_id == guild_id,
            allowance_limits.c.target_type == target_type,
            allowance_limits.c.target_id == target_id,
        )
        async with self._engine.begin() as conn:
            return bool((await conn.execute(query)).rowcount)

    # -- uses ---------------------------------------------------------------------------------

    async def member_uses(
        self, guild_id: int | None, member_id: int | None, since: float
    ) -> dict[str, int]:
        """The member's requests in the server since ``since`` (every member's for None), by
        category."""
        member = () if member_id is None else (allowance_uses.c.requester_id == member_id,)
        query = (
            sa.select(allowance_uses.c.category, sa.func.count())
            .where(same_place(guild_id), *member, allowance_uses.c.at >= since)
            .group_by(allowance_uses.c.category)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        counts = dict.fromkeys(CATEGORIES, 0)
        counts.update({str(category): int(count) for category, count in rows})
        return counts

    async def server_uses(
        self, guild_id: int, since: float, top: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """The server's jobs today, and its ``top`` members by jobs today, most first."""
        where = (allowance_uses.c.guild_id == guild_id, allowance_uses.c.at >= since)
        count = sa.func.count().label("n")
        leaders = (
            sa.select(allowance_uses.c.requester_id, count)
            .where(*where)
            .group_by(allowance_uses.c.requester_id)
            .order_by(count.desc(), allowance_uses.c.requester_id)
            .limit(top)
        )
        async with self._engine.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).where(*where))).scalar_one()
            rows = (await conn.execute(leaders)).fetchall()
        return int(total), [(int(user), int(n)) for user, n in rows]

    async def server_keys(self, guild_id: int, since: float) -> dict[str, int]:
        """The server's requests since ``since``, by cost key (what the budget counts)."""
        query = (
            sa.select(allowance_uses.c.cost_key, sa.func.count())
            .where(allowance_uses.c.guild_id == guild_id, allowance_uses.c.at >= since)
            .group_by(allowance_uses.c.cost_key)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        return {str(key): int(n) for key, n in rows}

    async def uses_by_server(self, since: float) -> dict[int, dict[str, int]]:
        """Every server's requests since ``since``, by cost key."""
        query = (
            sa.select(allowance_uses.c.guild_id, allowance_uses.c.cost_key, sa.func.count())
            .where(allowance_uses.c.at >= since, allowance_uses.c.guild_id.is_not(None))
            .group_by(allowance_uses.c.guild_id, allowance_uses.c.cost_key)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        counts: dict[int, dict[str, int]] = {}
        for guild_id, key, n in rows:
            counts.setdefault(int(guild_id), {})[str(key)] = int(n)
        return counts

    # -- credits ------------------------------------------------------------------------------

    async def credit_day(self, day: str) -> CreditDay | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(credit_days.select().where(credit_days.c.day == day))).first()
            if row is None:
                return None
            costs = await conn.execute(
                sa.select(credit_costs.c.key, credit_costs.c.cost).where(credit_costs.c.day == day)
            )
            learnt = {str(key): int(cost) for key, cost in costs}
        return CreditDay(
            row.day, row.spent, row.last_credits, row.read_at, MappingProxyType(learnt)
        )

    async def record_credits(
        self,
        day: str,
        since: float,
        credits: int,
        at: float,
        **default_costs: int,
    ) -> None:
        """Add a reading of the credit endpoint, taken at ``at``, to day ``day`` (begun at
        ``since``).

        Each reading is one transaction that first takes the day's row (a write: SQLite's one
        writer, PostgreSQL's row lock), so readings from several processes, even out of order,
        add every drop once: a reading older than the last one is ignored. A rise is a top-up
        and spends nothing (spending in the same interval is then missed). The first reading of
        a day starts it with what the jobs it may already have in it are taken to cost: those
        the API took since midnight, and those whose paid request is out. A job is stamped
        taken only once the API's answer is in, after its charge: one charged before this
        reading and stamped after it would be in no later drop, and out of the reserve from the
        next reading on. One charged after it is then counted twice that day.
        ``default_costs``: a cost per cost category, by its cost_column (each cost key's
        default follows, bot.jobs.cost_keys).
        """
        defaults = cost_keys.default_costs(default_costs)
        row = credit_days.c
        for _ in range(3):
            try:
                async with self._engine.begin() as conn:
                    taken = await conn.execute(
                        credit_days.update().where(row.day == day).values(read_at=row.read_at)
                    )
                    if taken.rowcount:
                        await self._add_reading(conn, day, credits, at, defaults)
                        return
                await self._begin_day(day, since, credits, at, defaults)
                return
            except IntegrityError:
                # Another process began the day meanwhile: add this reading to its row.
                continue
        raise RuntimeError(f"could not record a credit reading of {day} after repeated conflicts")

    async def _add_reading(
        self, conn: AsyncConnection, day: str, credits: int, at: float, defaults: dict[str, int]
    ) -> None:
        """Add a later reading to the day's row, which ``conn`` holds."""
        row = credit_days.c
        last = (
            await conn.execute(sa.select(row.last_credits, row.read_at).where(row.day == day))
        ).one()
        if last.read_at >= at:
            return
        drop = max(last.last_credits - credits, 0)
        await conn.execute(
            credit_days.update()
            .where(row.day == day)
            .values(spent=row.spent + drop, last_credits=credits, read_at=at)
        )
        taken = await conn.execute(
            sa.select(allowance_uses.c.cost_key, sa.func.count())
            .where(allowance_uses.c.paid_at > last.read_at, allowance_uses.c.paid_at <= at)
            .group_by(allowance_uses.c.cost_key)
        )
        counts = {str(key): int(n) for key, n in taken}
        # Only a drop that one cost key alone can explain tells what it costs (an interval of
        # several keys teaches nothing), and only an interval no job straddles: a job is stamped
        # paid after its charge, so one in flight at either reading can have its charge and its
        # stamp in different intervals, making a key look dearer than it is (and, reserved at
        # that for good, refusing jobs the budget has room for). Still only upwards: a charge
        # the stamps cannot place (a request asked and charged around a reading within the
        # clock's resolution, a job whose use row is gone) must never lower what is reserved.
        if drop <= 0 or len(counts) != 1:
            return
        ((key, n),) = counts.items()
        if key not in defaults or await self._straddled(conn, last.read_at, at):
            return
        cost = -(-drop // n)
        known = await self._costs(conn, day, defaults)
        if cost > known[key]:
            await self._set_cost(conn, day, key, cost)

    @staticmethod
    async def _straddled(conn: AsyncConnection, since: float, at: float) -> bool:
        """Whether a job may have been in flight at the reading of ``since`` or of ``at``: one
        stamped paid between them yet asked before the first (it may have been charged before
        it), or one asked by the second, unfinished and not stamped (it may be charged before
        it and stamped after). Queued ones count too: when a request went out is not stored."""
        use, job = allowance_uses.c, jobs.c
        query = (
            sa.select(sa.func.count())
            .select_from(allowance_uses.outerjoin(jobs, job.id == use.job_id))
            .where(
                sa.or_(
                    sa.and_(use.paid_at > since, use.paid_at <= at, use.at < since),
                    sa.and_(
                        use.paid_at.is_(None),
                        use.at <= at,
                        job.state.in_([s.value for s in UNFINISHED_STATES]),
                    ),
                )
            )
        )
        return bool((await conn.execute(query)).scalar_one())

    async def _begin_day(
        self, day: str, since: float, credits: int, at: float, defaults: dict[str, int]
    ) -> None:
        """The day's first reading: its row, and its costs as the last day's (else the
        defaults). Raises IntegrityError when another process began it meanwhile."""
        async with self._engine.begin() as conn:
            costs = await self._costs(conn, day, defaults)
            taken = await conn.execute(
                sa.select(allowance_uses.c.cost_key, sa.func.count())
                .select_from(allowance_uses.outerjoin(jobs, jobs.c.id == allowance_uses.c.job_id))
                .where(
                    sa.or_(
                        allowance_uses.c.paid_at >= since,
                        sa.and_(
                            allowance_uses.c.paid_at.is_(None),
                            jobs.c.state == JobState.SUBMITTING.value,
                        ),
                    )
                )
                .group_by(allowance_uses.c.cost_key)
            )
            # Counted as the budget reserves them; stored as learnt (the floor is applied on use).
            reserved = cost_keys.floored(costs)
            # A key no release of this code names (a later one's) counts at the dearest.
            dearest = reserved[cost_keys.COST_KEYS[-1].name]
            spent = sum(int(n) * reserved.get(str(key), dearest) for key, n in taken)
            await conn.execute(
                credit_days.insert().values(day=day, spent=spent, last_credits=credits, read_at=at)
            )
            await conn.execute(
                credit_costs.insert(),
                [{"day": day, "key": key, "cost": cost} for key, cost in costs.items()],
            )

    @staticmethod
    async def _set_cost(conn: AsyncConnection, day: str, key: str, cost: int) -> None:
        where = (credit_costs.c.day == day, credit_costs.c.key == key)
        if not (await conn.execute(credit_costs.update().where(*where).values(cost=cost))).rowcount:
            await conn.execute(credit_costs.insert().values(day=day, key=key, cost=cost))

    @staticmethod
    async def _costs(conn: AsyncConnection, day: str, defaults: dict[str, int]) -> dict[str, int]:
        # Oldest first: each key ends at its last day's cost.
        rows = await conn.execute(
            sa.select(credit_costs.c.key, credit_costs.c.cost)
            .where(credit_costs.c.day <= day, credit_costs.c.key.in_(list(defaults)))
            .order_by(credit_costs.c.day)
        )
        costs = dict(defaults)
        costs.update({str(key): int(cost) for key, cost in rows})
        return costs

    async def costs(self, day: str, defaults: dict[str, int]) -> dict[str, int]:
        """What a job of each cost key was seen to cost by day ``day`` (its readings, or the
        last day's before it), as learnt: the key's default where no day showed it (the budget
        reserves no less than cost_keys.floored of these)."""
        async with self._engine.connect() as conn:
            return await self._costs(conn, day, defaults)
