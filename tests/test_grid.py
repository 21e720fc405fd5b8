"""bot/grid.py: the custom_ids of a grid's buttons and the view that carries them."""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import discord
import pytest

from bot.grid import (
    REROLL_TEMPLATE,
    UPSCALE_TEMPLATE,
    VARY_TEMPLATE,
    GridButtons,
    grid_owner,
    may_upscale,
    number_to_index,
    owner_mention,
    parse_upscale_custom_id,
    reroll_custom_id,
    upscale_button,
    upscale_custom_id,
    vary_custom_id,
)
from bot.jobs.kinds.use import ParentUse

TASK = "4edb3c5d9e0f4a1b8c2d3e4f5a6b7c8d"
ID_ALPHABET = string.ascii_letters + string.digits + "_-"


def task_id_of_length(length: int) -> str:
    # Every allowed character shows up across the lengths, "-" and "_" included.
    return "".join(ID_ALPHABET[(length * 7 + i) % len(ID_ALPHABET)] for i in range(length))


@pytest.mark.parametrize("length", range(6, 65))
def test_custom_id_round_trip_for_every_length(length: int) -> None:
    task_id = task_id_of_length(length)
    for number in range(1, 5):
        custom_id = upscale_custom_id(task_id, number)
        assert len(custom_id) <= 100  # Discord refuses longer custom_ids
        assert parse_upscale_custom_id(custom_id) == (task_id, number - 1)


def test_custom_ids_of_one_grid_differ() -> None:
    assert len({upscale_custom_id(TASK, n) for n in range(1, 5)}) == 4


@pytest.mark.parametrize(("number", "index"), [(1, 0), (2, 1), (3, 2), (4, 3)])
def test_u_number_is_image_index_minus_one(number: int, index: int) -> None:
    assert number_to_index(number) == index
    assert parse_upscale_custom_id(upscale_custom_id(TASK, number)) == (TASK, index)


@pytest.mark.parametrize("number", [0, 5, -1, 100, True, False])
def test_number_to_index_refuses(number: int) -> None:
    with pytest.raises(ValueError):
        number_to_index(number)


@pytest.mark.parametrize(
    "number",
    [
        0,
        5,
        -1,
        pytest.param(True),
        pytest.param(2.0),
    ],
)
def test_upscale_custom_id_refuses_bad_numbers(number: int) -> None:
    with pytest.raises(ValueError):
        upscale_custom_id(TASK, number)


@pytest.mark.parametrize(
    "task_id", ["", "abcde", "a" * 65, "abc def", "abc:def", "abcdef\n", "ü" * 8, None, 123456]
)
def test_upscale_custom_id_refuses_bad_task_ids(task_id: object) -> None:
    with pytest.raises(ValueError):
        upscale_custom_id(task_id, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "custom_id",
    [
        "",
        "mju:",
        "other-button",
        f"mju:{TASK}:0",
        f"mju:{TASK}:5",
        f"mju:{TASK}:1x",
        f"mju:{TASK}:1:extra",
        f"mju:{TASK}:12",
        f" mju:{TASK}:1",
        f"mju:{TASK}:1 ",
        f"mju:{TASK}:1\n",
        f"mju:{TASK}:",
        "mju::1",
        f"MJU:{TASK}:1",
        f"mjv:{TASK}:1",
        f"xmju:{TASK}:1",
        "mju:abcde:1",
        f"mju:{'a' * 65}:1",
        "mju:abc def:1",
        "mju:abc/def:1",
    ],
)
def test_other_custom_ids_are_not_upscale_buttons(custom_id: str) -> None:
    assert parse_upscale_custom_id(custom_id) is None


def test_parse_agrees_with_the_template_discord_py_fullmatches() -> None:
    # discord.py dispatches a DynamicItem when its template fullmatches the custom_id; the parser
    # must answer for exactly the same strings, or a click would be dispatched but not understood.
    pattern = re.compile(UPSCALE_TEMPLATE)
    for custom_id in (f"mju:{TASK}:3", f"mju:{TASK}:3:x", f"mju:{TASK}:0", f"mju:{TASK}:5"):
        assert (pattern.fullmatch(custom_id) is not None) == (
            parse_upscale_custom_id(custom_id) is not None
        )


