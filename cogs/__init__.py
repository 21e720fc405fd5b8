"""The Discord front: slash commands and buttons, thin, each built with the services it uses."""

from __future__ import annotations

import discord
from discord.ext import commands

from bot.delivery.texts import one_line
from bot.metrics import recorder
from bot.midjourney.sandbox import FAIL_MARKER
from bot.services import Services
from cogs.admin import AdminCog
from cogs.buttons import ButtonsCog
from cogs.imagine import ImagineCog
from cogs.interactions import on_command_error
from cogs.upscale import UpscaleCog


async def add_cogs(bot: commands.Bot | commands.AutoShardedBot, services: Services) -> None:
    """Add every cog to ``bot`` and route every command's error to the one error path."""
    metrics = recorder(services.metrics)
    bot.tree.error(on_command_error)
    await bot.add_cog(
        UpscaleCog(services.tracker, allowed=services.settings.upscale_allowed, metrics=metrics)
    )
    # Every kind registered by now gets its button (the built-in ones, a test's).
    await bot.add_cog(
        ButtonsCog(
            bot, services.tracker, allowed=services.settings.upscale_allowed, metrics=metrics
        )
    )
    # The sandbox fails a generation whose prompt has its marker: /imagine leaves it there.
    kept = (FAIL_MARKER.removeprefix("--"),) if services.sandbox is not None else ()
    await bot.add_cog(
        ImagineCog(
            services.tracker,
            services.attachments,
            translates=services.server_settings.translates,
            metrics=metrics,
            kept_params=kept,
        )
    )

    def is_owner(user_id: int) -> bool:
        # Filled in at login (bot.app: the application's owner or team, and OWNER_IDS).
        return user_id in (bot.owner_ids or ())

    async def server_names() -> dict[int, str]:
        # Names are the servers' own words, shown to owners in a list of lines: one line each,
        # no markdown of theirs.
        return {
            guild.id: discord.utils.escape_markdown(one_line(guild.name))
            async for guild in bot.fetch_guilds(limit=None)
        }

    await bot.add_cog(
        AdminCog(
            services.status_report,
            services.spending,
            is_owner=is_owner,
            server_names=server_names,
            server_settings=services.server_settings,
        )
    )
