"""/mj status: the bot's state for server admins (ephemeral)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.status import status_report
from cogs.upscale import SORRY, tell

if TYPE_CHECKING:
    from bot.app import UpscaleBot

log = logging.getLogger(__name__)


class AdminCog(commands.GroupCog, name="mj", description="Midjourney upscale bot"):
    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="status", description="Jobs, credits and callbacks (admins only)")
    @app_commands.default_permissions(manage_guild=True)
    async def status(self, interaction: discord.Interaction[UpscaleBot]) -> None:
        # default_permissions is only what Discord shows by default; a server may change it.
        if not interaction.permissions.manage_guild:
            await tell(interaction, "❌ Only members who can manage the server may see this.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            report = await status_report(
                self.bot.tracker.store,
                self.bot.mj,
                callbacks=self.bot.callbacks_summary(),
                low_credit_threshold=self.bot.settings.low_credit_threshold,
            )
        except Exception:
            log.exception("/mj status failed")
            await tell(interaction, SORRY)
            return
        await tell(interaction, report)


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(AdminCog(bot))
