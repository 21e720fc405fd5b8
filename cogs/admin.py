"""/mj status: the bot's state for server admins (ephemeral)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs.interactions import tell


class AdminCog(commands.GroupCog, name="mj", description="Midjourney upscale bot"):
    def __init__(self, status_report: Callable[[], Awaitable[str]]) -> None:
        self._status_report = status_report
        super().__init__()

    @app_commands.command(name="status", description="Jobs, credits and callbacks (admins only)")
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        # default_permissions is only what Discord shows by default; a server may change it.
        if not interaction.permissions.manage_guild:
            await tell(interaction, "❌ Only members who can manage the server may see this.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await tell(interaction, await self._status_report())
