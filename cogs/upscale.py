"""The U1–U4 buttons (persistent, state in the custom_id) and /upscale."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery.texts import jump_url
from bot.grid import UPSCALE_TEMPLATE, grid_owner, may_upscale, number_to_index, upscale_button
from bot.jobs.store import JobState
from bot.jobs.types import Refused, Whisper
from bot.metrics import recorder
from bot.midjourney.models import GRID_SIZE, is_task_id

if TYPE_CHECKING:
    from bot.app import UpscaleBot

log = logging.getLogger(__name__)

SORRY = "❌ Something went wrong on the bot's side; the server admin can find details in its log."


async def tell(interaction: discord.Interaction[Any], text: str) -> None:
    """An ephemeral answer, whether or not the interaction was acknowledged yet."""
    if interaction.response.is_done():
        await _follow_up(interaction.followup, interaction.id, text)
        return
    try:
        await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc.status)


async def _follow_up(followup: discord.Webhook, interaction_id: int, text: str) -> None:
    try:
        await followup.send(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction_id, exc.status)


def acked(interaction: discord.Interaction[UpscaleBot], command: str, started: float) -> None:
    """Record the acknowledgement just made (when metrics are on): from ``started``, the
    handler's ``time.monotonic()`` at entry (what the bot controls), and from the interaction's
    creation (its snowflake, by Discord's clock: adds gateway latency and any clock skew)."""
    metrics = recorder(interaction.client.metrics)
    metrics.acked(command, started, interaction.created_at.timestamp())


def whisper_for(interaction: discord.Interaction[Any]) -> Whisper:
    """Ephemeral follow-ups for an acknowledged interaction, for as long as its token lives.

    A job keeps its whisper for up to 15 minutes, so it holds only the follow-up webhook (the
    application id and the token), not the interaction with the clicked message and its view:
    that cut what a job in flight keeps in memory and what every full garbage collection walks.
    """
    followup, interaction_id = interaction.followup, interaction.id

    async def whisper(text: str) -> None:
        await _follow_up(followup, interaction_id, text)

    return whisper


async def start_upscale(
    interaction: discord.Interaction[UpscaleBot],
    task_id: str,
    image_index: int,
    grid_message_id: int | None,
) -> None:
    """The one path for a U-button click and /upscale: acknowledge, then ask the tracker."""
    number = image_index + 1
    if interaction.channel_id is None:
        await tell(interaction, "❌ Upscales can only be asked for in a channel.")
        return
    try:
        outcome = await interaction.client.tracker.request_upscale(
            parent_task_id=task_id,
            image_index=image_index,
            requester_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            grid_message_id=grid_message_id,
            whisper=whisper_for(interaction),
            whisper_until=interaction.expires_at.timestamp(),
        )
    except Refused as refused:
        await tell(interaction, f"❌ Image #{number} was not upscaled: {refused.reason}.")
        return
    job = outcome.job
    if outcome.created:
        if not outcome.failed and interaction.type is discord.InteractionType.application_command:
            await tell(
                interaction, f"⏳ Upscaling image #{number}; the result will be posted here."
            )
        return
    if job.state is JobState.DELIVERED and job.result_message_id is not None:
        link = jump_url(job.guild_id, job.channel_id, job.result_message_id)
        await tell(interaction, f"✅ Image #{number} was already upscaled: {link}")
    else:
        await tell(
            interaction,
            f"⏳ Image #{number} is already being upscaled (asked by <@{job.requester_id}>); "
            "the result will be posted in the channel.",
        )


class UpscaleButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=UPSCALE_TEMPLATE):
    def __init__(self, task_id: str, image_index: int) -> None:
        super().__init__(upscale_button(task_id, image_index + 1))
        self.task_id = task_id
        self.image_index = image_index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
        /,
    ) -> UpscaleButton:
        return cls(match["task"], number_to_index(int(match["n"])))

    async def callback(self, interaction: discord.Interaction[UpscaleBot]) -> None:  # type: ignore[override]
        started = time.monotonic()
        # Acknowledge before anything slow: Discord gives 3 seconds, the API may take longer.
        await interaction.response.defer()
        acked(interaction, "button", started)
        message = interaction.message
        owner = grid_owner(message.content) if message else None
        manages = interaction.permissions.manage_messages
        policy = interaction.client.settings.upscale_allowed
        if not may_upscale(policy, interaction.user.id, owner, manages=manages):
            whose = f"<@{owner}>, who asked for it," if owner else "the person who asked for it"
            await tell(
                interaction,
                f"❌ Only {whose} or members who can manage messages may upscale this grid.",
            )
            return
        try:
            await start_upscale(
                interaction, self.task_id, self.image_index, message.id if message else None
            )
        except Exception:
            log.exception("upscale click failed task=%s index=%s", self.task_id, self.image_index)
            await tell(interaction, SORRY)


class UpscaleCog(commands.Cog):
    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot

    @app_commands.command(name="upscale", description="Upscale one image of a Midjourney grid")
    @app_commands.describe(
        task_id="The generation's task id",
        image="Which image (1–4); leave empty to show the four images with U1–U4 buttons",
    )
    async def upscale(
        self,
        interaction: discord.Interaction[UpscaleBot],
        task_id: str,
        image: app_commands.Range[int, 1, GRID_SIZE] | None = None,
    ) -> None:
        started = time.monotonic()
        task_id = task_id.strip()
        # Discord's client enforces nothing for us: check every value here.
        if not is_task_id(task_id):
            await tell(interaction, "❌ That is not a task id (letters, digits, - and _ only).")
            return
        if image is not None and not 1 <= image <= GRID_SIZE:
            await tell(interaction, f"❌ image must be 1 to {GRID_SIZE}, not {image}.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        acked(interaction, "upscale", started)
        try:
            if image is None:
                error = await self.bot.tracker.show_grid(
                    task_id,
                    requester_id=interaction.user.id,
                    guild_id=interaction.guild_id,
                    channel_id=interaction.channel_id or 0,
                )
                await tell(interaction, f"❌ {error}" if error else "✅ Posted the four images.")
                return
            await start_upscale(interaction, task_id, number_to_index(image), None)
        except Exception:
            log.exception("/upscale failed task=%s image=%s", task_id, image)
            await tell(interaction, SORRY)


async def setup(bot: UpscaleBot) -> None:
    bot.add_dynamic_items(UpscaleButton)
    await bot.add_cog(UpscaleCog(bot))
