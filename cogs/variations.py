"""V1–V4 (four variations of one image) and 🔄 (the grid's prompt again) under every grid."""

from __future__ import annotations

import time
from typing import Any

import discord
from discord.ext import commands

from bot.jobs.store import JobKind
from bot.jobs.tracker import Tracker
from bot.jobs.types import Refused
from bot.metrics import Recorder
from cogs.grid_buttons import RerollButton, VaryButton, clickable, may_click
from cogs.interactions import acked, cannot_post, role_ids, tell, whisper_for


class VariationCog(commands.Cog):
    def __init__(
        self, bot: commands.Bot, tracker: Tracker, *, allowed: str, metrics: Recorder
    ) -> None:
        self._bot = bot
        self._tracker = tracker
        # UPSCALE_ALLOWED holds for every button of a grid.
        self._allowed = allowed
        self._metrics = metrics
        self._buttons = (
            clickable(VaryButton, self.vary_clicked),
            clickable(RerollButton, self.reroll_clicked),
        )

    async def cog_load(self) -> None:
        self._bot.add_dynamic_items(*self._buttons)

    async def cog_unload(self) -> None:
        self._bot.remove_dynamic_items(*self._buttons)

    async def vary_clicked(
        self, interaction: discord.Interaction[Any], task_id: str, image_index: int | None
    ) -> None:
        await self._clicked(interaction, JobKind.VARY, task_id, image_index)

    async def reroll_clicked(
        self, interaction: discord.Interaction[Any], task_id: str, image_index: int | None
    ) -> None:
        await self._clicked(interaction, JobKind.REROLL, task_id, None)

    async def _clicked(
        self,
        interaction: discord.Interaction[Any],
        kind: JobKind,
        task_id: str,
        image_index: int | None,
    ) -> None:
        started = time.monotonic()
        # Acknowledge before anything slow: Discord gives 3 seconds, the API may take longer.
        await interaction.response.defer()
        acked(self._metrics, interaction, "button", started)
        what = (
            f"Variations of image #{(image_index or 0) + 1}"
            if kind is JobKind.VARY
            else "The re-roll"
        )
        verb = "vary" if kind is JobKind.VARY else "re-roll"
        if not await may_click(interaction, self._allowed, verb):
            return
        if interaction.channel_id is None:
            await tell(interaction, "❌ Grids can only be varied in a channel.")
            return
        refusal = cannot_post(interaction)
        if refusal is not None:
            await tell(interaction, refusal)
            return
        message = interaction.message
        try:
            outcome = await self._tracker.request_on_grid(
                kind,
                parent_task_id=task_id,
                image_index=image_index,
                requester_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                grid_message_id=message.id if message else None,
                role_ids=role_ids(interaction),
                whisper=whisper_for(interaction),
                whisper_until=interaction.expires_at.timestamp(),
            )
        except Refused as refused:
            await tell(interaction, refused.sentence(f"{what} not started"))
            return
        if not outcome.created:
            await tell(
                interaction,
                f"⏳ {what} is already being made (asked by <@{outcome.job.requester_id}>); "
                "it will be posted in the channel. Once it is done, a new click makes another.",
            )
