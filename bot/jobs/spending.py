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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

from bot.jobs import categories, texts
from bot.jobs.admission import Budget, OverQuota, Quota, TooManyJobs
from bot.jobs.allowances import (
    Allowance,
    amount,
    by_option,
    daily_numbers,
    falls_back,
    listed,
    noun,
    per_category,
    resolve,
    set_or_not,
    target_mention,
)
from bot.jobs.cost_keys import COST_KEYS, default_costs, floored
from bot.jobs.kinds.registry import kind_named
from bot.jobs.ledger import CATEGORIES, KEEP, CreditDay, Ledger
from bot.jobs.servers import ServerRules, Servers
from bot.jobs.tables import UNLIMITED_ROW
from bot.jobs.types import NotServed, Refused

log = logging.getLogger(__name__)

# What a generation, an upscale and a video are taken to cost before readings of the credit
# endpoint have shown it (bot.jobs.categories declares them).
GENERATION_COST = categories.GENERATION.default_cost
UPSCALE_COST = categories.UPSCALE.default_cost
VIDEO_COST = categories.VIDEOS.default_cost
# The same by each category's cost_column, as Budget and the ledger take them.
DEFAULT_COSTS = {c.cost_column: c.default_cost for c in categories.CATEGORIES}
TOP_USERS = 5


def category_of(kind: str) -> str:
    """What a job of ``kind`` counts as (its kind's cost category)."""
    return kind_named(kind).category.name


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
class Rules:
    """The settings' part: what holds where no admin set a limit (a daily number per cost
    category, named as its option)."""

    imagines: int | None = categories.GENERATION.default_daily
    upscales: int | None = categories.UPSCALE.default_daily
    videos: int | None = categories.VIDEOS.default_daily
    server_jobs: int | None = None
    budget: int | None = None
    timezone: str = "UTC"


UNLIMITED = Rules(**by_option(lambda c: None))


