"""/upscale: one image of a grid upscaled, or the grid posted again with its buttons (the
U-buttons themselves are cogs/buttons.py's, like every kind's)."""

from __future__ import annotations

import time
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.grid import number_to_index
from bot.jobs.kinds import kind_named
from bot.jobs.tracker import Tracker
from bot.jobs.types import Refused
from bot.metrics import Recorder
from bot.midjourney.models import GRID_SIZE, is_task_id
from cogs.grid_buttons import may_command, start_and_answer
from cogs.interactions import acked, cannot_post, tell


class UpscaleCog(commands.Cog):
    def __init__(self, tracker: Tracker, *, allowed: str, metrics: Recorder) -> None:
        self._tracker = tracker
        # UPSCALE_ALLOWED: "anyone", or "requester" (the grid's owner and message managers).
        self._allowed = allowed
        self._metrics = metrics
        self._kind = kind_named("upscale")

    @app_commands.command(name="upscale", description="Upscale one image of a Midjourney grid")
    @app_commands.describe(
        task_id="The generation's task id",
        image="Which image (1–4); leave empty to show the four images with U1–U4 buttons",
    )
    async def upscale(
        self,
        interaction: discord.Interaction[Any],
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
        acked(self._metrics, interaction, "upscale", started)
        refusal = cannot_post(interaction)
        if refusal is not None:
            await tell(interaction, refusal)
            return
        if self._allowed != "anyone":
            # Re-posting too: the re-post is its re-poster's grid, whose buttons they may click.
            owner = await self._tracker.made_for(task_id, interaction.guild_id)
            verb = "re-post" if image is None else "upscale"
            if not await may_command(interaction, self._allowed, owner, verb):
                return
        if image is None:
            try:
                error = await self._tracker.show_grid(
                    task_id,
                    requester_id=interaction.user.id,
                    guild_id=interaction.guild_id,
                    channel_id=interaction.channel_id or 0,
                )
            except Refused as refused:
                await tell(interaction, refused.sentence("The images were not posted"))
                return
            await tell(interaction, f"❌ {error}" if error else "✅ Posted the four images.")
            return
        await self._start(interaction, task_id, number_to_index(image), None)

    async def _start(
        self,
        interaction: discord.Interaction[Any],
        task_id: str,
        image_index: int,
        grid_message_id: int | None,
    ) -> None:
        outcome = await start_and_answer(
            interaction,
            self._tracker,
            self._kind,
            task_id,
            image_index,
            grid_message_id=grid_message_id,
        )
        if outcome is not None and outcome.created and not outcome.failed:
            await tell(
                interaction,
                f"⏳ Upscaling image #{image_index + 1}; the result will be posted here.",
            )
