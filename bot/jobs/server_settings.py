"""What a server's admins set for their server, beside the owners' door (bot/jobs/servers.py):
today whether /imagine asks the API to translate prompts (``/mj translation on|off``).

Kept in the ``server_settings`` table, so every process and restart sees it; a server without a
row has every setting off. Who is an admin is Discord's business (Manage Server): the cogs
check it, this module only keeps what they decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.ledger import upsert
from bot.jobs.servers import FRESH_SECONDS
from bot.jobs.tables import server_settings


class ServerSettings:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        now: Callable[[], float] = time.time,
        fresh_for: float = FRESH_SECONDS,
    ) -> None:
        self._engine = engine
        self._now = now
        # Every /imagine reads it: a server's row is read at most once every ``fresh_for``
        # seconds, and another process's change is seen within as long.
        self._fresh_for = fresh_for
        self._read: dict[int, tuple[float, bool]] = {}

    async def translates(self, guild_id: int | None) -> bool:
        """Whether /imagine in ``guild_id`` sends ``enableTranslation`` (off outside servers)."""
        if guild_id is None:
            return False
        read = self._read.get(guild_id)
        if read is not None and 0 <= self._now() - read[0] < self._fresh_for:
            return read[1]
        query = server_settings.select().where(server_settings.c.guild_id == guild_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        on = row is not None and bool(row.translate)
        self._read[guild_id] = (self._now(), on)
        return on

    async def set_translation(self, guild_id: int, on: bool, *, by: int) -> None:
        """An admin's decision for their server."""
        values = {"translate": on, "updated_at": self._now(), "updated_by": by}
        await upsert(self._engine, server_settings, {"guild_id": guild_id}, values)
        self._read.pop(guild_id, None)
