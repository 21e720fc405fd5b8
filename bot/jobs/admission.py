"""Whether a new job may be stored: the per-user running limit and the daily quotas, as one
condition of the job's INSERT … SELECT, so that the counts and the insert are one atomic step.

A storm of clicks by one member, or by a whole server, cannot pass a limit by even one: on
SQLite one writer runs at a time, on PostgreSQL the advisory locks of ``lock_keys`` make
requests that count the same rows take turns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bot.jobs.cost_keys import COST_KEYS, CostKey, category_key
from bot.jobs.statements import NEW_ROW, NEW_ROW_COLUMNS, bound
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


# The admission's conditions are built once per shape (which checks apply, in a server or not,
# the job's cost key) with every value bound by name: built anew they cost about 30 ms of CPU per
# click with a budget set (a CASE of a learnt cost per cost key, for the budget and again for the
# server's credits), more than all the rest of a click (docs/performance.md §8). The new row's
# own values come as ``new_requester_id`` and ``new_guild_id`` (bot.jobs.statements.bound), the
# others as ``_params`` names them.
_REQUESTER = sa.bindparam("new_requester_id", type_=jobs.c.requester_id.type)
_GUILD = sa.bindparam("new_guild_id", type_=jobs.c.guild_id.type)
_SINCE = sa.bindparam("since", type_=sa.Float)
# Where a budget's values are bound: the day's credit budget, or a server's credits.
_BUDGETS = ("budget", "server_credits")
_KEY_NAMES = frozenset(key.name for key in COST_KEYS)

UNFINISHED, MEMBER, SERVER, SERVER_CREDITS, BUDGET = (
    "unfinished",
    "member",
    "server",
    "server_credits",
    "budget",
)
# Which checks apply, whether the job is in a server, the job's cost key.
Shape = tuple[tuple[str, ...], bool, str]


def _unfinished_of() -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(jobs)
        .where(
            jobs.c.requester_id == _REQUESTER,
            jobs.c.state.in_([s.value for s in UNFINISHED_STATES]),
        )
        .scalar_subquery()
    )


def _uses_today(*conditions: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(allowance_uses)
        .where(allowance_uses.c.at >= _SINCE, *conditions)
        .scalar_subquery()
    )


def same_place(guild_id: int | None) -> sa.ColumnElement[bool]:
    """Uses in this server, or in DMs for None."""
    return (
        allowance_uses.c.guild_id.is_(None)
        if guild_id is None
        else allowance_uses.c.guild_id == guild_id
    )


def _member_uses(in_guild: bool) -> sa.ScalarSelect[int]:
    here = allowance_uses.c.guild_id == _GUILD if in_guild else allowance_uses.c.guild_id.is_(None)
    return _uses_today(
        allowance_uses.c.requester_id == _REQUESTER,
        allowance_uses.c.category == sa.bindparam("category", type_=allowance_uses.c.category.type),
        here,
    )


def _costs(budget: str) -> dict[str, sa.ColumnElement[Any]]:
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


def _day(budget: str) -> sa.BindParameter[str]:
    return sa.bindparam(f"{budget}_day", type_=credit_days.c.day.type)


def _learnt(budget: str, key: CostKey) -> sa.ColumnElement[Any]:
    # Day keys are ISO dates: their order as text is the calendar's.
    last = (
        sa.select(credit_costs.c.cost)
        .where(credit_costs.c.key == key.name, credit_costs.c.day <= _day(budget))
        .order_by(credit_costs.c.day.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.func.coalesce(last, sa.bindparam(f"{budget}_default_{key.name}", type_=sa.Integer))


def _ledger(budget: str, column: sa.Column[Any], default: float) -> sa.ColumnElement[Any]:
    day = credit_days.c.day == _day(budget)
    return sa.func.coalesce(sa.select(column).where(day).scalar_subquery(), default)


def _cost_of_uses(budget: str) -> sa.ColumnElement[Any]:
    # A key no release of this code names (a later one's) is reserved at the last, the dearest.
    *first, (_, last) = _costs(budget).items()
    cost = sa.case(*((allowance_uses.c.cost_key == name, c) for name, c in first), else_=last)
    return sa.func.coalesce(sa.func.sum(cost), 0)


def _this_job(budget: str, job_key: str) -> sa.ColumnElement[Any]:
    return _costs(budget)[job_key]


def _credits(budget: str) -> sa.BindParameter[int]:
    return sa.bindparam(f"{budget}_credits", type_=sa.Integer)


def _budget_left(job_key: str) -> sa.ColumnElement[bool]:
    """Whether the day's spending, plus what jobs not yet in a reading are taken to cost, plus
    this job, stays within the budget.

    A job is not in the last reading yet when the API took it after that reading began, or has
    not been taken yet (queued, or its request under way): such jobs are reserved at what their
    cost key is taken to cost. One taken just before a reading may be counted twice until the next
    reading, never none.
    """
    pending = (
        sa.select(_cost_of_uses(BUDGET))
        .where(
            # Not yet taken, whichever day it was asked on (one queued before midnight is paid
            # today), or taken today after the last reading began.
            sa.or_(
                allowance_uses.c.paid_at.is_(None),
                sa.and_(
                    allowance_uses.c.paid_at >= _SINCE,
                    allowance_uses.c.paid_at > _ledger(BUDGET, credit_days.c.read_at, 0.0),
                ),
            ),
        )
        .scalar_subquery()
    )
    spent = _ledger(BUDGET, credit_days.c.spent, 0)
    return spent + pending + _this_job(BUDGET, job_key) <= _credits(BUDGET)


def _server_credits_left(job_key: str) -> sa.ColumnElement[bool]:
    """Whether what the server's requests of the day are taken to cost, plus this job, stays
    within the server's credits: each counted at the costs the budget uses (no reading says
    which server a charge was for)."""
    used = (
        sa.select(_cost_of_uses(SERVER_CREDITS))
        .where(allowance_uses.c.guild_id == _GUILD, allowance_uses.c.at >= _SINCE)
        .scalar_subquery()
    )
    return used + _this_job(SERVER_CREDITS, job_key) <= _credits(SERVER_CREDITS)


@functools.lru_cache(maxsize=256)
def _condition(check: str, in_guild: bool, job_key: str) -> sa.ColumnElement[bool]:
    if check == UNFINISHED:
        return _unfinished_of() < sa.bindparam("max_unfinished", type_=sa.Integer)
    if check == MEMBER:
        return _member_uses(in_guild) < sa.bindparam("member_limit", type_=sa.Integer)
    if check == SERVER:
        server = _uses_today(allowance_uses.c.guild_id == _GUILD)
        return server < sa.bindparam("server_limit", type_=sa.Integer)
    if check == SERVER_CREDITS:
        return _server_credits_left(job_key)
    return _budget_left(job_key)


@functools.lru_cache(maxsize=256)
def _holds(check: str, in_guild: bool, job_key: str) -> sa.Select[Any]:
    return sa.select(_condition(check, in_guild, job_key))


@functools.lru_cache(maxsize=256)
def admitted_insert(shape: Shape) -> sa.Insert:
    """The new job's INSERT … SELECT under every check of ``shape``, its row's values bound as
    bot.jobs.statements.bound names them, the checks' as ``Admission.params``."""
    checks, in_guild, job_key = shape
    condition = sa.and_(*(_condition(check, in_guild, job_key) for check in checks))
    return jobs.insert().from_select(NEW_ROW_COLUMNS, NEW_ROW.where(condition))


