"""The bot as a whole: the Discord client, the services built from the settings, the cogs
between them; started in order and stopped in the reverse one."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord.ext import commands

from bot.config import Settings
from bot.health import HealthMonitor
from bot.jobs.types import PollPolicy
from bot.midjourney.sandbox import SandboxAPI
from bot.services import Services, open_services
from cogs import add_cogs

log = logging.getLogger(__name__)


class UpscaleBot(commands.Bot):
    """The Discord side: the gateway, REST and the slash-command sync. It builds nothing and
    holds no service; the cogs it is given hold what they use."""

    def __init__(
        self, *, guild_id: int | None, health: HealthMonitor, guild_ready_timeout: float = 2.0
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=guild_ready_timeout,
        )
        self._guild_id = guild_id
        self._health = health

    async def sync_commands(self) -> None:
        """Tell Discord the slash commands of the cogs added so far."""
        if self._guild_id is not None:
            guild = discord.Object(self._guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d slash command(s) to server %s", len(synced), self._guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d slash command(s) globally (may take up to an hour)", len(synced))

    async def on_connect(self) -> None:
        self._health.gateway_up()

    async def on_resumed(self) -> None:
        self._health.gateway_up()

    async def on_disconnect(self) -> None:
        self._health.gateway_down()

    async def on_ready(self) -> None:
        user = self.user
        log.info(
            "connected to Discord as %s (%s) in %d server(s)",
            user,
            user.id if user else "?",
            len(self.guilds),
        )


class App:
    """Runs the bot: ``start`` until ``close``.

    The Discord client exists first, because the publisher posts through its REST side, and
    logs in (REST only) before the services are opened; then the cogs are built from the
    services, their commands synced, unfinished jobs resumed, and the gateway connected.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        poll: PollPolicy | None = None,
        sandbox: SandboxAPI | None = None,
        health: HealthMonitor | None = None,
        guild_ready_timeout: float = 2.0,
    ) -> None:
        self.settings = settings
        self._poll = poll
        self._sandbox = sandbox
        self.health = health or HealthMonitor()
        self.bot = UpscaleBot(
            guild_id=settings.guild_id,
            health=self.health,
            guild_ready_timeout=guild_ready_timeout,
        )
        self._services: Services | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the bot is not started yet")
        return self._services

    async def start(self, token: str) -> None:
        """Start everything and run until ``close`` (or a fatal Discord error)."""
        async with self.bot:
            try:
                # First, so that a refused token stops the start before anything is opened,
                # and every post (a callback can arrive once the listener is up) can be made.
                await self.bot.login(token)
                self._services = await open_services(
                    self.settings,
                    self.bot,
                    poll=self._poll,
                    sandbox=self._sandbox,
                    health=self.health,
                )
                await add_cogs(self.bot, self._services)
                await self.bot.sync_commands()
                # A stop asked for meanwhile is not undone by going on.
                if self._closing is None:
                    await self._services.resume()
                    await self.bot.connect()
            finally:
                await self.close()
                # Opened after a stop that came early: closed all the same.
                if self._services is not None:
                    await self._services.close()

    async def close(self) -> None:
        """Drain and close the services while Discord is still reachable, then the client.

        A second call (a second signal, the end of ``start``) joins the shutdown under way.
        """
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name="shutdown")
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._services is not None:
            await self._services.close()
        await self.bot.close()
