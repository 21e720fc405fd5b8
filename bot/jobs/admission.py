"""Whether a new job may be stored: the per-user running limit and the daily quotas, as one
condition of the job's INSERT … SELECT, so that the counts and the insert are one atomic step.

A storm of clicks by one member, or by a whole server, cannot pass a limit by even one: on
SQLite one writer runs at a time, on PostgreSQL the advisory locks of ``lock_keys`` make
requests that count the same rows take turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bot.jobs.cost_keys import COST_KEYS, CostKey, category_key
from bot.jobs.tables import UNFINISHED_STATES, allowance_uses, credit_costs, credit_days, jobs


@dataclass(frozen=True)
class Budget:
    """The daily credit budget a new job must leave room in (see ``credit_days``)."""

    day: str
    credits: int
    # What a job of each cost category is taken to cost until readings have shown it: a field
    # per category, named as its cost_column (bot.jobs.categories); a cost key's default is a
    # multiple of its category's (bot.jobs.cost_keys).
    generation_cost: int
    upscale_cost: int
    video_cost: int

    def default_cost(self, key: CostKey) -> int:
        return key.times * int(getattr(self, key.category.cost_column))


@dataclass(frozen=True)
class Quota:
    """The daily limits a new job must stay within, checked in the step that stores it.

    ``category`` is what the job counts as ("generation", "upscale", "video"); ``since`` is when the
    day began. A None limit is unlimited; the server's limits (its jobs, and its credits counted
    with the costs the budget uses) apply only in a server. ``cost_key`` is what the budget
    reserves it at (bot.jobs.cost_keys; None: its category's own key), set by the store from
    the job's kind.
    """

    category: str
    since: float
    member_limit: int | None = None
    server_limit: int | None = None
    budget: Budget | None = None
    server_credits: Budget | None = None
    cost_key: str | None = None

    @property
    def key(self) -> str:
        return self.cost_key or self.category


class OverQuota(Exception):
    """Storing the job would pass a daily limit: ``which`` is "member", "server",
    "server_credits" or "budget"."""

    def __init__(self, which: str, limit: int) -> None:
        self.which = which
        self.limit = limit
        super().__init__(f"over the {which} daily limit of {limit}")


class TooManyJobs(Exception):
    """The requester already has as many unfinished jobs as they may."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"at most {limit} unfinished jobs per requester")


def _unfinished_of(requester_id: int) -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(jobs)
        .where(
            jobs.c.requester_id == requester_id,
            jobs.c.state.in_([s.value for s in UNFINISHED_STATES]),
        )
        .scalar_subquery()
    )


def _uses_today(quota: Quota, *conditions: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(allowance_uses)
        .where(allowance_uses.c.at >= quota.since, *conditions)
        .scalar_subquery()
    )


def same_place(guild_id: int | None) -> sa.ColumnElement[bool]:
    """Uses in this server, or in DMs for None."""
    return (
        allowance_uses.c.guild_id.is_(None)
        if guild_id is None
        else allowance_uses.c.guild_id == guild_id
    )


def _member_uses(values: dict[str, Any], quota: Quota) -> sa.ScalarSelect[int]:
    return _uses_today(
        quota,
        allowance_uses.c.requester_id == values["requester_id"],
        allowance_uses.c.category == quota.category,
        same_place(values["guild_id"]),
    )


def _costs(budget: Budget) -> dict[str, sa.ColumnElement[Any]]:
    """What a job of each cost key (by name) is taken to cost on the budget's day: what the
    readings showed by that day, else the budget's defaults. A new day goes by the last day's
    costs until its own readings teach more: reserved at the defaults, its jobs could pass the
    budget when they were seen to cost more. A key is reserved at no less than ``times`` its
    category key's cost (bot.jobs.cost_keys.floored, the same rule in Python)."""
    learnt = {key.name: _learnt(budget, key) for key in COST_KEYS}
    return {key.name: _floored(learnt, key) for key in COST_KEYS}


def _floored(learnt: dict[str, sa.ColumnElement[Any]], key: CostKey) -> sa.ColumnElement[Any]:
    own, base = learnt[key.name], category_key(key)
    if base is key:
        return own
    floor = learnt[base.name] * key.times
    # A CASE rather than GREATEST/MAX: the same SQL on SQLite and PostgreSQL.
    return sa.case((own >= floor, own), else_=floor)


