"""The buttons under a posted result, as the kinds of job declare them (bot.jobs.kinds): under a
grid, as on Midjourney's own bot, ``U1 U2 U3 U4 🔄`` and ``V1 V2 V3 V4``; the built-in ones'
custom_ids, the views that carry them, and whose grid a message is.

All the state a click needs lives in the custom_id (the grid's task and the image number), so
buttons on grids posted before a restart keep working without any memory of them; grids posted
before V1–V4 and 🔄 existed keep their one row.
"""

from __future__ import annotations

import re

import discord

from bot.jobs.kinds import Button, Kind, Product, buttons_under, kind_named
from bot.jobs.kinds.base import owner_mention as owner_mention
from bot.jobs.kinds.use import ParentUse
from bot.midjourney.models import GRID_SIZE


def _button_of(name: str) -> Button:
    button = kind_named(name).button
    assert button is not None, f"{name} has no button"
    return button


# The built-in buttons of a grid, which /upscale, the tests and the benchmarks name.
_UPSCALE = _button_of("upscale")
_VARY = _button_of("vary")
_REROLL = _button_of("reroll")
UPSCALE_TEMPLATE = _UPSCALE.template
VARY_TEMPLATE = _VARY.template
REROLL_TEMPLATE = _REROLL.template


def upscale_custom_id(task_id: str, number: int) -> str:
    """custom_id of button U``number`` (1–4) under the grid of ``task_id``."""
    return _UPSCALE.custom_id(task_id, number)


def vary_custom_id(task_id: str, number: int) -> str:
    """custom_id of button V``number`` (1–4) under the grid of ``task_id``."""
    return _VARY.custom_id(task_id, number)


def reroll_custom_id(task_id: str) -> str:
    """custom_id of the 🔄 button under the grid of ``task_id``."""
    return _REROLL.custom_id(task_id)


def parse_upscale_custom_id(custom_id: str) -> tuple[str, int] | None:
    """(task id, image index 0–3) of a U-button's custom_id, or None if it is not one."""
    parsed = _UPSCALE.parse(custom_id)
    if parsed is None or parsed[1] is None:
        return None
    return parsed[0], parsed[1]


def number_to_index(number: int) -> int:
    """U1..U4 (and /upscale image 1–4) to the API's imageIndex 0..3."""
    if type(number) is not int or not 1 <= number <= GRID_SIZE:
        raise ValueError(f"image must be 1 to {GRID_SIZE}, got {number!r}")
    return number - 1


# The owner's mention closes the first line (before " (re-roll)" on a re-roll's grid), after
# what the result is (the kinds' result lines); a prompt may contain mentions of its own earlier.
_OWNER_RE = re.compile(
    rf" - (?:Variations \(image #[1-{GRID_SIZE}]\) |Image #[1-{GRID_SIZE}] |Video \([^)]*\) )?"
    r"<@(?P<id>[0-9]{15,21})>(?: \(re-roll\))?\Z"
)


def grid_owner(content: str) -> int | None:
    """Whom a grid message (one this bot posted) was made for, or None if it does not say."""
    match = _OWNER_RE.search(content.split("\n", 1)[0])
    return int(match["id"]) if match else None


def may_upscale(policy: str, user_id: int, owner_id: int | None, *, manages: bool) -> bool:
    """UPSCALE_ALLOWED, for every button of a grid: ``anyone``, or ``requester`` (the grid's
    owner, or a message manager)."""
    return policy == "anyone" or manages or (owner_id is not None and user_id == owner_id)


def kind_button(
    kind: Kind, task_id: str, number: int | None, *, done: bool = False, count: int = GRID_SIZE
) -> discord.ui.Button[discord.ui.View]:
    """``kind``'s button (number 1–4 for a button per image) under the result of ``task_id``,
    one of ``count`` items."""
    button = kind.button
    assert button is not None, f"{kind.name} has no button"
    return discord.ui.Button(
        label=button.label_of(number, count),
        custom_id=button.custom_id(task_id, number),
        style=discord.ButtonStyle.success if done else discord.ButtonStyle.secondary,
        row=button.row,
    )


def upscale_button(
    task_id: str, number: int, *, done: bool = False
) -> discord.ui.Button[discord.ui.View]:
    return kind_button(kind_named("upscale"), task_id, number, done=done)


def vary_button(
    task_id: str, number: int, *, done: bool = False
) -> discord.ui.Button[discord.ui.View]:
    return kind_button(kind_named("vary"), task_id, number, done=done)


def reroll_button(task_id: str, *, done: bool = False) -> discord.ui.Button[discord.ui.View]:
    return kind_button(kind_named("reroll"), task_id, None, done=done)


class ResultButtons(discord.ui.View):
    """The buttons of every kind declared under a posted result of ``product``; those ``use``
    names are shown green (if their kind turns green)."""

    def __init__(
        self,
        task_id: str,
        product: Product,
        use: ParentUse | None = None,
        count: int = GRID_SIZE,
    ) -> None:
        asked = use or ParentUse()
        super().__init__(timeout=None)
        for kind in buttons_under(product):
            assert kind.button is not None
            for number in kind.button.numbers(count):
                index = None if number is None else number - 1
                done = kind.button.turns_green and asked.has(kind.name, index)
                self.add_item(kind_button(kind, task_id, number, done=done, count=count))

    def is_dispatchable(self) -> bool:
        # Clicks are dispatched to the DynamicItems of cogs/grid_buttons.py, which survive restarts;
        # if discord.py stored this view, its inert buttons would swallow the clicks instead.
        return False


class GridButtons(ResultButtons):
    """Both rows of one grid; the buttons ``use`` names are shown green."""

    def __init__(self, task_id: str, use: ParentUse | None = None) -> None:
        super().__init__(task_id, Product.GRID, use)


def result_buttons(task_id: str, product: Product, count: int = GRID_SIZE) -> ResultButtons | None:
    """The buttons under a newly posted result of ``product`` (``count`` items); None when no
    kind has one."""
    return ResultButtons(task_id, product, count=count) if buttons_under(product) else None
