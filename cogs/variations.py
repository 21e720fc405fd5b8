"""V1–V4 (four variations of one image) and 🔄 (the grid's prompt again) under every grid."""

from __future__ import annotations

import time
from typing import Any

import discord
from discord.ext import commands

from bot.jobs.store import JobKind
from bot.jobs.tracker import Tracker
from bot.metrics import Recorder
from cogs.grid_buttons import RerollButton, VaryButton, clickable, may_click, start_on_grid
from cogs.interactions import acked, tell


class VariationCog(commands.Cog):
    def __init__(
        self,
        bot: commands.Bot | commands.AutoShardedBot,
        tracker: Tracker,
        *,
        allowed: str,
        metrics: Recorder,
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
        if kind is JobKind.VARY:
            number = (image_index or 0) + 1
            verb, lead = "vary", f"Variations of image #{number} were not started"
            running = f"Variations of image #{number} are already being made"
        else:
            verb, lead = "re-roll", "The re-roll was not started"
            running = "This grid is already being re-rolled"
        if not await may_click(interaction, self._allowed, verb):
            return
        message = interaction.message
        outcome = await start_on_grid(
            interaction,
            self._tracker,
            kind,
            task_id,
            image_index,
            grid_message_id=message.id if message else None,
            lead=lead,
        )
        if outcome is None:
            return
        if not outcome.created:
            await tell(
                interaction,
                f"⏳ {running} (asked by <@{outcome.job.requester_id}>); the new grid will be "
                "posted in the channel. Once it is done, a new click makes another.",
            )