def _learnt(budget: Budget, key: CostKey) -> sa.ColumnElement[Any]:
    # Day keys are ISO dates: their order as text is the calendar's.
    last = (
        sa.select(credit_costs.c.cost)
        .where(credit_costs.c.key == key.name, credit_costs.c.day <= budget.day)
        .order_by(credit_costs.c.day.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.func.coalesce(last, budget.default_cost(key))


def _ledger(budget: Budget, column: sa.Column[Any], default: float) -> sa.ColumnElement[Any]:
    day = credit_days.c.day == budget.day
    return sa.func.coalesce(sa.select(column).where(day).scalar_subquery(), default)


def _cost_of_uses(budget: Budget) -> sa.ColumnElement[Any]:
    # A key no release of this code names (a later one's) is reserved at the last, the dearest.
    *first, (_, last) = _costs(budget).items()
    cost = sa.case(*((allowance_uses.c.cost_key == name, c) for name, c in first), else_=last)
    return sa.func.coalesce(sa.func.sum(cost), 0)


def _this_job(budget: Budget, quota: Quota) -> sa.ColumnElement[Any]:
    costs = _costs(budget)
    key = quota.key if quota.key in costs else COST_KEYS[-1].name
    return costs[key]


def _budget_left(budget: Budget, quota: Quota) -> sa.ColumnElement[bool]:
    """Whether the day's spending, plus what jobs not yet in a reading are taken to cost, plus
    this job, stays within the budget.

    A job is not in the last reading yet when the API took it after that reading began, or has
    not been taken yet (queued, or its request under way): such jobs are reserved at what their
    cost key is taken to cost. One taken just before a reading may be counted twice until the next
    reading, never none.
    """
    pending = (
        sa.select(_cost_of_uses(budget))
        .where(
            # Not yet taken, whichever day it was asked on (one queued before midnight is paid
            # today), or taken today after the last reading began.
            sa.or_(
                allowance_uses.c.paid_at.is_(None),
                sa.and_(
                    allowance_uses.c.paid_at >= quota.since,
                    allowance_uses.c.paid_at > _ledger(budget, credit_days.c.read_at, 0.0),
                ),
            ),
        )
        .scalar_subquery()
    )
    spent = _ledger(budget, credit_days.c.spent, 0)
    return spent + pending + _this_job(budget, quota) <= budget.credits


def _server_credits_left(budget: Budget, quota: Quota, guild_id: int) -> sa.ColumnElement[bool]:
    """Whether what the server's requests of the day are taken to cost, plus this job, stays
    within the server's credits: each counted at the costs the budget uses (no reading says
    which server a charge was for)."""
    used = (
        sa.select(_cost_of_uses(budget))
        .where(allowance_uses.c.guild_id == guild_id, allowance_uses.c.at >= quota.since)
        .scalar_subquery()
    )
    return used + _this_job(budget, quota) <= budget.credits


def admission(
    values: dict[str, Any], max_unfinished: int | None, quota: Quota | None
) -> sa.ColumnElement[bool] | None:
    """What must hold for the job to be stored, as one condition of its INSERT … SELECT, so the
    counts and the insert cannot be split by another request (on PostgreSQL with the help of
    locks, see ``create``); None when nothing limits it."""
    conditions: list[sa.ColumnElement[bool]] = []
    if max_unfinished is not None:
        conditions.append(_unfinished_of(values["requester_id"]) < max_unfinished)
    if quota is not None:
        if quota.member_limit is not None:
            conditions.append(_member_uses(values, quota) < quota.member_limit)
        if quota.server_limit is not None and values["guild_id"] is not None:
            server = _uses_today(quota, allowance_uses.c.guild_id == values["guild_id"])
            conditions.append(server < quota.server_limit)
        if quota.server_credits is not None and values["guild_id"] is not None:
            conditions.append(_server_credits_left(quota.server_credits, quota, values["guild_id"]))
        if quota.budget is not None:
            conditions.append(_budget_left(quota.budget, quota))
    return sa.and_(*conditions) if conditions else None


# Advisory lock keys: Discord snowflakes cannot be this small, so the budget's never meets one.
_BUDGET_LOCK = 1


def lock_keys(requester_id: int, guild_id: int | None, quota: Quota | None) -> list[int]:
    keys = []
    if quota is not None and quota.budget is not None:
        keys.append(_BUDGET_LOCK)
    counts_server = quota is not None and (
        quota.server_limit is not None or quota.server_credits is not None
    )
    if counts_server and guild_id is not None:
        keys.append(guild_id)
    keys.append(requester_id)
    return keys


def refusal(
    conn: sa.Connection, values: dict[str, Any], max_unfinished: int | None, quota: Quota | None
) -> TooManyJobs | OverQuota | None:
    """Which limit refuses a job with these ``values``, None if none does; asked in the
    transaction of a refused insert (under the same locks), or ahead of one as a preview."""

    def holds(condition: sa.ColumnElement[bool]) -> bool:
        return bool(conn.execute(sa.select(condition)).scalar_one())

    if max_unfinished is not None and not holds(
        _unfinished_of(values["requester_id"]) < max_unfinished
    ):
        return TooManyJobs(max_unfinished)
    if quota is None:
        return None
    if quota.member_limit is not None and not holds(
        _member_uses(values, quota) < quota.member_limit
    ):
        return OverQuota("member", quota.member_limit)
    if quota.budget is not None and not holds(_budget_left(quota.budget, quota)):
        return OverQuota("budget", quota.budget.credits)
    guild_id = values["guild_id"]
    if quota.server_limit is not None and guild_id is not None:
        server = _uses_today(quota, allowance_uses.c.guild_id == guild_id)
        if not holds(server < quota.server_limit):
            return OverQuota("server", quota.server_limit)
    if quota.server_credits is not None and guild_id is not None:
        if not holds(_server_credits_left(quota.server_credits, quota, guild_id)):
            return OverQuota("server_credits", quota.server_credits.credits)
    return None
