"""/imagine: generate four images through the API and post them as a grid with U1–U4; from a
prompt, or with images: image prompts, a style reference or a subject reference."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery.attachments import Attachment, AttachmentChecker, AttachmentRefused
from bot.delivery.texts import allowed_mentions, imagine_status_text
from bot.jobs.image_inputs import IMAGES, OMNI_STRENGTH, TASK_TYPE
from bot.jobs.kinds.imagine import IMAGINE
from bot.jobs.params import TYPED, read_params, visible
from bot.jobs.tracker import Tracker
from bot.jobs.types import Refused
from bot.metrics import Recorder
from bot.midjourney.models import ASPECT_RATIOS, SPEEDS, VERSIONS
from cogs.interactions import acked, cannot_post, follow_up_for, role_ids, tell

PROMPT_MAX = 2000
# Midjourney's own default omni-reference strength, sent when subject_strength is not given.
OMNI_DEFAULT = 100
OMNI_MAX = 1000
IMAGES_TAKEN = "✅ Your images were taken: the grid will be posted in this channel."
# The API takes one taskType and one fileUrls list: one role of images per /imagine.
ROLE_TASK_TYPES = {
    "image": "mj_img2img",
    "style": "mj_style_reference",
    "subject": "mj_omni_reference",
}


def _choices(values: tuple[str, ...]) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=v, value=v) for v in values]


class ImagineCog(commands.Cog):
    def __init__(
        self,
        tracker: Tracker,
        attachments: AttachmentChecker,
        *,
        translates: Callable[[int | None], Awaitable[bool]],
        metrics: Recorder,
        kept_params: tuple[str, ...] = (),
    ) -> None:
        self._tracker = tracker
        self._attachments = attachments
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
        image="An image prompt: the new images start from it",
        image2="A second image prompt, blended with the first",
        style="A style reference: the new images take its look",
        subject="A subject reference: its person or object appears in the new images",
        subject_strength="How closely the subject is followed, 1-1000 (default 100)",
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
        image: discord.Attachment | None = None,
        image2: discord.Attachment | None = None,
        style: discord.Attachment | None = None,
        subject: discord.Attachment | None = None,
        subject_strength: app_commands.Range[int, 1, OMNI_MAX] | None = None,
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
        elif not visible(prompt) and params.options:
            problem = "the prompt has parameters only: say what to draw too"
        elif not visible(prompt) or len(prompt) > PROMPT_MAX:
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
        else:
            problem = _images_problem(image, image2, style, subject, subject_strength)
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
        given = {
            role: [a for a in attachments if a is not None]
            for role, attachments in (
                ("image", (image, image2)),
                ("style", (style,)),
                ("subject", (subject,)),
            )
        }
        role = next((r for r, found in given.items() if found), None)
        if role is None:
            # The visible answer is the status message itself; it is removed once the grid is
            # up.
            response = await interaction.response.send_message(
                imagine_status_text(prompt, interaction.user.id, time.time(), options),
                allowed_mentions=allowed_mentions(),
            )
            acked(self._metrics, interaction, "imagine", started)
            status_message_id = response.message_id
        else:
            # Checking the images may take longer than Discord waits: deferred, privately, so a
            # refusal stays private; the visible status line is posted once they are taken.
            await interaction.response.defer(ephemeral=True, thinking=True)
            acked(self._metrics, interaction, "imagine", started)
            try:
                options.update(await self._images(interaction, role, given[role]))
            except AttachmentRefused as refused:
                await tell(interaction, f"❌ Not started: {refused.reason}.")
                return
            if role == "subject":
                options[OMNI_STRENGTH] = str(subject_strength or OMNI_DEFAULT)
            status_message_id = None
        try:
            outcome = await self._tracker.request_imagine(
                prompt=prompt,
                options=options,
                requester_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                status_message_id=status_message_id,
                role_ids=role_ids(interaction),
                follow_up=follow_up_for(interaction),
            )
        except Refused as refused:
            if role is not None:
                await self._tracker.forget_images(tuple(options.get(IMAGES, "").split()))
                await tell(interaction, refused.sentence("Not started"))
                return
            # The visible "generating" line would be a lie: take it back, say why privately.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            await tell(interaction, refused.sentence("Not started"))
            return
        if role is not None and not outcome.failed:
            await tell(interaction, IMAGES_TAKEN)

    async def _images(
        self,
        interaction: discord.Interaction[Any],
        role: str,
        attachments: list[discord.Attachment],
    ) -> dict[str, str]:
        """The options of a generation from ``attachments`` in ``role``, each checked (raises
        AttachmentRefused, nothing kept) and then kept, or linked without a public address."""
        checked = [
            await self._attachments.check(Attachment(a.filename, a.size, a.url))
            for a in attachments
        ]
        references = [
            await self._tracker.image_reference(
                guild_id=interaction.guild_id,
                requester_id=interaction.user.id,
                content_type=image.content_type,
                data=image.data,
                link=attachment.url,
            )
            for image, attachment in zip(checked, attachments, strict=True)
        ]
        return {TASK_TYPE: ROLE_TASK_TYPES[role], IMAGES: " ".join(references)}


def _images_problem(
    image: discord.Attachment | None,
    image2: discord.Attachment | None,
    style: discord.Attachment | None,
    subject: discord.Attachment | None,
    subject_strength: int | None,
) -> str | None:
    """Why these image options cannot go together in one generation, or None."""
    roles = [
        name
        for name, given in (
            ("image", image is not None or image2 is not None),
            ("style", style is not None),
            ("subject", subject is not None),
        )
        if given
    ]
    if len(roles) > 1:
        return (
            f"{' and '.join(roles)} cannot go together: the API takes one kind of image per "
            "/imagine (image prompts, a style or a subject)"
        )
    if subject_strength is not None and subject is None:
        return "subject_strength goes with a subject only"
    if subject_strength is not None and not 1 <= subject_strength <= OMNI_MAX:
        return f"subject_strength must be from 1 to {OMNI_MAX}"
    return None


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
