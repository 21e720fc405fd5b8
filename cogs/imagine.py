"""/imagine: generate four images through the API and post them as a grid with U1–U4."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery.texts import allowed_mentions, imagine_status_text
from bot.jobs.kinds.imagine import IMAGINE
from bot.jobs.params import TYPED, read_params
from bot.jobs.tracker import Tracker
from bot.jobs.types import Refused
from bot.metrics import Recorder
from bot.midjourney.models import ASPECT_RATIOS, SPEEDS, VERSIONS
from cogs.interactions import acked, cannot_post, follow_up_for, role_ids, tell

PROMPT_MAX = 2000


def _choices(values: tuple[str, ...]) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=v, value=v) for v in values]


class ImagineCog(commands.Cog):
    def __init__(
        self,
        tracker: Tracker,
        *,
        translates: Callable[[int | None], Awaitable[bool]],
        metrics: Recorder,
        kept_params: tuple[str, ...] = (),
    ) -> None:
        self._tracker = tracker
        # Parameters left in the prompt as text: the sandbox's own, in sandbox mode.
        self._kept_params = kept_params
        # Whether a server's admins asked for prompts to be translated (/mj translation).
        self._translates = translates
        self._metrics = metrics

    @app_commands.command(name="imagine", description="Generate four images from a prompt")
    @app_commands.describe(
        prompt="What to draw, with Midjourney's --ar, --v, --s, --c, --w (at most 2000 characters)",
        aspect_ratio="Width:height of the images",
        version="Midjourney model version",
        speed="relaxed is cheapest, turbo fastest",
    )
    @app_commands.choices(
        aspect_ratio=_choices(ASPECT_RATIOS), version=_choices(VERSIONS), speed=_choices(SPEEDS)
    )
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, PROMPT_MAX],
        aspect_ratio: str | None = None,
        version: str | None = None,
        speed: str | None = None,
    ) -> None:
        started = time.monotonic()
        typed_prompt = prompt.strip()
        params = read_params(typed_prompt, kept=self._kept_params)
        prompt = params.prompt
        chosen = {"speed": speed, "aspect_ratio": aspect_ratio, "version": version}
        # Choices and lengths are enforced by Discord's client only: check them again.
        problem = None
        if params.problems:
            problem = "the prompt's parameters cannot be sent:\n- " + "\n- ".join(params.problems)
        elif not prompt and typed_prompt:
            problem = "the prompt has parameters only: say what to draw too"
        elif not prompt or len(prompt) > PROMPT_MAX:
            problem = f"the prompt must be 1 to {PROMPT_MAX} characters"
        elif "\x00" in prompt:
            # PostgreSQL cannot store it: refused here on either database.
            problem = "the prompt contains a NUL character"
        elif aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
            problem = f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}"
        elif version is not None and version not in VERSIONS:
            problem = f"version must be one of {', '.join(VERSIONS)}"
        elif speed is not None and speed not in SPEEDS:
            problem = f"speed must be one of {', '.join(SPEEDS)}"
        elif disagree := _disagreements(chosen, params.options):
            problem = disagree
        elif interaction.channel_id is None:
            problem = "/imagine works in a channel only"
        if problem is not None:
            await tell(interaction, f"❌ {problem}.")
            return
        refusal = cannot_post(interaction)
        if refusal is not None:
            await tell(interaction, refusal)
            return
        # Over a limit is told privately, before the visible status line goes up; the limits are
        # checked again, atomically, when the request is stored.
        over = await self._tracker.preview(
            IMAGINE.name,
            requester_id=interaction.user.id,
            guild_id=interaction.guild_id,
            role_ids=role_ids(interaction),
        )
        if over is not None:
            await tell(interaction, over.sentence("Not started"))
            return
        options = {"speed": "fast", **params.options}
        options.update({key: value for key, value in chosen.items() if value})
        if params.options:
            # Its lines show the parameters sent; a prompt without any keeps today's lines.
            options[TYPED] = "on"
        if await self._translates(interaction.guild_id):
            options["translate"] = "on"
        # The visible answer is the status message itself; it is removed once the grid is up.
        response = await interaction.response.send_message(
            imagine_status_text(prompt, interaction.user.id, time.time(), options),
            allowed_mentions=allowed_mentions(),
        )
        acked(self._metrics, interaction, "imagine", started)
        try:
            await self._tracker.request_imagine(
                prompt=prompt,
                options=options,
                requester_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                status_message_id=response.message_id,
                role_ids=role_ids(interaction),
                follow_up=follow_up_for(interaction),
            )
        except Refused as refused:
            # The visible "generating" line would be a lie: take it back, say why privately.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            await tell(interaction, refused.sentence("Not started"))


# A parameter typed in the prompt, by the option of /imagine that sets the same thing.
_FLAG_OF = {
    "speed": "--fast, --relax or --turbo",
    "aspect_ratio": "--ar",
    "version": "--v or --niji",
}


def _disagreements(chosen: dict[str, str | None], flags: dict[str, str]) -> str | None:
    """An option and a parameter that ask for different things: neither wins, both are named."""
    both = [
        f"the {key} option says {chosen[key]} and the prompt's {_FLAG_OF[key]} says {flags[key]}"
        for key in _FLAG_OF
        if chosen[key] and key in flags and flags[key] != chosen[key]
    ]
    if not both:
        return None
    return "; ".join(both) + ": give one of them"