class Spending:
    def __init__(
        self,
        ledger: Ledger,
        rules: Rules,
        *,
        servers: Servers | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.rules = rules
        # The owner's door; without it (tests of other parts) every server is served, under
        # the settings' server limit.
        self.servers = servers
        self._timezone = ZoneInfo(rules.timezone)
        self._now = now
        self._default = Allowance(
            **{c.option: getattr(rules, c.option) for c in categories.CATEGORIES}
        )
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

    async def server(self, guild_id: int | None) -> ServerRules:
        """The door for a request made in ``guild_id``: its rules, or NotServed when the bot
        spends nothing there (a server no owner allowed, a DM)."""
        if guild_id is None:
            raise NotServed(texts.ONLY_IN_SERVERS)
        rules = await self._rules(guild_id)
        if not rules.served:
            log.info("refused in a server not served guild=%s (%s)", guild_id, rules.why)
            raise NotServed(texts.NOT_SERVED)
        return rules

    async def quota(
        self, kind: str, requester_id: int, guild_id: int | None, role_ids: tuple[int, ...]
    ) -> Quota:
        """The limits a request must stay within; raises NotServed where the bot spends
        nothing."""
        server = await self.server(guild_id)
        category = category_of(kind)
        day = self.today()
        allowance = await self.allowance(guild_id, requester_id, role_ids)
        budget = server_credits = None
        if self.rules.budget is not None:
            budget = self._budget(day, self.rules.budget)
        if server.credits is not None:
            server_credits = self._budget(day, server.credits)
        return Quota(
            category=category,
            since=day.start,
            member_limit=allowance.of(category),
            server_limit=server.jobs,
            budget=budget,
            server_credits=server_credits,
        )

    @staticmethod
    def _budget(day: Day, credits: int) -> Budget:
        return Budget(day.key, credits, **DEFAULT_COSTS)

    def refusal(self, exc: OverQuota | TooManyJobs, kind: str, requester_id: int) -> Refused:
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

    def _refused(self, exc: OverQuota, kind: str) -> str:
        day = self.today()
        more = f"more <t:{int(day.end)}:R>"
        if exc.which == "budget":
            if self.on_budget_reached is not None:
                self.on_budget_reached(day)
            return f"The bot has spent its daily credit budget ({exc.limit} credits); {more}"
        if exc.which in ("server", "server_credits"):
            what = "jobs" if exc.which == "server" else "credits"
            if exc.limit == 0:
                return f"The bot's owner allows this server no {what}"
            return f"This server has used its {exc.limit} {what} for today; {more}"
        what = noun(category_of(kind), exc.limit)
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
            **DEFAULT_COSTS,
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
            f"{per_category(daily_numbers(rules))} per member, "
            f"{amount(rules.server_jobs)} jobs per server unless an owner set its own, "
            f"budget {amount(rules.budget)} credits; "
            f"the day turns at midnight {rules.timezone} (roles and members: /mj limit)"
        )

    async def server_summary(self, guild_id: int) -> str:
        """The limits in force in one server, in a line for its admins."""
        rules, member = await self._rules(guild_id), self.rules
        return (
            f"{per_category(daily_numbers(member))} per "
            f"member unless /mj limit says otherwise; this server: {amount(rules.jobs)} jobs and "
            f"{amount(rules.credits)} credits a day (set by the bot's owner); the day turns at "
            f"midnight {member.timezone}"
        )

    async def decide(
        self,
        guild_id: int,
        *,
        by: int,
        served: bool | None = KEEP,
        caps: Mapping[str, int | None] = MappingProxyType({}),
        reset: bool = False,
    ) -> ServerRules:
        """An owner's /mj server allow or deny (``served``) or limit (``caps``: jobs, credits;
        None is unlimited), or with ``reset`` the settings' caps again; the rules after it."""
        if self.servers is None:
            raise RuntimeError("no servers table to keep an owner's decision in")
        if reset:
            rules = await self.servers.reset_caps(guild_id, by=by)
        else:
            rules = await self.servers.decide(
                guild_id,
                by=by,
                served=served,
                jobs=caps.get("jobs", KEEP),
                credits=caps.get("credits", KEEP),
            )
        log.info(
            "server rules changed guild=%s by=%s served=%s jobs=%s credits=%s",
            guild_id,
            by,
            rules.served,
            amount(rules.jobs),
            amount(rules.credits),
        )
        return rules

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
        who = target_mention(guild_id, target_type, target_id)
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
            return f"✅ Removed the limits of {who}: {falls_back(target_type)}."
        if numbers:
            stored = {k: UNLIMITED_ROW if v is None else v for k, v in numbers.items()}
            await self.ledger.set_limit(guild_id, target_type, target_id, now=self._now(), **stored)
            log.info(
                "limits set guild=%s %s=%s by=%s %s",
                guild_id,
                target_type,
                target_id,
                by,
                " ".join(f"{k}={amount(v)}" for k, v in numbers.items()),
            )
        rows = [
            r
            for r in await self.ledger.limits(guild_id)
            if (r.target_type, r.target_id) == (target_type, target_id)
        ]
        if not rows:
            return f"{who} has no limits of its own: {falls_back(target_type)}."
        row = rows[0]
        parts = [
            f"{set_or_not(number)} {noun(name, 2)}" for name, number in daily_numbers(row).items()
        ]
        lead = "✅ " if numbers else ""
        server = await self._rules(guild_id)
        caps = ""
        if server.jobs is not None or server.credits is not None:
            caps = (
                f" Whatever a member may, this server's caps set by the bot's owner hold: "
                f"{amount(server.jobs)} jobs and {amount(server.credits)} credits a day."
            )
        return (
            f"{lead}{who}: {listed(parts)} a day. A member's own limit beats their roles'; "
            f"with several roles the most generous counts. What was used today still counts.{caps}"
        )

    # -- /mj usage ----------------------------------------------------------------------------

    async def member_usage(
        self, guild_id: int | None, member_id: int, role_ids: tuple[int, ...], *, own: bool
    ) -> str:
        day = self.today()
        allowance = await self.allowance(guild_id, member_id, role_ids)
        used = await self.ledger.member_uses(guild_id, member_id, day.start)
        parts = [
            f"{used[category]} of {amount(allowance.of(category))} {noun(category, 2)}"
            for category in CATEGORIES
        ]
        who = "You" if own else f"<@{member_id}>"
        return f"{who}, today: {', '.join(parts)}; resets <t:{int(day.end)}:R>."

    async def server_usage(self, guild_id: int) -> str:
        """The server's day for its admins: its jobs and what they are taken to cost against
        the caps the owner set, its top users; nothing of other servers or the account."""
        day = self.today()
        rules = await self._rules(guild_id)
        total, top = await self.ledger.server_uses(guild_id, day.start, TOP_USERS)
        used = await self.ledger.server_keys(guild_id, day.start)
        credits = self._cost(used, await self._costs())
        lines = [
            f"**This server today:** {total} of {amount(rules.jobs)} jobs, about {credits} of "
            f"{amount(rules.credits)} credits (caps set by the bot's owner)."
        ]
        if top:
            lines.append(
                "**Top users today:** " + ", ".join(f"<@{user}> {n}" for user, n in top) + "."
            )
        return "\n".join(lines)

    async def budget_usage(self) -> str:
        """The bot-wide credits of the day, for owners, and what each cost key is taken to
        cost."""
        ledger = await self.credits_today()
        spent = "no reading yet" if ledger is None else f"{ledger.spent}"
        return (
            f"**Credits spent today, every server:** {spent} of {amount(self.rules.budget)}.\n"
            f"**Credits per job, as the budget counts them:** {await self.costs_line()}."
        )

    async def costs_line(self) -> str:
        """What a job of each cost key is taken to cost today (learnt from the credit
        readings, else the defaults), for owners."""
        costs = await self._costs()
        return ", ".join(f"{key.words} {costs[key.name]}" for key in COST_KEYS)

    async def server_lines(self, names: dict[int, str]) -> list[str]:
        """A line per server the bot is in (``names``) or an owner decided something for:
        served or not and why, today's jobs and credits against its caps; for owners."""
        if self.servers is None:
            return []
        day = self.today()
        uses = await self.ledger.uses_by_server(day.start)
        costs = await self._costs()
        lines = []
        for rules in await self.servers.every(names):
            used = uses.get(rules.guild_id, {})
            name = names.get(rules.guild_id, "(the bot is not in it)")
            state = "✅ served" if rules.served else "⛔ not served"
            lines.append(
                f"- **{name}** `{rules.guild_id}`: {state}, {rules.why}; today "
                f"{sum(used.values())} of {amount(rules.jobs)} jobs, about "
                f"{self._cost(used, costs)} of {amount(rules.credits)} credits"
            )
        return lines

    async def _rules(self, guild_id: int) -> ServerRules:
        if self.servers is None:
            return ServerRules(guild_id, True, "", self.rules.server_jobs, None)
        return await self.servers.rules(guild_id)

    async def _costs(self) -> dict[str, int]:
        """What a job of each cost key is taken to cost today, as the budget counts: learnt,
        yet no less than ``times`` its category key's (bot.jobs.cost_keys.floored)."""
        return floored(await self.ledger.costs(self.today().key, default_costs(DEFAULT_COSTS)))

    @staticmethod
    def _cost(used: dict[str, int], costs: dict[str, int]) -> int:
        # A key no release of this code names (a later one's) counts at the dearest.
        dearest = costs[COST_KEYS[-1].name]
        return sum(n * costs.get(key, dearest) for key, n in used.items())
