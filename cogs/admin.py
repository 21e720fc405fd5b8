"""/mj status, /mj usage, /mj limit and /mj translation (what a server's admins see and set for
their members and their server), and /mj server (where the bot spends, under which caps: its
owners only). All answered privately."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.server_settings import ServerSettings
from bot.jobs.servers import ServerRules
from bot.jobs.spending import Spending
from bot.setting_parsers import parse_allowance
from cogs.interactions import member_role_ids, role_ids, tell

ONLY_ADMINS = "❌ Only members who can manage the server may {what}."
ONLY_OWNERS = "❌ Only the bot's owners may {what}."

# (server id or None for the owners' view, every server's name by id) → the report.
StatusReport = Callable[[int | None, dict[int, str]], Awaitable[str]]
# The servers the bot is in, id → name, asked of Discord (all shards, whichever process).
ServerNames = Callable[[], Awaitable[dict[int, str]]]


class AdminCog(commands.GroupCog, name="mj", description="Midjourney upscale bot"):
    server = app_commands.Group(
        name="server", description="Where the bot spends credits (the bot's owners only)"
    )

    def __init__(
        self,
        status_report: StatusReport,
        spending: Spending,
        *,
        is_owner: Callable[[int], bool],
        server_names: ServerNames,
        server_settings: ServerSettings,
    ) -> None:
        self._status_report = status_report
        self._spending = spending
        self._server_settings = server_settings
        self._is_owner = is_owner
        self._server_names = server_names
        super().__init__()

    @app_commands.command(name="status", description="Jobs, credits and callbacks (admins only)")
    async def status(self, interaction: discord.Interaction[Any]) -> None:
        owner = self._is_owner(interaction.user.id)
        # The group is open to everyone for /mj usage: this check is what keeps status to admins.
        if not (owner or interaction.permissions.manage_guild):
            await tell(interaction, ONLY_ADMINS.format(what="see this"))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if owner:
            report = await self._status_report(None, await self._server_names())
        else:
            report = await self._status_report(interaction.guild_id, {})
        await tell(interaction, report)

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
        if self._is_owner(interaction.user.id):
            text += "\n" + await self._spending.budget_usage()
        await tell(interaction, text)

    # One option per cost category (bot.jobs.categories), named as its option: discord.py
    # makes a command's options from its callback's signature, so a new category adds its own.
    @app_commands.command(name="limit", description="Daily allowance of a role or member")
    @app_commands.describe(
        target="The role or member",
        imagines="Generations per day: a number, 0 to forbid, or unlimited",
        upscales="Upscales per day: a number, 0 to forbid, or unlimited",
        videos="Animate and Extend clicks per day: a number, 0 to forbid, or unlimited",
        reset="Remove this role's or member's limits (the settings or roles apply again)",
    )
    async def limit(
        self,
        interaction: discord.Interaction[Any],
        target: discord.Member | discord.Role,
        imagines: str | None = None,
        upscales: str | None = None,
        videos: str | None = None,
        reset: bool = False,
    ) -> None:
        # Discord's default permissions can be changed by any server: the bot checks itself.
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            await tell(interaction, ONLY_ADMINS.format(what="change limits"))
            return
        numbers = await _numbers(
            interaction, reset, imagines=imagines, upscales=upscales, videos=videos
        )
        if numbers is None:
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

    @app_commands.command(
        name="translation", description="Translate /imagine prompts to English (admins only)"
    )
    @app_commands.describe(state="on: the API translates prompts; off: they are sent as typed")
    @app_commands.choices(state=[app_commands.Choice(name=v, value=v) for v in ("on", "off")])
    async def translation(self, interaction: discord.Interaction[Any], state: str) -> None:
        # Discord's default permissions can be changed by any server: the bot checks itself.
        if interaction.guild_id is None or not interaction.permissions.manage_guild:
            await tell(interaction, ONLY_ADMINS.format(what="change translation"))
            return
        if state not in ("on", "off"):
            await tell(interaction, "❌ state must be on or off.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        on = state == "on"
        await self._server_settings.set_translation(
            interaction.guild_id, on, by=interaction.user.id
        )
        if on:
            text = (
                "✅ The API now translates /imagine prompts in this server to English "
                "(and re-rolls of grids made with it on)."
            )
        else:
            text = "✅ /imagine prompts in this server are now sent as typed, untranslated."
        await tell(interaction, text)

    # -- /mj server: the owners' door ----------------------------------------------------------

    async def _owner_here(self, interaction: discord.Interaction[Any], what: str) -> int | None:
        """The server an owner's command is about; None (the user told why) for anyone else."""
        if not self._is_owner(interaction.user.id):
            await tell(interaction, ONLY_OWNERS.format(what=what))
            return None
        if interaction.guild_id is None:
            await tell(interaction, "❌ Run this in the server it is about.")
            return None
        return interaction.guild_id

    @server.command(name="allow", description="Let the bot spend credits in this server")
    async def allow(self, interaction: discord.Interaction[Any]) -> None:
        guild_id = await self._owner_here(interaction, "allow a server")
        if guild_id is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        rules = await self._spending.decide(guild_id, by=interaction.user.id, served=True)
        await tell(interaction, f"✅ The bot now works in this server. {_caps(rules)}")

    @server.command(name="deny", description="Stop the bot spending credits in this server")
    async def deny(self, interaction: discord.Interaction[Any]) -> None:
        guild_id = await self._owner_here(interaction, "stop a server")
        if guild_id is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self._spending.decide(guild_id, by=interaction.user.id, served=False)
        await tell(
            interaction,
            "✅ The bot starts nothing more in this server (jobs already running finish). "
            "/mj server allow opens it again.",
        )

    @server.command(name="limit", description="This server's daily caps (owners only)")
    @app_commands.describe(
        jobs="Jobs per day in this server: a number, 0 to forbid, or unlimited",
        credits="API credits per day in this server: a number, 0 to forbid, or unlimited",
        reset="The settings' caps again (DAILY_JOBS_PER_SERVER, DAILY_CREDITS_PER_SERVER)",
    )
    async def server_limit(
        self,
        interaction: discord.Interaction[Any],
        jobs: str | None = None,
        credits: str | None = None,
        reset: bool = False,
    ) -> None:
        guild_id = await self._owner_here(interaction, "set a server's caps")
        if guild_id is None:
            return
        numbers = await _numbers(interaction, reset, jobs=jobs, credits=credits)
        if numbers is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        rules = await self._spending.decide(
            guild_id, by=interaction.user.id, caps=numbers, reset=reset
        )
        lead = "✅ " if numbers or reset else ""
        await tell(interaction, f"{lead}{_caps(rules)} What was used today still counts.")

    @server.command(name="list", description="Every server the bot is in (owners only)")
    async def server_list(self, interaction: discord.Interaction[Any]) -> None:
        if not self._is_owner(interaction.user.id):
            await tell(interaction, ONLY_OWNERS.format(what="list the servers"))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        lines = await self._spending.server_lines(await self._server_names())
        await tell(interaction, "\n".join(["**Servers**", *lines]))


async def _numbers(
    interaction: discord.Interaction[Any], reset: bool, **values: str | None
) -> dict[str, int | None] | None:
    """The allowances given, each a number or None for unlimited; None (the user told why)
    for a bad one, or numbers given with ``reset``."""
    try:
        numbers = {
            name: parse_allowance(name, value)
            for name, value in values.items()
            if value is not None
        }
    except ValueError as exc:
        await tell(interaction, f"❌ {exc}.")
        return None
    if reset and numbers:
        await tell(interaction, "❌ Give either reset or numbers, not both.")
        return None
    return numbers


def _caps(rules: ServerRules) -> str:
    jobs = "unlimited" if rules.jobs is None else rules.jobs
    credits = "unlimited" if rules.credits is None else rules.credits
    return f"This server's daily caps: {jobs} jobs and {credits} credits."
