"""Daily allowances and the credit budget: which limits a request must stay within, how a
member's allowance follows from the settings and the limits admins set, and the words for a
refusal and for /mj usage.

The counting itself happens where a job is stored (bot.jobs.admission), so a storm of clicks
cannot pass a limit; this module decides the numbers. A day is a calendar day of
QUOTA_TIMEZONE; allowances count per member per server (a member's limits are the server's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from bot.jobs import texts
from bot.jobs.admission import Budget, OverQuota, Quota, TooManyJobs
from bot.jobs.ledger import GENERATION, UPSCALE, CreditDay, Ledger, LimitRow
from bot.jobs.tables import UNLIMITED_ROW, JobKind
from bot.jobs.types import Refused

log = logging.getLogger(__name__)

# What a generation and an upscale are taken to cost before readings of the credit endpoint
# have shown it (kie.ai's and midapi.ai's list prices are at or under these).
GENERATION_COST = 8
UPSCALE_COST = 2
TOP_USERS = 5


def category_of(kind: JobKind) -> str:
    """What a job counts as: anything that makes a new grid is a generation."""
    return UPSCALE if kind is JobKind.UPSCALE else GENERATION


@dataclass(frozen=True)
class Day:
    key: str
    start: float
    end: float


def day_of(timezone: ZoneInfo, now: float) -> Day:
    local = datetime.fromtimestamp(now, timezone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # Wall-clock arithmetic: the next midnight, also across a change to or from summer time.
    end = start + timedelta(days=1)
    return Day(start.date().isoformat(), start.timestamp(), end.timestamp())


@dataclass(frozen=True)
class Allowance:
    """A member's daily numbers; None is unlimited."""

    imagines: int | None
    upscales: int | None

    def of(self, category: str) -> int | None:
        return self.upscales if category == UPSCALE else self.imagines


@dataclass(frozen=True)
class Rules:
    """The settings' part: what holds where no admin set a limit."""

    imagines: int | None = 20
    upscales: int | None = 40
    server_jobs: int | None = None
    budget: int | None = None
    timezone: str = "UTC"


def _stored(value: int | None) -> int | None:
    return None if value == UNLIMITED_ROW else value


def resolve(rows: list[LimitRow], default: Allowance) -> Allowance:
    """A member-specific limit beats the roles'; the roles' is the most generous of them
    (unlimited beats any number); with neither, the settings'."""

    def one(pick: Callable[[LimitRow], int | None], fallback: int | None) -> int | None:
        for row in rows:
            if row.target_type == "member" and pick(row) is not None:
                return _stored(pick(row))
        roles = [
            _stored(pick(row))
            for row in rows
            if row.target_type == "role" and pick(row) is not None
        ]
        if not roles:
            return fallback
        if None in roles:
            return None
        return max(v for v in roles if v is not None)

    return Allowance(
        one(lambda r: r.imagines, default.imagines), one(lambda r: r.upscales, default.upscales)
    )


UNLIMITED = Rules(imagines=None, upscales=None)


