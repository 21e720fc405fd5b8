"""The real bot (discord.py, cogs, tracker, store, listener) against the Discord double, with the
API sandbox served by the bot itself (MJ_API_BASE_URL=sandbox, callbacks to its own listener)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.app import UpscaleBot
from bot.config import load_settings
from bot.grid import parse_upscale_custom_id, upscale_custom_id
from bot.jobs.store import JobState
from bot.jobs.tracker import PollPolicy
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import DiscordDouble, InteractionHandle, StoredMessage
from tests.fakes.discord_double import point_discord_at

TOKEN = "fake-discord-token-for-the-double"
SUCCESS, SECONDARY = 3, 2
FAST_POLL = PollPolicy(first_with_callback=0.5, interval=0.05, steady_for=1.0, max_interval=0.2)


@pytest.fixture
async def double() -> AsyncIterator[DiscordDouble]:
    async with DiscordDouble() as fake:
        with point_discord_at(fake):
            yield fake
    assert fake.internal_errors == []


class Harness:
    """Starts bot processes (one at a time) sharing one database and one sandbox."""

    def __init__(self, double: DiscordDouble, tmp_path: Path) -> None:
        self.double = double
        settings = load_settings(
            {
                "DISCORD_TOKEN": TOKEN,
                "MJ_API_BASE_URL": "sandbox",
                "HOST": "127.0.0.1",
                "DATABASE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
                "DISCORD_GUILD_ID": str(double.guild_id),
            }
        )
        self.settings = replace(settings, port=0)
        # Tasks finish as soon as they are created; a test that needs one running sets None.
        self.sandbox = SandboxAPI(task_seconds=0, image_size=16)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[UpscaleBot]:
        bot = UpscaleBot(
            self.settings, sandbox=self.sandbox, poll=FAST_POLL, guild_ready_timeout=0.05
        )
        task = asyncio.create_task(bot.start(TOKEN))
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if task.done():
                task.result()
            raise TimeoutError("the bot did not become ready")
        try:
            yield bot
        finally:
            await bot.close()
            await asyncio.wait_for(task, timeout=10)


@pytest.fixture
def harness(double: DiscordDouble, tmp_path: Path) -> Harness:
    return Harness(double, tmp_path)


def grid_task(grid: StoredMessage) -> str:
    parsed = parse_upscale_custom_id(grid.buttons()[0].custom_id or "")
    assert parsed is not None
    return parsed[0]


async def imagine(double: DiscordDouble, user: int, prompt: str) -> StoredMessage:
    handle = await double.slash("imagine", {"prompt": prompt}, user)
    ack = await handle.wait_ack()
    assert ack.type == 4  # the visible status message is the answer itself
    status = handle.original
    assert status is not None and "Generating" in status.content and not status.ephemeral
    grid = await double.wait_for_message(
        lambda m: len(m.attachments) == 4 and prompt in m.content and m.kind == "channel"
    )
    await double.wait_for(lambda: status.deleted or None)
    return grid


async def click(double: DiscordDouble, grid: StoredMessage, number: int, user: int):  # noqa: ANN201
    handle = await double.click(grid.id, upscale_custom_id(grid_task(grid), number), user)
    ack = await handle.wait_ack()
    assert ack.type == 6 and ack.accepted
    return handle


async def result_for(double: DiscordDouble, number: int, user: int) -> StoredMessage:
    return await double.wait_for_message(
        lambda m: f"Image #{number}" in m.content and f"<@{user}>" in m.content and m.attachments
    )


async def test_imagine_then_upscale_posts_the_right_bytes(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running() as bot:
        assert set(double.commands(double.guild_id)) == {"imagine", "upscale"}
        grid = await imagine(double, alice, "a red fox in snow")
        task = grid_task(grid)
        assert attachments_match(grid, [sandbox.image_bytes(task, i) for i in range(4)])
        assert f"<@{alice}>" in grid.content
        assert [b.label for b in grid.buttons()] == ["U1", "U2", "U3", "U4"]

        await click(double, grid, 2, bob)
        status = await double.wait_for_message(lambda m: "Upscaling image #2" in m.content)
        assert f"<@{bob}>" in status.content
        result = await result_for(double, 2, bob)
        assert "a red fox in snow" in result.content

        # The status message goes once the delivery is recorded.
        await double.wait_for(lambda: status.deleted or None)
        calls = [c.body for c in sandbox.calls if c.endpoint == "generateUpscale"]
        assert len(calls) == 1
        assert calls[0]["taskId"] == task and calls[0]["imageIndex"] == 1
        assert calls[0]["callBackUrl"].startswith("http://127.0.0.1:")
        job = await bot.tracker.store.live_upscale(task, 1)
        assert job is not None and job.state is JobState.DELIVERED and job.upstream_task_id
        assert job.result_message_id == result.id
        assert attachments_match(result, [sandbox.image_bytes(job.upstream_task_id, 0)])

        await double.wait_for(lambda: grid.button(label="U2").style == SUCCESS or None)
        assert [b.style for b in grid.buttons()] == [SECONDARY, SUCCESS, SECONDARY, SECONDARY]
        assert [m.content for m in double.messages() if "⏳" in m.content] == []


def attachments_match(message: StoredMessage, expected: list[bytes]) -> bool:
    return [data for _name, data in message.attachments] == expected
