"""The spending tables' queries: limits admins set, what was used today, and the credit ledger.

Counting a new job against the limits happens where it is stored (bot.jobs.admission); this
module reads the counts back for /mj usage, keeps /mj limit's rows, and turns each reading of
the credit endpoint into what the day has spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs import categories
from bot.jobs.admission import same_place
from bot.jobs.categories import CostCategory
from bot.jobs.tables import JobState, allowance_limits, allowance_uses, credit_days, jobs

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


@dataclass(frozen=True)
class CreditDay:
    day: str
    spent: int
    last_credits: int
    read_at: float
    # A cost per cost category, named as its credit_days column.
    generation_cost: int
    upscale_cost: int


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


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # -- limits -------------------------------------------------------------------------------

    async def limits(
        self, guild_id: int, member_id: int | None = None, role_ids: tuple[int, ...] = ()
    ) -> list[LimitRow]:
        """The rows of the server for this member and these roles; every row without a member."""
        query = sa.select(
            allowance_limits.c.target_type,
            allowance_limits.c.target_id,
            *(allowance_limits.c[c.limit_column] for c in categories.CATEGORIES),
        ).where(allowance_limits.c.guild_id == guild_id)
        if member_id is not None:
            query = query.where(
                sa.or_(
                    sa.and_(
                        allowance_limits.c.target_type == "member",
                        allowance_limits.c.target_id == member_id,
                    ),
                    sa.and_(
                        allowance_limits.c.target_type == "role",
                        allowance_limits.c.target_id.in_(role_ids),
                    ),
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.order_by(allowance_limits.c.target_id))).fetchall()
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
        ``upscales``; KEEP leaves one as it is), making the row if need be."""
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

    async def uses_by_server(self, since: float) -> dict[int, dict[str, int]]:
        """Every server's requests since ``since``, by category."""
        query = (
            sa.select(allowance_uses.c.guild_id, allowance_uses.c.category, sa.func.count())
            .where(allowance_uses.c.at >= since, allowance_uses.c.guild_id.is_not(None))
            .group_by(allowance_uses.c.guild_id, allowance_uses.c.category)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).fetchall()
        counts: dict[int, dict[str, int]] = {}
        for guild_id, category, n in rows:
            counts.setdefault(int(guild_id), dict.fromkeys(CATEGORIES, 0))[str(category)] = int(n)
        return counts

    # -- credits ------------------------------------------------------------------------------

    async def credit_day(self, day: str) -> CreditDay | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(credit_days.select().where(credit_days.c.day == day))).first()
        return CreditDay(*row) if row is not None else None

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

        Each update is one conditional statement, so readings from several processes, even out
        of order, add every drop once: a reading older than the last one is ignored. A rise is
        a top-up and spends nothing (spending in the same interval is then missed). The first
        reading of a day starts it with what the jobs it may already have in it are taken to
        cost: those the API took since midnight, and those whose paid request is out. A job is
        stamped taken only once the API's answer is in, after its charge: one charged before
        this reading and stamped after it would be in no later drop, and out of the reserve
        from the next reading on. One charged after it is then counted twice that day.
        ``default_costs``: a cost per cost category, by its credit_days column.
        """
        row = credit_days.c
        drop = sa.case((row.last_credits > credits, row.last_credits - credits), else_=0)

        def taken_since_last(category: str) -> sa.ScalarSelect[int]:
            return (
                sa.select(sa.func.count())
                .select_from(allowance_uses)
                .where(
                    allowance_uses.c.category == category,
                    allowance_uses.c.paid_at > row.read_at,
                    allowance_uses.c.paid_at <= at,
                )
                .scalar_subquery()
            )

        def learned(category: CostCategory) -> sa.ColumnElement[Any]:
            # Only a drop that one category alone can explain tells what it costs, and only
            # upwards: a job is stamped paid after its charge, so a window can hold one charged
            # before it and make the category look cheaper than it is. The day starts from the
            # defaults or the last day's costs, which are thus a floor.
            n, column = taken_since_last(category.name), row[category.cost_column]
            cost = (drop + n - 1) // n
            others = (
                taken_since_last(o.name) == 0 for o in categories.CATEGORIES if o is not category
            )
            return sa.case((sa.and_(drop > 0, n > 0, *others, cost > column), cost), else_=column)

        renew = (
            credit_days.update()
            .where(row.day == day, row.read_at < at)
            .values(
                **{c.cost_column: learned(c) for c in categories.CATEGORIES},
                spent=row.spent + drop,
                last_credits=credits,
                read_at=at,
            )
        )
        for _ in range(2):
            async with self._engine.begin() as conn:
                if (await conn.execute(renew)).rowcount:
                    return
                exists = (await conn.execute(sa.select(row.day).where(row.day == day))).first()
            if exists is not None:
                return
            defaults = (default_costs[c.cost_column] for c in categories.CATEGORIES)
            costs = dict(zip(CATEGORIES, await self.costs(day, *defaults), strict=True))
            try:
                async with self._engine.begin() as conn:
                    taken = (
                        await conn.execute(
                            sa.select(allowance_uses.c.category, sa.func.count())
                            .select_from(
                                allowance_uses.outerjoin(jobs, jobs.c.id == allowance_uses.c.job_id)
                            )
                            .where(
                                sa.or_(
                                    allowance_uses.c.paid_at >= since,
                                    sa.and_(
                                        allowance_uses.c.paid_at.is_(None),
                                        jobs.c.state == JobState.SUBMITTING.value,
                                    ),
                                )
                            )
                            .group_by(allowance_uses.c.category)
                        )
                    ).fetchall()
                    counts = {str(c): int(n) for c, n in taken}
                    await conn.execute(
                        credit_days.insert().values(
                            day=day,
                            spent=sum(counts.get(name, 0) * cost for name, cost in costs.items()),
                            last_credits=credits,
                            read_at=at,
                            **{c.cost_column: costs[c.name] for c in categories.CATEGORIES},
                        )
                    )
                return
            except IntegrityError:
                # Another process began the day meanwhile: add this reading to its row.
                continue

    async def costs(self, day: str, *defaults: int) -> tuple[int, ...]:
        """What a job of each cost category (in their order) was seen to cost by day ``day``
        (its readings, or the last day's before it), as the budget counts them; ``defaults`` if
        no day had any."""
        query = (
            sa.select(*(credit_days.c[c.cost_column] for c in categories.CATEGORIES))
            .where(credit_days.c.day <= day)
            .order_by(credit_days.c.day.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return tuple(int(cost) for cost in row) if row is not None else defaults