class Spending:
    def __init__(
        self, ledger: Ledger, rules: Rules, *, now: Callable[[], float] = time.time
    ) -> None:
        self.ledger = ledger
        self.rules = rules
        self._timezone = ZoneInfo(rules.timezone)
        self._now = now
        self._default = Allowance(rules.imagines, rules.upscales)
        # Told when a request is refused for the budget (the credit watch tells the admins).
        self.on_budget_reached: Callable[[Day], None] | None = None

    def today(self) -> Day:
        return day_of(self._timezone, self._now())

    async def allowance(
        self, guild_id: int | None, member_id: int, role_ids: tuple[int, ...]
    ) -> Allowance:
        if guild_id is None:
            return self._default
        return resolve(await self.ledger.limits(guild_id, member_id, role_ids), self._default)

    async def quota(
        self, kind: JobKind, requester_id: int, guild_id: int | None, role_ids: tuple[int, ...]
    ) -> Quota:
        category = category_of(kind)
        day = self.today()
        allowance = await self.allowance(guild_id, requester_id, role_ids)
        budget = None
        if self.rules.budget is not None:
            budget = Budget(day.key, self.rules.budget, GENERATION_COST, UPSCALE_COST)
        return Quota(
            category=category,
            since=day.start,
            member_limit=allowance.of(category),
            server_limit=self.rules.server_jobs,
            budget=budget,
        )

    def refusal(self, exc: OverQuota | TooManyJobs, kind: JobKind, requester_id: int) -> Refused:
        """What the requester is told for a limit that refused their request."""
        if isinstance(exc, TooManyJobs):
            return Refused(texts.too_many_running(exc.limit))
        log.info(
            "refused over the %s daily limit of %d kind=%s user=%s",
            exc.which,
            exc.limit,
            kind,
            requester_id,
        )
        return Refused(self._refused(exc, kind), whole=True)

    def _refused(self, exc: OverQuota, kind: JobKind) -> str:
        day = self.today()
        more = f"more <t:{int(day.end)}:R>"
        if exc.which == "budget":
            if self.on_budget_reached is not None:
                self.on_budget_reached(day)
            return f"The bot has spent its daily credit budget ({exc.limit} credits); {more}"
        if exc.which == "server":
            if exc.limit == 0:
                return "This server allows no jobs (DAILY_JOBS_PER_SERVER is 0)"
            return f"This server has used its {exc.limit} jobs for today; {more}"
        what = _noun(category_of(kind), exc.limit)
        if exc.limit == 0:
            return f"Your allowance here has no {what}; an admin can change that with /mj limit"
        return f"You have used your {exc.limit} {what} for today; {more}"

    async def credits_today(self) -> CreditDay | None:
        return await self.ledger.credit_day(self.today().key)

    async def record_credits(self, credits: int, at: float) -> None:
        day = day_of(self._timezone, at)
        await self.ledger.record_credits(
            day.key,
            day.start,
            credits,
            at,
            generation_cost=GENERATION_COST,
            upscale_cost=UPSCALE_COST,
        )

    def budget_spent(self, credit_day: CreditDay | None) -> bool:
        return (
            self.rules.budget is not None
            and credit_day is not None
            and credit_day.spent >= self.rules.budget
        )

    def summary(self) -> str:
        """The settings' limits in a line for /mj status."""
        rules = self.rules
        return (
            f"{_of(rules.imagines)} generations and {_of(rules.upscales)} upscales per member, "
            f"{_of(rules.server_jobs)} jobs per server, budget {_of(rules.budget)} credits; "
            f"the day turns at midnight {rules.timezone} (roles and members: /mj limit)"
        )

    # -- /mj limit ----------------------------------------------------------------------------

    async def change_limit(
        self,
        guild_id: int,
        target_type: str,
        target_id: int,
        numbers: dict[str, int | None],
        *,
        reset: bool,
        by: int,
    ) -> str:
        """Set, remove or show a role's or member's limits; the answer for the admin."""
        who = _mention(guild_id, target_type, target_id)
        if reset:
            removed = await self.ledger.reset_limit(guild_id, target_type, target_id)
            log.info(
                "limits reset guild=%s %s=%s by=%s removed=%s",
                guild_id,
                target_type,
                target_id,
                by,
                removed,
            )
            if not removed:
                return f"{who} had no limits of its own; nothing changed."
            return f"✅ Removed the limits of {who}: {_falls_back(target_type)}."
        if numbers:
            stored = {k: UNLIMITED_ROW if v is None else v for k, v in numbers.items()}
            await self.ledger.set_limit(guild_id, target_type, target_id, now=self._now(), **stored)
            log.info(
                "limits set guild=%s %s=%s by=%s %s",
                guild_id,
                target_type,
                target_id,
                by,
                " ".join(f"{k}={_of(v)}" for k, v in numbers.items()),
            )
        rows = [
            r
            for r in await self.ledger.limits(guild_id)
            if (r.target_type, r.target_id) == (target_type, target_id)
        ]
        if not rows:
            return f"{who} has no limits of its own: {_falls_back(target_type)}."
        row = rows[0]
        parts = [
            f"{_set_or_not(row.imagines)} generations",
            f"{_set_or_not(row.upscales)} upscales",
        ]
        lead = "✅ " if numbers else ""
        return (
            f"{lead}{who}: {' and '.join(parts)} a day. A member's own limit beats their roles'; "
            "with several roles the most generous counts. What was used today still counts."
        )

    # -- /mj usage ----------------------------------------------------------------------------

    async def member_usage(
        self, guild_id: int | None, member_id: int, role_ids: tuple[int, ...], *, own: bool
    ) -> str:
        day = self.today()
        allowance = await self.allowance(guild_id, member_id, role_ids)
        used = await self.ledger.member_uses(guild_id, member_id, day.start)
        parts = [
            f"{used[category]} of {_of(allowance.of(category))} {_noun(category, 2)}"
            for category in (GENERATION, UPSCALE)
        ]
        who = "You" if own else f"<@{member_id}>"
        return f"{who}, today: {', '.join(parts)}; resets <t:{int(day.end)}:R>."

    async def server_usage(self, guild_id: int) -> str:
        day = self.today()
        total, top = await self.ledger.server_uses(guild_id, day.start, TOP_USERS)
        lines = [f"**This server today:** {total} of {_of(self.rules.server_jobs)} jobs."]
        if top:
            lines.append(
                "**Top users today:** " + ", ".join(f"<@{user}> {n}" for user, n in top) + "."
            )
        if self.rules.budget is not None:
            ledger = await self.credits_today()
            spent = "no reading yet" if ledger is None else f"{ledger.spent}"
            lines.append(
                f"**Credits spent today:** {spent} of {self.rules.budget} (`DAILY_CREDIT_BUDGET`)."
            )
        return "\n".join(lines)


def _of(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


def _noun(category: str, n: int) -> str:
    noun = "upscale" if category == UPSCALE else "generation"
    return noun if n == 1 else f"{noun}s"


def _mention(guild_id: int, target_type: str, target_id: int) -> str:
    if target_type == "member":
        return f"<@{target_id}>"
    return "@everyone" if target_id == guild_id else f"<@&{target_id}>"


def _falls_back(target_type: str) -> str:
    if target_type == "member":
        return "their roles' limits apply, or the settings'"
    return "its members have their other roles' limits, or the settings'"


def _set_or_not(value: int | None) -> str:
    return "(not set)" if value is None else _of(_stored(value))