@dataclass(frozen=True)
class Admission:
    """What must hold for a job to be stored: the shape of its checks and their values."""

    shape: Shape
    params: dict[str, Any]


def _shape(values: dict[str, Any], max_unfinished: int | None, quota: Quota | None) -> Shape:
    in_guild = values["guild_id"] is not None
    checks = []
    if max_unfinished is not None:
        checks.append(UNFINISHED)
    if quota is not None:
        if quota.member_limit is not None:
            checks.append(MEMBER)
        if quota.server_limit is not None and in_guild:
            checks.append(SERVER)
        if quota.server_credits is not None and in_guild:
            checks.append(SERVER_CREDITS)
        if quota.budget is not None:
            checks.append(BUDGET)
    # The job's cost key changes the SQL only where the day's costs are summed; one not named
    # by this release is reserved at the last, the dearest.
    key = ""
    if quota is not None and sums_the_day(quota):
        key = quota.key if quota.key in _KEY_NAMES else COST_KEYS[-1].name
    return tuple(checks), in_guild, key


def _params(
    values: dict[str, Any], max_unfinished: int | None, quota: Quota | None
) -> dict[str, Any]:
    params = bound({"requester_id": values["requester_id"], "guild_id": values["guild_id"]})
    params["max_unfinished"] = max_unfinished
    if quota is None:
        return params
    params.update(
        since=quota.since,
        category=quota.category,
        member_limit=quota.member_limit,
        server_limit=quota.server_limit,
    )
    for name, budget in zip(_BUDGETS, (quota.budget, quota.server_credits), strict=True):
        if budget is None:
            continue
        params[f"{name}_day"] = budget.day
        params[f"{name}_credits"] = budget.credits
        for key in COST_KEYS:
            params[f"{name}_default_{key.name}"] = budget.default_cost(key)
    return params


def admission(
    values: dict[str, Any], max_unfinished: int | None, quota: Quota | None
) -> Admission | None:
    """What must hold for the job to be stored, as one condition of its INSERT … SELECT
    (``admitted_insert``), so the counts and the insert cannot be split by another request (on
    PostgreSQL with the help of locks, see ``create``); None when nothing limits it."""
    shape = _shape(values, max_unfinished, quota)
    if not shape[0]:
        return None
    return Admission(shape, _params(values, max_unfinished, quota))


def sums_the_day(quota: Quota | None) -> bool:
    """Whether checking ``quota`` adds up what each of the day's jobs is taken to cost (the
    credit budget, a server's credits): about 1 µs a job on SQLite, 14 ms of CPU at 10,000 jobs
    in a day, so not a statement for the event loop (bot.jobs.database)."""
    return quota is not None and (quota.budget is not None or quota.server_credits is not None)


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
    checks, in_guild, job_key = _shape(values, max_unfinished, quota)
    params = _params(values, max_unfinished, quota)

    def holds(check: str) -> bool:
        return bool(conn.execute(_holds(check, in_guild, job_key), params).scalar_one())

    if max_unfinished is not None and not holds(UNFINISHED):
        return TooManyJobs(max_unfinished)
    if quota is None:
        return None
    if quota.member_limit is not None and not holds(MEMBER):
        return OverQuota("member", quota.member_limit)
    if quota.budget is not None and not holds(BUDGET):
        return OverQuota("budget", quota.budget.credits)
    if SERVER in checks and quota.server_limit is not None and not holds(SERVER):
        return OverQuota("server", quota.server_limit)
    if SERVER_CREDITS in checks and quota.server_credits is not None and not holds(SERVER_CREDITS):
        return OverQuota("server_credits", quota.server_credits.credits)
    return None
