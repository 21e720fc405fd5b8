"""The owner's door: the Discord servers the bot spends its owner's credits in, and the daily caps
owners set for each of them.

A server is served when an owner allowed it (``/mj server allow``, kept in the ``servers`` table
and so shared by every process and kept across restarts), or when the settings list it
(``ALLOWED_GUILD_IDS``, ``DISCORD_GUILD_ID``) and no owner stopped it (``/mj server deny``).
Anywhere else every paid request is refused before anything is stored. Who is an owner is
Discord's business (the application's owner or team, plus ``OWNER_IDS``): the cogs check it,
this module only keeps what owners decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.ledger import KEEP, upsert
from bot.jobs.tables import UNLIMITED_ROW, servers

# How long a server's rules read from the store are taken as they are (see ``Servers``).
FRESH_SECONDS = 2.0


@dataclass(frozen=True)
class ServerRules:
    """What holds in one server: whether it is served and why, and its daily caps (None is
    unlimited); ``*_by_owner`` say whether an owner set the cap or the settings give it."""

    guild_id: int
    served: bool
    why: str
    jobs: int | None
    credits: int | None
    jobs_by_owner: bool = False
    credits_by_owner: bool = False


def _cap(stored: int | None, default: int | None) -> tuple[int | None, bool]:
    if stored is None:
        return default, False
    return (None if stored == UNLIMITED_ROW else stored), True


class Servers:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        allowed: Iterable[int] = (),
        jobs: int | None = None,
        credits: int | None = None,
        now: Callable[[], float] = time.time,
        fresh_for: float = FRESH_SECONDS,
    ) -> None:
        self._engine = engine
        # Served by the settings (ALLOWED_GUILD_IDS and DISCORD_GUILD_ID) unless an owner denied.
        self.allowed = frozenset(allowed)
        self._jobs = jobs
        self._credits = credits
        self._now = now
        # Every request asks the door: a storm of clicks reads a server's row once every
        # ``fresh_for`` seconds, and another process's decision is seen within as long.
        self._fresh_for = fresh_for
        self._read: dict[int, tuple[float, ServerRules]] = {}

    def _rules(self, guild_id: int, row: Any | None) -> ServerRules:
        served: bool | None = None if row is None else row.served
        if served is True:
            why = "allowed by an owner (/mj server allow)"
        elif served is False:
            why = "stopped by an owner (/mj server deny)"
        elif guild_id in self.allowed:
            why = "listed in ALLOWED_GUILD_IDS or DISCORD_GUILD_ID"
        else:
            why = "not allowed: an owner runs /mj server allow in it"
        jobs, jobs_by_owner = _cap(None if row is None else row.jobs, self._jobs)
        credits, credits_by_owner = _cap(None if row is None else row.credits, self._credits)
        return ServerRules(
            guild_id,
            served=served if served is not None else guild_id in self.allowed,
            why=why,
            jobs=jobs,
            credits=credits,
            jobs_by_owner=jobs_by_owner,
            credits_by_owner=credits_by_owner,
        )

    async def rules(self, guild_id: int) -> ServerRules:
        read = self._read.get(guild_id)
        if read is not None and 0 <= self._now() - read[0] < self._fresh_for:
            return read[1]
        query = servers.select().where(servers.c.guild_id == guild_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        rules = self._rules(guild_id, row)
        self._read[guild_id] = (self._now(), rules)
        return rules

    async def every(self, guild_ids: Iterable[int]) -> list[ServerRules]:
        """The rules of ``guild_ids`` and of every server an owner decided something for."""
        async with self._engine.connect() as conn:
            rows = {row.guild_id: row for row in await conn.execute(servers.select())}
        ids = sorted({*guild_ids, *rows, *self.allowed})
        return [self._rules(guild_id, rows.get(guild_id)) for guild_id in ids]

    async def decide(
        self,
        guild_id: int,
        *,
        by: int,
        served: bool | None = KEEP,
        jobs: int | None = KEEP,
        credits: int | None = KEEP,
    ) -> ServerRules:
        """An owner's decision: serve the server or stop it, and set its caps (None is
        unlimited); what is not given stays as it was."""
        values: dict[str, Any] = {"updated_at": self._now(), "updated_by": by}
        if served is not KEEP:
            values["served"] = served
        for name, cap in (("jobs", jobs), ("credits", credits)):
            if cap is not KEEP:
                values[name] = UNLIMITED_ROW if cap is None else cap
        await upsert(self._engine, servers, {"guild_id": guild_id}, values)
        self._read.pop(guild_id, None)
        return await self.rules(guild_id)

    async def reset_caps(self, guild_id: int, *, by: int) -> ServerRules:
        """The settings' caps again for this server."""
        query = (
            servers.update()
            .where(servers.c.guild_id == guild_id)
            .values(jobs=None, credits=None, updated_at=self._now(), updated_by=by)
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)
        self._read.pop(guild_id, None)
        return await self.rules(guild_id)