async def test_grid_buttons_are_two_rows_with_used_ones_green() -> None:
    view = GridButtons(TASK, ParentUse(frozenset({("upscale", 1), ("vary", 3)})))
    buttons = view.children
    assert all(isinstance(button, discord.ui.Button) for button in buttons)
    rows = [[b.label for b in buttons if b.row == row] for row in (0, 1)]
    assert rows == [["U1", "U2", "U3", "U4", "🔄"], ["V1", "V2", "V3", "V4"]]
    green = [b.label for b in buttons if b.style is discord.ButtonStyle.success]
    assert green == ["U2", "V4"]
    assert [parse_upscale_custom_id(button.custom_id) for button in buttons[:4]] == [
        (TASK, index) for index in range(4)
    ]
    custom_ids = [button.custom_id for button in buttons[4:]]
    assert custom_ids == [reroll_custom_id(TASK), *(vary_custom_id(TASK, n) for n in range(1, 5))]
    assert view.timeout is None


async def test_a_rerolled_grid_shows_its_reroll_button_green() -> None:
    view = GridButtons(TASK, ParentUse(frozenset({("reroll", None)})))
    green = [b.label for b in view.children if b.style is discord.ButtonStyle.success]
    assert green == ["🔄"]


@pytest.mark.parametrize(
    ("make", "template"),
    [
        (lambda n: vary_custom_id(TASK, n), VARY_TEMPLATE),
        (lambda n: upscale_custom_id(TASK, n), UPSCALE_TEMPLATE),
    ],
)
def test_numbered_custom_ids_match_their_own_template_only(
    make: Callable[[int], str], template: str
) -> None:
    templates = (UPSCALE_TEMPLATE, VARY_TEMPLATE, REROLL_TEMPLATE)
    for number in range(1, 5):
        matching = [t for t in templates if re.fullmatch(t, make(number))]
        assert matching == [template]
    assert [t for t in templates if re.fullmatch(t, reroll_custom_id(TASK))] == [REROLL_TEMPLATE]
    with pytest.raises(ValueError):
        make(5)
    with pytest.raises(ValueError):
        vary_custom_id("bad id", 1)


async def test_grid_buttons_default_to_all_grey() -> None:
    view = GridButtons(TASK)
    assert {button.style for button in view.children} == {discord.ButtonStyle.secondary}


async def test_grid_buttons_are_not_dispatchable() -> None:
    view = GridButtons(TASK, ParentUse(frozenset({("upscale", 1)})))
    # Why this matters: Messageable.send and Message.edit hand a dispatchable view to
    # ConnectionState.store_view. Stored, each grid's view would stay in the view store for good
    # (timeout=None), and its plain buttons, whose callbacks do nothing, would be registered
    # under the very custom_ids the UpscaleButton DynamicItem (cogs/upscale.py) is meant to
    # receive: every click would also be dispatched to an inert stored view (one more per grid
    # edit), and a Webhook without the bot's state (Webhook.from_url) would refuse the view.
    # Only the DynamicItem, rebuilt from the custom_id, must handle clicks, so that buttons
    # keep working after a restart.
    assert view.is_dispatchable() is False
    # The override is what makes it so: discord.py's own rule would call these buttons
    # dispatchable.
    assert discord.ui.View.is_dispatchable(view) is True


async def test_upscale_button_alone() -> None:
    button = upscale_button(TASK, 3, done=True)
    assert (button.label, button.style) == ("U3", discord.ButtonStyle.success)
    assert parse_upscale_custom_id(button.custom_id) == (TASK, 2)


# ----- who may click -----------------------------------------------------------------------------

OWNER = 123456789012345678


@pytest.mark.parametrize(
    "content",
    [
        f"**a red fox** - <@{OWNER}>",
        f"**a fox - <@987654321098765432> in snow** - <@{OWNER}>",
        f"**a fox**{owner_mention(OWNER)}",
        f"**a fox**{owner_mention(OWNER)}\nhttps://tempfile.aiquickdraw.com/x_0_3.png",
        f"**a fox** - Variations (image #2) <@{OWNER}>",
        f"**a fox** - <@{OWNER}> (re-roll)",
    ],
)
def test_grid_owner_is_the_mention_closing_the_first_line(content: str) -> None:
    assert grid_owner(content) == OWNER


@pytest.mark.parametrize(
    "content",
    ["", "**a fox**", f"**a fox - <@{OWNER}> in snow**", f"<@{OWNER}> said hi", "- <@12>"],
)
def test_grid_without_an_owner_line_has_no_owner(content: str) -> None:
    assert grid_owner(content) is None


def test_who_may_upscale() -> None:
    assert may_upscale("anyone", 1, None, manages=False)
    assert may_upscale("requester", OWNER, OWNER, manages=False)
    assert not may_upscale("requester", 1, OWNER, manages=False)
    assert may_upscale("requester", 1, OWNER, manages=True)
    assert not may_upscale("requester", 1, None, manages=False)
    assert may_upscale("requester", 1, None, manages=True)
