"""Click storms, per-user limits, who may click, queueing and gateway outages: the real bot
against the Discord double, with the sandbox served by the bot itself."""

from __future__ import annotations

import asyncio

from bot.grid import upscale_custom_id
from bot.jobs.store import JobState
from tests.fakes.discord_double import DEFAULT_MEMBER_PERMISSIONS, StoredMessage
from tests.harness import (
    Harness,
    click,
    grid_task,
    imagine,
    result_for,
    submitted,
)

MANAGE_MESSAGES = 1 << 13
USERS = 50


async def show_grid(harness: Harness, user: int, prompt: str) -> StoredMessage:
    """A grid made outside the bot, shown with /upscale task_id (no record-info cost)."""
    task = harness.sandbox.add_generation(prompt=prompt)
    handle = await harness.double.slash("upscale", {"task_id": task}, user)
    await handle.wait_ack()
    return await harness.double.wait_for_message(
        lambda m: prompt in m.content and len(m.attachments) == 4
    )


def ephemerals(harness: Harness) -> list[str]:
    return [m.content for m in harness.double.messages(ephemeral=True)]


async def test_fifty_concurrent_clicks_on_one_button_make_one_upscale(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    users = [double.add_user(f"user{n}") for n in range(USERS)]
    async with harness.running():
        grid = await imagine(double, users[0], "one fox, fifty clicks")
        handles = await asyncio.gather(
            *(double.click(grid.id, upscale_custom_id(grid_task(grid), 3), u) for u in users)
        )
        acks = await asyncio.gather(*(h.wait_ack() for h in handles))
        assert all(ack.type == 6 and ack.accepted for ack in acks)
        await double.wait_for(
            lambda: sum("already" in text for text in ephemerals(harness)) == USERS - 1 or None
        )
        # Every click is accounted for by now (one job, 49 told): the one result may still be
        # on its way, and no other can come.
        await double.wait_for(
            lambda: (
                [m for m in double.messages() if "Image #3" in m.content and m.attachments] or None
            )
        )
        results = [m for m in double.messages() if "Image #3" in m.content and m.attachments]
        assert len(results) == 1
        assert sandbox.count("generateUpscale") == 1


async def test_fifty_clicks_on_fifty_grids_are_all_delivered(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["MJ_SUBMIT_RATE"] = "1000"  # pacing has its own tests; here every click counts
    harness.env["GRID_REPOSTS_PER_HOUR"] = "unlimited"  # one member shows all fifty grids
    users = [double.add_user(f"user{n}") for n in range(USERS)]
    async with harness.running():
        grids = [await show_grid(harness, users[0], f"grid number {n}") for n in range(USERS)]
        handles = await asyncio.gather(
            *(
                double.click(grid.id, upscale_custom_id(grid_task(grid), 1), user)
                for grid, user in zip(grids, users, strict=True)
            )
        )
        await asyncio.gather(*(h.wait_ack() for h in handles))
        for n, user in enumerate(users):
            result = await result_for(double, 1, user)
            assert f"grid number {n}" in result.content
        assert sandbox.count("generateUpscale") == USERS
        results = [m for m in double.messages() if "Image #1" in m.content and m.attachments]
        assert len(results) == USERS


async def test_one_user_may_have_only_so_many_jobs_running(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["MAX_JOBS_PER_USER"] = "2"
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running():
        grid = await imagine(double, alice, "a busy afternoon")
        sandbox.task_seconds = None
        for number in (1, 2):
            await click(double, grid, number, alice)
            await submitted(double, grid, number)
        refused = await (await click(double, grid, 3, alice)).wait_followup()
        assert refused.ephemeral and "already have 2 jobs running" in refused.content
        assert sandbox.count("generateUpscale") == 2
        # The limit is per person: bob may still upscale image #3.
        await click(double, grid, 3, bob)
        await submitted(double, grid, 3)
        assert sandbox.count("generateUpscale") == 3


async def test_only_the_requester_and_message_managers_may_click_when_so_set(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["UPSCALE_ALLOWED"] = "requester"
    alice, bob = double.add_user("alice"), double.add_user("bob")
    mod = double.add_user("mod", permissions=DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES)
    async with harness.running():
        grid = await imagine(double, alice, "alice's own grid")
        refused = await (await click(double, grid, 1, bob)).wait_followup()
        assert refused.ephemeral and f"Only <@{alice}>" in refused.content
        assert sandbox.count("generateUpscale") == 0

        await click(double, grid, 1, alice)
        await result_for(double, 1, alice)
        await click(double, grid, 2, mod)
        await result_for(double, 2, mod)
        assert sandbox.count("generateUpscale") == 2


async def test_waiting_clicks_are_told_they_are_queued_and_a_full_queue_says_so(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["MJ_SUBMIT_RATE"] = "1"
    harness.env["QUEUE_LIMIT"] = "1"
    alice, bob, carol = (double.add_user(n) for n in ("alice", "bob", "carol"))
    async with harness.running():
        first = await show_grid(harness, alice, "first grid")
        second = await show_grid(harness, bob, "second grid")
        third = await show_grid(harness, carol, "third grid")
        await click(double, first, 1, alice)
        await result_for(double, 1, alice)
        # The one submission of these 10 s is spent: the next waits, the one after is refused.
        queued = await (await click(double, second, 1, bob)).wait_followup()
        assert queued.ephemeral and "Queued behind 0" in queued.content
        refused = await (await click(double, third, 1, carol)).wait_followup()
        assert refused.ephemeral and "already waiting" in refused.content
        assert sandbox.count("generateUpscale") == 1


async def test_a_gateway_outage_does_not_touch_jobs_in_flight(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        grid = await imagine(double, alice, "through the storm")
        sandbox.task_seconds = None
        await click(double, grid, 1, alice)
        await submitted(double, grid, 1)
        job = await app.services.tracker.store.live_twin("upscale", grid_task(grid), 0)
        assert job is not None and job.upstream_task_id

        await double.drop_gateway()
        # The task finishes while the gateway is down; the result goes out over REST regardless.
        sandbox.complete(job.upstream_task_id)
        await result_for(double, 1, alice)
        await double.wait_until_connected()
        # And after the resume, clicks arrive and work as before.
        sandbox.task_seconds = 0
        await click(double, grid, 2, alice)
        await result_for(double, 2, alice)
        done = await app.services.tracker.store.get(job.id)
        assert done is not None and done.state is JobState.DELIVERED
        assert sandbox.count("generateUpscale") == 2


async def test_imagine_over_the_limit_says_why_privately_and_posts_nothing(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    harness.env["MAX_JOBS_PER_USER"] = "1"
    alice = double.add_user("alice")
    async with harness.running():
        sandbox.task_seconds = None
        first = await double.slash("imagine", {"prompt": "the first idea"}, alice)
        await first.wait_ack()
        await sandbox.wait_for_call("generate", 1)
        second = await double.slash("imagine", {"prompt": "the second idea"}, alice)
        await second.wait_ack()
        # Refused before the visible status line: the answer itself is the private refusal.
        refused = second.original
        assert refused is not None and refused.ephemeral
        assert "Not started: you already have a job running" in refused.content
        assert not any("the second idea" in m.content for m in double.messages(ephemeral=False))
        assert sandbox.count("generate") == 1
        assert first.original is not None and not first.original.deleted
