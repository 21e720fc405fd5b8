"""A kind defined only in the tests (tests/kinds/sepia.py), end to end with the real bot: its
button under an upscaled result, its paid call to an endpoint the sandbox was given from outside,
its dedupe, and a restart while it runs. Nothing under bot/ or cogs/ names it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bot.jobs.kinds import register, unregister
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import DiscordDouble, StoredMessage
from tests.harness import GRID_LABELS, Harness, click, imagine, result_for
from tests.kinds.sepia import Sepia, add_sepia_endpoint


@pytest.fixture
def sepia(harness: Harness) -> Iterator[Sepia]:
    """Sepia registered (before the bot starts: its button is added then) and served by the
    sandbox (before it is served: aiohttp freezes its routes)."""
    kind = Sepia()
    register(kind)
    add_sepia_endpoint(harness.sandbox)
    try:
        yield kind
    finally:
        unregister(kind.name)


async def upscaled(double: DiscordDouble, user: int, prompt: str) -> tuple[StoredMessage, str]:
    """An upscaled image (U1 of a new grid) and its task id."""
    grid = await imagine(double, user, prompt)
    assert [b.label for b in grid.buttons()] == GRID_LABELS
    await click(double, grid, 1, user)
    result = await result_for(double, 1, user)
    button = result.button(label="Sepia")
    assert button.custom_id is not None
    return result, button.custom_id.removeprefix("mjs:")


async def press(double: DiscordDouble, message: StoredMessage, user: int):
    button = message.button(label="Sepia")
    assert button.custom_id is not None
    handle = await double.click(message.id, button.custom_id, user)
    ack = await handle.wait_ack()
    assert ack.type == 6 and ack.accepted
    return handle


def sepia_calls(sandbox: SandboxAPI) -> list[dict[str, object]]:
    return [c.body for c in sandbox.calls if c.endpoint == "generateSepia"]


async def sepia_result(double: DiscordDouble, user: int) -> StoredMessage:
    return await double.wait_for_message(
        lambda m: f"- Sepia <@{user}>" in m.content and len(m.attachments) == 1
    )


async def test_the_sepia_button_is_under_an_upscaled_image(harness: Harness, sepia: Sepia) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        result, task = await upscaled(double, alice, "a fox to tone")
        # The button names the upscale's task, and only the upscale's.
        assert sandbox.task(task).task_type == "mj_upscale"
        assert [b.label for b in result.buttons()] == [
            "🎬 Animate (low motion)",
            "🎬 Animate (high motion)",
            "Sepia",
        ]


async def test_sepia_is_paid_once_and_posted_once(harness: Harness, sepia: Sepia) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running():
        result, task = await upscaled(double, alice, "a fox in sepia")
        await press(double, result, alice)
        toned = await sepia_result(double, alice)
        calls = sepia_calls(sandbox)
        assert len(calls) == 1 and calls[0]["taskId"] == task
        sepia_task = sandbox.tasks()[-1]
        assert sepia_task.task_type == "mj_sepia" and sepia_task.parent_task_id == task
        assert [data for _name, data in toned.attachments] == [
            sandbox.image_bytes(sepia_task.task_id, 0)
        ]
        await double.wait_for(lambda: result.button(label="Sepia").style == 3 or None)
        # A second click, by anyone, is the same job: told, nothing paid again.
        handle = await press(double, result, bob)
        told = await handle.wait_followup()
        assert told.ephemeral and "already toned in sepia" in told.content
        assert len(sepia_calls(sandbox)) == 1
    assert len([m for m in double.messages() if "- Sepia <@" in m.content]) == 1


async def test_sepia_running_across_a_restart_is_posted_once(
    harness: Harness, sepia: Sepia
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    await harness.standalone()
    async with harness.running():
        result, _ = await upscaled(double, alice, "a fox across restarts")
        sandbox.task_seconds = None
        handle = await press(double, result, alice)
        await sandbox.wait_for_call("generateSepia")  # type: ignore[arg-type]
        await double.wait_for(lambda: result.button(label="Sepia").style == 3 or None)
    # The bot is down when the task finishes, and the click's token is long dead by then.
    sandbox.complete(sandbox.tasks()[-1].task_id)
    double.expire_interaction(handle)
    async with harness.running():
        await sepia_result(double, alice)
    assert len([m for m in double.messages() if "- Sepia <@" in m.content]) == 1
    assert len(sepia_calls(sandbox)) == 1


async def test_a_storm_of_sepia_clicks_is_one_paid_job(harness: Harness, sepia: Sepia) -> None:
    double, sandbox = harness.double, harness.sandbox
    users = [double.add_user(f"toner{n}") for n in range(20)]
    async with harness.running():
        result, task = await upscaled(double, users[0], "a fox, twenty clicks")
        button = result.button(label="Sepia")
        assert button.custom_id is not None
        handles = await asyncio.gather(
            *(double.click(result.id, button.custom_id, user) for user in users)
        )
        assert all(ack.accepted for ack in await asyncio.gather(*(h.wait_ack() for h in handles)))
        # Whoever's click came first is the requester; every other click is told, privately.
        await double.wait_for_message(
            lambda m: "- Sepia <@" in m.content and len(m.attachments) == 1
        )
        await double.wait_for(
            lambda: (
                sum("already" in m.content and "toned" in m.content for m in double.messages())
                == 19
                or None
            )
        )
    assert [c["taskId"] for c in sepia_calls(sandbox)] == [task]
    assert len([m for m in double.messages() if "- Sepia <@" in m.content]) == 1
