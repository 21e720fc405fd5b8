"""The bot as a whole: the Discord client, the services built from the settings, the cogs
between them; started in order and stopped in the reverse one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.health import GATEWAY_GRACE_SECONDS, HealthMonitor
from bot.jobs.types import PollPolicy
from bot.midjourney.sandbox import SandboxAPI
from bot.services import Services, open_services
from bot.shards import SHARD_LEASE_SECONDS, ShardLeases
from cogs import add_cogs
from cogs.interactions import ServersOnlyTree

log = logging.getLogger(__name__)

# A shard held this long without a session is given up (the health check's grace, too).
CONNECT_GRACE = GATEWAY_GRACE_SECONDS
# How long closing a session may hold up the keeper.
CLOSE_SECONDS = 3.0


class UpscaleBot(commands.AutoShardedBot):
    """The Discord side: the gateway, REST and the slash-command sync. It builds nothing and
    holds no service; the cogs it is given hold what they use.

    Its gateway runs the shards ``shards`` (bot.shards) gives it, started and stopped as their
    leases come and go; a click read on a shard this process no longer holds is left alone.
    """

    def __init__(
        self, *, guild_id: int | None, health: HealthMonitor, guild_ready_timeout: float = 2.0
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            # A second line of defence: every send sets its own (texts.allowed_mentions), and
            # one that forgot would still ping no one.
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=guild_ready_timeout,
            # Servers only, installed by a server: a DM or a user's own install would spend
            # outside every server's limits, where the bot may not even post.
            tree_cls=ServersOnlyTree,
            allowed_contexts=app_commands.AppCommandContext(
                guild=True, dm_channel=False, private_channel=False
            ),
            allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
        )
        self._guild_id = guild_id
        self._health = health
        # Set before connect: (shard count or None for Discord's advice) → this process's leases.
        self.plan_shards: Callable[[int], ShardLeases] | None = None
        self._shard_leases: ShardLeases | None = None
        self._running: list[int] = []
        self._keeper: asyncio.Task[None] | None = None
        self._launches: dict[int, asyncio.Task[None]] = {}
        parse = self._connection.parsers["INTERACTION_CREATE"]

        def interaction_create(data: Any) -> None:
            leases = self._shard_leases
            guild = data.get("guild_id")
            if leases is None or leases.holds_guild(int(guild) if guild else None):
                parse(data)
            else:
                log.warning(
                    "left interaction %s alone: its shard is no longer this process's",
                    data.get("id"),
                )

        self._connection.parsers["INTERACTION_CREATE"] = interaction_create

    async def learn_owners(self, extra: frozenset[int]) -> None:
        """Who may change what the bot spends: the application's owner, or its team's admins
        and developers (as discord.py counts them), and ``extra`` (OWNER_IDS)."""
        try:
            app = await self.application_info()
        except discord.HTTPException as exc:
            log.warning(
                "could not read the application's owner (%s): only OWNER_IDS are owners", exc
            )
            self.owner_ids = set(extra)
            return
        if app.team is not None:
            found = {
                member.id
                for member in app.team.members
                # An invitation not yet accepted makes no one a member of the team.
                if member.membership_state is discord.TeamMembershipState.accepted
                and member.role in (discord.TeamMemberRole.admin, discord.TeamMemberRole.developer)
            }
        else:
            found = {app.owner.id}
        self.owner_ids = found | extra
        log.info("owners of the bot: %s", ", ".join(map(str, sorted(self.owner_ids))))

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

    async def launch_shards(self) -> None:
        """Instead of every shard at once: the shards this process wins, as it wins them."""
        if self.is_closed() or self.plan_shards is None:
            return
        recommended, url, _limits = await self.http.get_bot_gateway()
        leases = self.plan_shards(recommended)
        self.shard_count = leases.count
        self._connection.shard_count = leases.count
        # discord.py counts the shards ready against this list; it grows as shards are won.
        self._connection.shard_ids = self._running
        self._shard_leases = leases
        self._keeper = asyncio.create_task(self._keep_shards(yarl.URL(url), leases), name="shards")

    async def _keep_shards(self, gateway: yarl.URL, leases: ShardLeases) -> None:
        standing_by = False
        while not self.is_closed():
            try:
                await self._shard_step(gateway, leases)
            except Exception:
                # The gate keeps this process off shards it can no longer vouch for meanwhile.
                log.exception("keeping the shard leases failed; trying again")
            if not leases.held and not standing_by:
                log.info(
                    "standing by: other processes run every shard this one may run (%s of %d)",
                    ",".join(map(str, leases.allowed)),
                    leases.count,
                )
                self._health.gateway_standby()
            standing_by = not leases.held
            await asyncio.sleep(leases.period)

    async def _shard_step(self, gateway: yarl.URL, leases: ShardLeases) -> None:
        won, lost = await leases.step()
        for shard in lost:
            log.warning(
                "lost the lease of shard %d of %d: closing its session", shard, leases.count
            )
            await self._stop_shard(shard)
        stuck = [s for s in self._running if (self._health.down_for(s) or 0) > CONNECT_GRACE]
        for shard in stuck:
            # Held but never (or no longer) connected: a host that reaches the database but
            # not Discord must not keep the shard from a process that could run it.
            log.warning(
                "shard %d of %d has not connected for %g s: giving it to another process",
                shard,
                leases.count,
                CONNECT_GRACE,
            )
            await self._stop_shard(shard)
            await leases.release([shard])
        for shard in won:
            log.info("took shard %d of %d: connecting", shard, leases.count)
            self._running.append(shard)
            self._health.gateway_launching(shard)
            self._launches[shard] = asyncio.create_task(
                self.launch_shard(gateway, shard, initial=not self._launches),
                name=f"shard-{shard}",
            )

    async def _stop_shard(self, shard: int) -> None:
        self._health.gateway_left(shard)
        launch = self._launches.pop(shard, None)
        if launch is not None and not launch.done():
            launch.cancel()
        if shard in self._running:
            self._running.remove(shard)
        await self._close_session(shard)

    async def _close_session(self, shard: int) -> None:
        # A session reconnecting now is closed when it is back (on_shard_connect, _resumed).
        info = self.get_shard(shard)
        if info is not None:
            with contextlib.suppress(TimeoutError):
                # discord.py waits up to 30 s for the close handshake; renewals cannot.
                await asyncio.wait_for(info.disconnect(), CLOSE_SECONDS)

    def _stop_keeping(self) -> asyncio.Task[None] | None:
        # A launch still connecting would open a session after its lease is given back.
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
        for launch in self._launches.values():
            launch.cancel()
        self._launches.clear()
        return keeper

    async def leave_gateway(self) -> None:
        """Close every session this process runs and give its shards back, so another process
        takes them at once (REST stays usable for the posts still to drain)."""
        keeper = self._stop_keeping()
        if keeper is not None:
            # Until it has stopped: a lease it was taking must be given back too.
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        running, self._running[:] = list(self._running), []
        for shard in running:
            self._health.gateway_left(shard)
        await asyncio.gather(*(self._close_session(shard) for shard in running))
        leases = self._shard_leases
        if leases is not None:
            await leases.release(leases.allowed)

    async def close(self) -> None:
        self._stop_keeping()
        await super().close()

    async def _session_up(self, shard_id: int) -> None:
        leases = self._shard_leases
        if leases is not None and not leases.holds(shard_id):
            # A reconnect that was under way when the lease went: not this process's any more.
            log.warning("shard %d came back after its lease was lost: closing it", shard_id)
            await self._close_session(shard_id)
            return
        self._health.gateway_up(shard_id)

    async def on_shard_connect(self, shard_id: int) -> None:
        await self._session_up(shard_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        await self._session_up(shard_id)

    async def on_shard_disconnect(self, shard_id: int) -> None:
        self._health.gateway_down(shard_id)

    async def on_shard_ready(self, shard_id: int) -> None:
        user = self.user
        log.info(
            "connected to Discord as %s (%s) on shard %d of %s, %d server(s) in all",
            user,
            user.id if user else "?",
            shard_id,
            self.shard_count,
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
                await self.bot.learn_owners(self.settings.owner_ids)
                self._services = await open_services(
                    self.settings,
                    self.bot,
                    poll=self._poll,
                    sandbox=self._sandbox,
                    health=self.health,
                )
                await add_cogs(self.bot, self._services)
                self.bot.plan_shards = self._plan_shards
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

    def _plan_shards(self, recommended: int) -> ShardLeases:
        settings, services = self.settings, self.services
        return ShardLeases(
            services.coordination,
            owner=services.tracker.lease_owner,
            count=settings.shard_count or recommended,
            allowed=settings.shard_ids,
            most=settings.shards_per_process,
            ttl=SHARD_LEASE_SECONDS if services.database.shared else None,
        )

    async def _close(self) -> None:
        if self._services is not None:
            # With several processes, another one takes the shards over at once and answers
            # the clicks this one would refuse while it drains; alone, it stays connected to
            # tell clickers it is restarting.
            if self._services.database.shared:
                await self.bot.leave_gateway()
            await self._services.close()
        await self.bot.close()
