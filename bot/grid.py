"""The buttons under a grid, as on Midjourney's own bot: ``U1 U2 U3 U4 🔄`` and ``V1 V2 V3 V4``;
their custom_id encoding and the view that carries them.

All the state a click needs lives in the custom_id (the grid's task and the image number), so
buttons on grids posted before a restart keep working without any memory of them; grids posted
before V1–V4 and 🔄 existed keep their one row.
"""

from __future__ import annotations

import re

import discord

from bot.jobs.store import GridUse
from bot.midjourney.models import GRID_SIZE, TASK_ID_PATTERN, is_task_id

# Discord refuses custom_ids over 100 characters; prefix + 64-char task id + ":n" stays at 71.
UPSCALE_TEMPLATE = rf"mju:(?P<task>{TASK_ID_PATTERN}):(?P<n>[1-{GRID_SIZE}])"
VARY_TEMPLATE = rf"mjv:(?P<task>{TASK_ID_PATTERN}):(?P<n>[1-{GRID_SIZE}])"
REROLL_TEMPLATE = rf"mjr:(?P<task>{TASK_ID_PATTERN})"
_UPSCALE_RE = re.compile(UPSCALE_TEMPLATE)
CUSTOM_ID_LIMIT = 100
REROLL_LABEL = "🔄"


def upscale_custom_id(task_id: str, number: int) -> str:
    """custom_id of button U``number`` (1–4) under the grid of ``task_id``."""
    return _custom_id("mju", task_id, number)


def vary_custom_id(task_id: str, number: int) -> str:
    """custom_id of button V``number`` (1–4) under the grid of ``task_id``."""
    return _custom_id("mjv", task_id, number)


def reroll_custom_id(task_id: str) -> str:
    """custom_id of the 🔄 button under the grid of ``task_id``."""
    return _custom_id("mjr", task_id, None)


def _custom_id(prefix: str, task_id: str, number: int | None) -> str:
    if not is_task_id(task_id):
        raise ValueError(f"not a task id: {task_id!r}")
    if number is None:
        return f"{prefix}:{task_id}"
    if type(number) is not int or not 1 <= number <= GRID_SIZE:
        raise ValueError(f"button {number} does not exist; they are numbered 1 to {GRID_SIZE}")
    custom_id = f"{prefix}:{task_id}:{number}"
    assert len(custom_id) <= CUSTOM_ID_LIMIT
    return custom_id


def parse_upscale_custom_id(custom_id: str) -> tuple[str, int] | None:
    """(task id, image index 0–3) of a U-button's custom_id, or None if it is not one."""
    match = _UPSCALE_RE.fullmatch(custom_id)
    if match is None:
        return None
    return match["task"], number_to_index(int(match["n"]))


def number_to_index(number: int) -> int:
    """U1..U4 (and /upscale image 1–4) to the API's imageIndex 0..3."""
    if type(number) is not int or not 1 <= number <= GRID_SIZE:
        raise ValueError(f"image must be 1 to {GRID_SIZE}, got {number!r}")
    return number - 1


# The owner's mention closes the first line (before " (re-roll)" on a re-roll's grid); a prompt
# may contain mentions of its own earlier.
_OWNER_RE = re.compile(
    rf" - (?:Variations \(image #[1-{GRID_SIZE}]\) )?<@(?P<id>[0-9]{{15,21}})>(?: \(re-roll\))?\Z"
)


def owner_mention(user_id: int) -> str:
    """How a grid message's first line ends: the mention of whom the grid was made for."""
    return f" - <@{user_id}>"


def grid_owner(content: str) -> int | None:
    """Whom a grid message (one this bot posted) was made for, or None if it does not say."""
    match = _OWNER_RE.search(content.split("\n", 1)[0])
    return int(match["id"]) if match else None


def may_upscale(policy: str, user_id: int, owner_id: int | None, *, manages: bool) -> bool:
    """UPSCALE_ALLOWED, for every button of a grid: ``anyone``, or ``requester`` (the grid's
    owner, or a message manager)."""
    return policy == "anyone" or manages or (owner_id is not None and user_id == owner_id)


def upscale_button(
    task_id: str, number: int, *, done: bool = False
) -> discord.ui.Button[discord.ui.View]:
    return _button(f"U{number}", upscale_custom_id(task_id, number), done, row=0)


def vary_button(
    task_id: str, number: int, *, done: bool = False
) -> discord.ui.Button[discord.ui.View]:
    return _button(f"V{number}", vary_custom_id(task_id, number), done, row=1)


def reroll_button(task_id: str, *, done: bool = False) -> discord.ui.Button[discord.ui.View]:
    return _button(REROLL_LABEL, reroll_custom_id(task_id), done, row=0)


def _button(label: str, custom_id: str, done: bool, row: int) -> discord.ui.Button[discord.ui.View]:
    return discord.ui.Button(
        label=label,
        custom_id=custom_id,
        style=discord.ButtonStyle.success if done else discord.ButtonStyle.secondary,
        row=row,
    )


class GridButtons(discord.ui.View):
    """Both rows of one grid; the buttons ``use`` names are shown green."""

    def __init__(self, task_id: str, use: GridUse | None = None) -> None:
        use = use or GridUse()
        super().__init__(timeout=None)
        for number in range(1, GRID_SIZE + 1):
            self.add_item(upscale_button(task_id, number, done=number - 1 in use.upscaled))
        self.add_item(reroll_button(task_id, done=use.rerolled))
        for number in range(1, GRID_SIZE + 1):
            self.add_item(vary_button(task_id, number, done=number - 1 in use.varied))

    def is_dispatchable(self) -> bool:
        # Clicks are dispatched to the DynamicItems of cogs/grid_buttons.py, which survive restarts;
        # if discord.py stored this view, its inert buttons would swallow the clicks instead.
        return False
