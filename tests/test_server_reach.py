"""One server's work is that server's: the real bot against the Discord double with two servers
and the sandbox API. A task the bot made in another server is unknown here (no paid call,
nothing stored, its prompt never quoted, in the words said of a task that does not exist);
a job asked for in another server is not told; /upscale follows UPSCALE_ALLOWED; re-posting a
grid is limited per member per server per hour."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bot.grid import reroll_custom_id, upscale_custom_id, vary_custom_id
from bot.jobs.stats import JobStats
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import (
    DEFAULT_MEMBER_PERMISSIONS,
    MANAGE_MESSAGES,
    DiscordDouble,
    StoredMessage,
)
from tests.harness import SECONDARY, Harness, grid_task, imagine, result_for

# A task id no one made.
NOWHERE = "0123456789abcdef0123456789abcdef"
POSTED = "✅ Posted the four images."


def second_server(harness: Harness) -> int:
    """Server B's channel; the bot serves both servers (the setting names them for a version
    that serves only the servers it is told to)."""
    double = harness.double
    guild_b, channel_b = double.add_guild("Server B")
    harness.env["ALLOWED_GUILD_IDS"] = f"{double.guild_id},{guild_b}"
    return channel_b


async def answer(
    double: DiscordDouble,
    options: Mapping[str, object],
    user: int,
    channel: int | None = None,
) -> str:
    """What /upscale tells ``user`` privately."""
    handle = await double.slash("upscale", options, user, channel_id=channel)
    told = await handle.wait_followup()
    assert told.ephemeral
    return told.content


def paid_calls(sandbox: SandboxAPI) -> int:
    return sum(sandbox.count(e) for e in ("generate", "generateUpscale", "generateVary"))


def grids_of(double: DiscordDouble, prompt: str, channel: int | None = None) -> list[StoredMessage]:
    return [
        m
        for m in double.messages(channel, ephemeral=False)
        if len(m.attachments) == 4 and prompt in m.content
    ]


async def test_a_task_made_in_another_server_is_unknown_there(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    channel_b = second_server(harness)
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running() as app:
        grid = await imagine(double, alice, "the secret of server A")
        task = grid_task(grid)
        # What bob is told of a task that does not exist, in his server.
        no_upscale = await answer(double, {"task_id": NOWHERE, "image": 2}, bob, channel_b)
        no_repost = await answer(double, {"task_id": NOWHERE}, bob, channel_b)
        assert "unknown" in no_upscale and no_repost == no_upscale

        store = app.services.tracker.store
        stored = sum((await JobStats(store.database).count_by_kind_and_state()).values())
        paid, looked_up = paid_calls(sandbox), sandbox.count("record-info")
        told = [
            await answer(double, {"task_id": task, "image": 2}, bob, channel_b),
            await answer(double, {"task_id": task}, bob, channel_b),
        ]
        # A's grid where an older version re-posted it in B: its buttons, clicked from there.
        copy = await double.copy_message(grid.id, channel_b)
        for custom_id in (
            upscale_custom_id(task, 1),
            vary_custom_id(task, 4),
            reroll_custom_id(task),
        ):
            handle = await double.click(copy.id, custom_id, bob)
            assert (await handle.wait_ack()).type == 6
            told.append((await handle.wait_followup()).content)

        assert told == [no_upscale] * 5
        assert paid_calls(sandbox) == paid and sandbox.count("record-info") == looked_up
        assert sum((await JobStats(store.database).count_by_kind_and_state()).values()) == stored
        assert [m.id for m in double.messages(channel_b, ephemeral=False)] == [copy.id]
        assert not [t for t in told if "secret" in t]


async def test_a_job_asked_for_in_another_server_is_not_told(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    channel_b = second_server(harness)
    alice, bob = double.add_user("alice"), double.add_user("bob")
    foreign = sandbox.add_generation(prompt="made outside the bot")
    async with harness.running():
        sandbox.task_seconds = None  # alice's upscale keeps running
        started = await answer(double, {"task_id": foreign, "image": 2}, alice)
        assert started.startswith("⏳")
        running = await answer(double, {"task_id": foreign, "image": 2}, bob, channel_b)
        upscale = next(t for t in sandbox.tasks() if t.task_type == "mj_upscale")
        sandbox.complete(upscale.task_id)
        await result_for(double, 2, alice)
        done = await answer(double, {"task_id": foreign, "image": 2}, bob, channel_b)

        for told in (running, done):
            assert told.startswith("❌ Image #2 was not upscaled") and "elsewhere" in told
            assert "nothing was started or charged" in told
            assert f"<@{alice}>" not in told and "discord.com" not in told
            assert "made outside the bot" not in told
        assert sandbox.count("generateUpscale") == 1
        # Shown in B, the grid does not show alice's upscale green either.
        assert await answer(double, {"task_id": foreign}, bob, channel_b) == POSTED
        (shown,) = grids_of(double, "made outside the bot", channel_b)
        assert {b.style for b in shown.buttons()} == {SECONDARY}

        # The other images of that task are bob's to upscale.
        sandbox.task_seconds = 0
        await answer(double, {"task_id": foreign, "image": 3}, bob, channel_b)
        result = await result_for(double, 3, bob)
        assert result.channel_id == channel_b


async def test_upscale_command_follows_upscale_allowed_requester(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["UPSCALE_ALLOWED"] = "requester"
    alice, bob = double.add_user("alice"), double.add_user("bob")
    mod = double.add_user("mod", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES)
    foreign = sandbox.add_generation(prompt="made outside the bot")
    async with harness.running():
        grid = await imagine(double, alice, "alice's own grid")
        task = grid_task(grid)
        upscale = await answer(double, {"task_id": task, "image": 1}, bob)
        assert upscale == (
            f"❌ Only <@{alice}>, who asked for it, or members who can manage messages may "
            "upscale this grid."
        )
        repost = await answer(double, {"task_id": task}, bob)
        assert f"Only <@{alice}>" in repost and "re-post" in repost
        outside = await answer(double, {"task_id": foreign, "image": 1}, bob)
        assert outside == (
            "❌ Only members who can manage messages may upscale a task the bot did not make "
            "in this server."
        )
        assert sandbox.count("generateUpscale") == 0 and len(grids_of(double, "alice's")) == 1

        await answer(double, {"task_id": task, "image": 1}, alice)
        await result_for(double, 1, alice)
        await answer(double, {"task_id": foreign, "image": 2}, mod)
        await result_for(double, 2, mod)
        assert sandbox.count("generateUpscale") == 2


async def test_a_burst_of_reposts_posts_exactly_the_hourly_allowance(harness: Harness) -> None:
    double = harness.double
    channel_b = second_server(harness)
    alice, bob = double.add_user("alice"), double.add_user("bob")
    foreign = harness.sandbox.add_generation(prompt="made outside the bot")
    async with harness.running():
        handles = await asyncio.gather(
            *(double.slash("upscale", {"task_id": foreign}, bob) for _ in range(12))
        )
        told = [(await h.wait_followup()).content for h in handles]
        assert told.count(POSTED) == 10
        refused = [t for t in told if t != POSTED]
        assert len(refused) == 2
        for text in refused:
            assert text.startswith("❌ you have re-posted 10 grid(s) in this server")
            assert "the next one <t:" in text
        assert len(grids_of(double, "made outside the bot")) == 10
        # Per member and per server: alice here, and bob in server B, have hours of their own.
        assert await answer(double, {"task_id": foreign}, alice) == POSTED
        assert await answer(double, {"task_id": foreign}, bob, channel_b) == POSTED


async def test_a_repost_counts_whatever_it_shows(harness: Harness) -> None:
    # Each re-post asks the API and may download four images: a task that does not exist, or a
    # post Discord refuses (an admin taking the bot's permission away), is no way around it.
    double = harness.double
    harness.env["GRID_REPOSTS_PER_HOUR"] = "2"
    bob = double.add_user("bob")
    foreign = harness.sandbox.add_generation(prompt="made outside the bot")
    async with harness.running():
        assert "unknown" in await answer(double, {"task_id": NOWHERE}, bob)
        double.fail_next("POST", rf"/channels/{double.channel_id}/messages", 403, code=50013)
        assert (await answer(double, {"task_id": foreign}, bob)).startswith("❌")
        looked_up = harness.sandbox.count("record-info")
        assert "re-posted 2 grid(s)" in await answer(double, {"task_id": foreign}, bob)
        assert "re-posted 2 grid(s)" in await answer(double, {"task_id": NOWHERE}, bob)
        assert harness.sandbox.count("record-info") == looked_up
        assert not grids_of(double, "made outside the bot")


async def test_a_task_of_another_server_meets_the_same_limits_as_one_that_does_not_exist(
    harness: Harness,
) -> None:
    # Whatever refuses a task that does not exist (the member's allowance, the running limit,
    # the door) refuses another server's task in the same words: nothing tells them apart.
    double = harness.double
    channel_b = second_server(harness)
    harness.env["DAILY_UPSCALES_PER_USER"] = "0"
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running():
        task = grid_task(await imagine(double, alice, "the secret of server A"))
        nowhere = await answer(double, {"task_id": NOWHERE, "image": 2}, bob, channel_b)
        there = await answer(double, {"task_id": task, "image": 2}, bob, channel_b)
        assert "allowance here has no upscales" in nowhere
        assert there == nowhere


async def test_zero_reposts_forbids_them(harness: Harness) -> None:
    double = harness.double
    harness.env["GRID_REPOSTS_PER_HOUR"] = "0"
    bob = double.add_user("bob")
    foreign = harness.sandbox.add_generation(prompt="made outside the bot")
    async with harness.running():
        told = await answer(double, {"task_id": foreign}, bob)
        assert told.startswith("❌ re-posting a grid with /upscale is turned off")
        assert harness.sandbox.count("record-info") == 0
        assert not grids_of(double, "made outside the bot")
