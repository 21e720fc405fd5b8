"""The buttons of the registered kinds as discord.py DynamicItems (U1–U4, V1–V4, 🔄 under a
grid, and any kind's), the one path of a click, and who may click.

discord.py builds one item per click from the custom_id, so buttons on grids posted before a
restart work; what a click calls comes with the class a cog registers: see ``clickable``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Self, TypeVar, cast

import discord

from bot.delivery.texts import jump_url
from bot.grid import grid_owner, kind_button, may_upscale, number_to_index
from bot.jobs.kinds import Kind
from bot.jobs.store import JobState
from bot.jobs.tracker import Tracker
from bot.jobs.types import Outcome, Refused
from cogs.interactions import (
    cannot_post,
    follow_up_for,
    outside_servers,
    report_error,
    role_ids,
    tell,
)

# What a click calls: the interaction, the grid's task id and the image's index (None for 🔄).
OnClick = Callable[[discord.Interaction[Any], str, int | None], Awaitable[None]]


class _GridItem(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"(?!)"):
    """What every kind's button shares; its template matches nothing, so only the classes
    ``item_for`` makes are ever registered and dispatched to."""

    kind: ClassVar[Kind]

    def __init__(self, task_id: str, image_index: int | None) -> None:
        number = None if image_index is None else image_index + 1
        super().__init__(kind_button(self.kind, task_id, number))
        self.task_id = task_id
        self.image_index = image_index

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        number = match.groupdict().get("n")
        return cls(match["task"], None if number is None else number_to_index(int(number)))


_items: dict[str, type[_GridItem]] = {}


def item_for(kind: Kind) -> type[_GridItem]:
    """The DynamicItem class of ``kind``'s button, matching its custom_ids."""
    made = _items.get(kind.name)
    if made is None or made.kind is not kind:
        assert kind.button is not None, f"{kind.name} has no button"
        # The template is a class keyword of DynamicItem, so the class is made with type().
        made = type(
            f"{kind.name.title()}Button",
            (_GridItem,),
            {"kind": kind},
            template=kind.button.template,
        )
        _items[kind.name] = made
    return made


ButtonT = TypeVar("ButtonT", bound=_GridItem)


def clickable(button: type[ButtonT], on_click: OnClick) -> type[ButtonT]:
    """The class to register for ``button``: a click calls ``on_click``."""

    async def callback(self: ButtonT, interaction: discord.Interaction[Any]) -> None:
        refusal = outside_servers(interaction)
        if refusal is not None:
            await tell(interaction, refusal)
            return
        # discord.py has no error hook for dynamic items: it would log and say nothing.
        try:
            await on_click(interaction, self.task_id, self.image_index)
        except Exception as exc:
            await report_error(interaction, exc)

    # The template is a class keyword of DynamicItem, so the subclass is made with type().
    made = type(
        f"Clickable{button.__name__}",
        (button,),
        {"callback": callback},
        template=button.__discord_ui_compiled_template__,
    )
    return cast(type[ButtonT], made)


async def may_click(interaction: discord.Interaction[Any], allowed: str, verb: str) -> bool:
    """UPSCALE_ALLOWED for every button of a grid; the clicker is told when they may not."""
    message = interaction.message
    owner = grid_owner(message.content) if message else None
    manages = interaction.permissions.manage_messages
    if may_upscale(allowed, interaction.user.id, owner, manages=manages):
        return True
    whose = f"<@{owner}>, who asked for it," if owner else "the person who asked for it"
    await tell(
        interaction, f"❌ Only {whose} or members who can manage messages may {verb} this grid."
    )
    return False


async def may_command(
    interaction: discord.Interaction[Any], allowed: str, owner: int | None, verb: str
) -> bool:
    """UPSCALE_ALLOWED for /upscale (an image, or the grid again): ``owner`` is whom the bot
    made the grid for in this server, None for any other task, which has no requester here, so
    only message managers may; the member is told when they may not."""
    manages = interaction.permissions.manage_messages
    if may_upscale(allowed, interaction.user.id, owner, manages=manages):
        return True
    if owner is None:
        what, whom = "a task the bot did not make in this server", ""
    else:
        what, whom = "this grid", f"<@{owner}>, who asked for it, or "
    await tell(interaction, f"❌ Only {whom}members who can manage messages may {verb} {what}.")
    return False


async def start_on_grid(
    interaction: discord.Interaction[Any],
    tracker: Tracker,
    kind: Kind,
    task_id: str,
    image_index: int | None,
    *,
    grid_message_id: int | None,
    lead: str,
) -> Outcome | None:
    """The one path for a grid's button (and /upscale) once acknowledged: the checks of where
    the result would go, then the tracker. None when refused, the clicker told why (``lead``:
    what was not done)."""
    if interaction.channel_id is None:
        await tell(interaction, f"❌ {lead}: the bot works in a channel only.")
        return None
    refusal = cannot_post(interaction)
    if refusal is not None:
        await tell(interaction, refusal)
        return None
    try:
        return await tracker.request_on_grid(
            kind.name,
            parent_task_id=task_id,
            image_index=image_index,
            requester_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            grid_message_id=grid_message_id,
            role_ids=role_ids(interaction),
            follow_up=follow_up_for(interaction),
            upload_limit=interaction.filesize_limit,
        )
    except Refused as refused:
        await tell(interaction, refused.sentence(lead))
        return None


async def start_and_answer(
    interaction: discord.Interaction[Any],
    tracker: Tracker,
    kind: Kind,
    task_id: str,
    image_index: int | None,
    *,
    grid_message_id: int | None,
) -> Outcome | None:
    """``start_on_grid``, and the clicker told of the job their click found running (or
    delivered): nothing was started again."""
    number = (image_index or 0) + 1
    outcome = await start_on_grid(
        interaction,
        tracker,
        kind,
        task_id,
        image_index,
        grid_message_id=grid_message_id,
        lead=kind.not_started(number),
    )
    if outcome is None or outcome.created:
        return outcome
    job = outcome.job
    if job.state is JobState.DELIVERED and job.result_message_id is not None:
        link = jump_url(job.guild_id, job.channel_id, job.result_message_id)
        await tell(interaction, kind.already_done(number, link))
    else:
        await tell(interaction, kind.already(number, f"<@{job.requester_id}>"))
    return outcome
