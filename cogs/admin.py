"""/mj status, /mj usage and /mj limit: the bot's state, what members have used today, and the
limits admins set (all answered privately)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import parse_allowance
from bot.jobs.spending import Spending
from cogs.interactions import member_role_ids, role_ids, tell

ONLY_ADMINS = "❌ Only members who can manage the server may {what}."


class AdminCog(commands.GroupCog, name="mj", description="Midjourney upscale bot"):
    def __init__(self, status_report: Callable[[], Awaitable[str]], spending: Spending) -> None:
        self._status_report = status_report
        self._spending = spending
        super().__init__()

    @app_commands.command(name="status", description="Jobs, credits and callbacks (admins only)")
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        # The group is open to everyone for /mj usage: this check is what keeps status to admins.
        if not interaction.permissions.manage_guild:
            await tell(interaction, ONLY_ADMINS.format(what="see this"))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await tell(interaction, await self._status_report())

    @app_commands.command(name="usage", description="What you have used today, and what is left")
    @app_commands.describe(member="Someone else's usage, and the server's (admins only)")
    async def usage(
        self, interaction: discord.Interaction[Any], member: discord.Member | None = None
    ) -> None:
        admin = interaction.permissions.manage_guild
        if member is not None and member.id != interaction.user.id and not admin:
            await tell(interaction, ONLY_ADMINS.format(what="see someone else's usage"))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if member is None:
            text = await self._spending.member_usage(
                interaction.guild_id, interaction.user.id, role_ids(interaction), own=True
            )
        else:
            roles = member_role_ids(member, interaction.guild_id)
            own = member.id == interaction.user.id
            text = await self._spending.member_usage(
                interaction.guild_id, member.id, roles, own=own
            )
        if admin and interaction.guild_id is not None:
            text += "\n" + await self._spending.server_usage(interaction.guild_id)
        await tell(interaction, text)

    @app_commands.command(name="limit", description="Daily allowance of a role or member")
    @app_commands.describe(
        target="The role or member",
        imagines="Generations per day: a number, 0 to forbid, or unlimited",
        upscales="Upscales per day: a number, 0 to forbid, or unlimited",
        reset="Remove this role's or member's limits (the settings or roles apply again)",
    )
    async def limit(
        self,
        interaction: discord.Interaction[Any],
        target: discord.Member | discord.Role,
        imagines: str | None = None,
        upscales: str | None = None,
        reset: bool = False,
    ) -> None:
        # Discord's default permissions can be changed by any server: the bot checks itself.
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            await tell(interaction, ONLY_ADMINS.format(what="change limits"))
            return
        try:
            numbers = {
                name: parse_allowance(name, value)
                for name, value in (("imagines", imagines), ("upscales", upscales))
                if value is not None
            }
        except ValueError as exc:
            await tell(interaction, f"❌ {exc}.")
            return
        if reset and numbers:
            await tell(interaction, "❌ Give either reset or numbers, not both.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        kind = "role" if isinstance(target, discord.Role) else "member"
        text = await self._spending.change_limit(
            interaction.guild_id,
            kind,
            target.id,
            numbers,
            reset=reset,
            by=interaction.user.id,
        )
        await tell(interaction, text)
