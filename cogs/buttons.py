"""Every registered kind's button (U1–U4, V1–V4, 🔄 under a grid, and any kind's), one click
handler for all: the kind says what its button is called and what the clicker is told."""

from __future__ import annotations

import functools
import time
from typing import Any

import discord
from discord.ext import commands

from bot.jobs.kinds import Kind, button_kinds
from bot.jobs.tracker import Tracker
from bot.metrics import Recorder
from cogs.grid_buttons import OnClick, clickable, item_for, may_click, start_and_answer
from cogs.interactions import acked


class ButtonsCog(commands.Cog):
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
        # UPSCALE_ALLOWED holds for every button: "anyone", or "requester" (the owner of the
        # message the button is under, and message managers).
        self._allowed = allowed
        self._metrics = metrics
        # The kinds registered when the bot starts: a kind registered later has no button.
        self._buttons = tuple(
            clickable(item_for(kind), self._on_click(kind)) for kind in button_kinds()
        )

    async def cog_load(self) -> None:
        self._bot.add_dynamic_items(*self._buttons)

    async def cog_unload(self) -> None:
        self._bot.remove_dynamic_items(*self._buttons)

    def _on_click(self, kind: Kind) -> OnClick:
        return functools.partial(self.clicked, kind)

    async def clicked(
        self,
        kind: Kind,
        interaction: discord.Interaction[Any],
        task_id: str,
        image_index: int | None,
    ) -> None:
        started = time.monotonic()
        # Acknowledge before anything slow: Discord gives 3 seconds, the API may take longer.
        await interaction.response.defer()
        acked(self._metrics, interaction, "button", started)
        if not await may_click(interaction, self._allowed, kind.verb):
            return
        message = interaction.message
        await start_and_answer(
            interaction,
            self._tracker,
            kind,
            task_id,
            image_index,
            grid_message_id=message.id if message else None,
        )
