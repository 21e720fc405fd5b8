"""V1–V4 and 🔄: the real bot (discord.py, cogs, tracker, store, listener) against the Discord
double and the API sandbox, numbering generateVary's images from 0 or from 1."""

from __future__ import annotations

import asyncio

import discord
import pytest

from bot.grid import reroll_custom_id, upscale_button, vary_custom_id
from bot.jobs.store import Job, JobState, JobStore
from bot.jobs.vary_index import FACT
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import DiscordDouble, InteractionHandle, StoredMessage
from tests.harness import (
    GRID_LABELS,
    SUCCESS,
    Harness,
    click,
    grid_task,
    imagine,
    result_for,
    status_lines,
)
from tests.names import JobKind


def numbered_from(harness: Harness, base: int, *, configured: bool = True) -> None:
    """The sandbox numbers generateVary's images from ``base``; the bot is told so or not."""
    harness.sandbox = SandboxAPI(task_seconds=0, image_size=16, vary_index_base=base)
    if configured:
        harness.env["MJ_VARY_INDEX_BASE"] = str(base)


async def press(double: DiscordDouble, grid: StoredMessage, custom_id: str, user: int):
    handle = await double.click(grid.id, custom_id, user)
    ack = await handle.wait_ack()
    assert ack.type == 6 and ack.accepted
    return handle


async def variations_of(double: DiscordDouble, number: int, user: int) -> StoredMessage:
    return await double.wait_for_message(
        lambda m: (
            f"- Variations (image #{number}) <@{user}>" in m.content and len(m.attachments) == 4
        )
    )


def vary_indexes(sandbox: SandboxAPI) -> list[int]:
    return [c.body["imageIndex"] for c in sandbox.calls if c.endpoint == "generateVary"]


async def followup_text(handle: InteractionHandle) -> str:
    message = await handle.wait_followup()
    assert message.ephemeral
    return message.content


@pytest.mark.parametrize("base", [0, 1])
async def test_v2_makes_a_new_grid_of_the_clicked_image_with_both_rows(
    harness: Harness, base: int
) -> None:
    numbered_from(harness, base)
    double, sandbox = harness.double, harness.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running() as app:
        grid = await imagine(double, alice, "a red fox")
        task = grid_task(grid)
        sandbox.task_seconds = None
        await press(double, grid, vary_custom_id(task, 2), bob)
        status = await double.wait_for_message(
            lambda m: "Making variations of image #2" in m.content
        )
        assert f"<@{bob}>" in status.content and not status.ephemeral
        await double.wait_for(lambda: grid.button(label="V2").style == SUCCESS or None)
        assert [c.body["taskId"] for c in sandbox.calls if c.endpoint == "generateVary"] == [task]
        assert vary_indexes(sandbox) == [1 + base]
        job = await app.services.tracker.store.live_twin(JobKind.VARY, task, 1)
        assert job is not None and job.upstream_task_id
        assert sandbox.task(job.upstream_task_id).image_index == 1
        sandbox.complete(job.upstream_task_id)

        varied = await variations_of(double, 2, bob)
        assert varied.content.startswith("**a red fox** - Variations (image #2)")
        assert [data for _, data in varied.attachments] == [
            sandbox.image_bytes(job.upstream_task_id, i) for i in range(4)
        ]
        assert [b.label for b in varied.buttons()] == GRID_LABELS
        assert grid_task(varied) == job.upstream_task_id
        await double.wait_for(lambda: status.deleted or None)
        assert [b.label for b in grid.buttons() if b.style == SUCCESS] == ["V2"]

        # U3 under the variations upscales an image of the new grid, as on any grid.
        sandbox.task_seconds = 0
        await click(double, varied, 3, alice)
        upscaled = await result_for(double, 3, alice)
        assert "a red fox" in upscaled.content
        upscale = next(c.body for c in sandbox.calls if c.endpoint == "generateUpscale")
        assert (upscale["taskId"], upscale["imageIndex"]) == (job.upstream_task_id, 2)
        await double.wait_for(lambda: not status_lines(double) or None)


async def test_reroll_generates_the_same_prompt_and_options_again(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running():
        handle = await double.slash(
            "imagine", {"prompt": "a blue whale", "speed": "turbo", "aspect_ratio": "2:3"}, alice
        )
        await handle.wait_ack()
        grid = await double.wait_for_message(
            lambda m: len(m.attachments) == 4 and "a blue whale" in m.content
        )
        await press(double, grid, reroll_custom_id(grid_task(grid)), bob)
        rerolled = await double.wait_for_message(
            lambda m: (
                m.content.startswith(f"**a blue whale** - <@{bob}> (re-roll)")
                and len(m.attachments) == 4
            )
        )
        assert [b.label for b in rerolled.buttons()] == GRID_LABELS
        bodies = [c.body for c in sandbox.calls if c.endpoint == "generate"]
        assert len(bodies) == 2
        same = ("prompt", "speed", "aspectRatio", "taskType")
        assert {k: bodies[1].get(k) for k in same} == {k: bodies[0].get(k) for k in same}
        assert (bodies[1]["speed"], bodies[1]["aspectRatio"]) == ("turbo", "2:3")
        assert grid_task(rerolled) not in (grid_task(grid), None)
        await double.wait_for(lambda: grid.button(label="🔄").style == SUCCESS or None)
        await double.wait_for(lambda: not status_lines(double) or None)


async def with_task(store: JobStore, kind: JobKind, task: str, index: int | None) -> Job:
    """The running job of that button, once its task id is stored."""
    for _ in range(500):
        job = await store.live_twin(kind, task, index)
        if job is not None and job.upstream_task_id:
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"no task id stored for {kind} of {task}")


async def test_concurrent_clicks_make_one_job_and_a_later_click_another_set(
    harness: Harness,
) -> None:
    numbered_from(harness, 1)
    double, sandbox = harness.double, harness.sandbox
    users = [double.add_user(f"user{n}") for n in range(5)]
    async with harness.running() as app:
        grid = await imagine(double, users[0], "storm of clicks")
        task = grid_task(grid)
        sandbox.task_seconds = None
        handles = await asyncio.gather(
            *(press(double, grid, vary_custom_id(task, 4), user) for user in users),
            *(press(double, grid, reroll_custom_id(task), user) for user in users),
        )
        await double.wait_for(
            lambda: sum(1 for h in handles if h.followup_ids) == len(handles) - 2 or None
        )
        texts = [await followup_text(h) for h in handles if h.followup_ids]
        assert sum("Variations of image #4 are already being made" in t for t in texts) == 4, texts
        assert sum("This grid is already being re-rolled" in t for t in texts) == 4, texts
        # The two clicks taken reach the API after their duplicates may have been told.
        await double.wait_for(
            lambda: (len(vary_indexes(sandbox)), sandbox.count("generate")) == (1, 2) or None
        )
        assert vary_indexes(sandbox) == [4]
        store = app.services.tracker.store
        # The API has answered; the task ids are stored a moment later.
        vary = await with_task(store, JobKind.VARY, task, 3)
        reroll = await with_task(store, JobKind.REROLL, task, None)
        for job in (vary, reroll):
            assert job.upstream_task_id
            sandbox.complete(job.upstream_task_id)
        await variations_of(double, 4, vary.requester_id)
        await double.wait_for(lambda: not status_lines(double) or None)

        # Done, the same button makes another set: a new job, paid again.
        sandbox.task_seconds = 0
        await press(double, grid, vary_custom_id(task, 4), users[1])
        await double.wait_for(lambda: len(vary_indexes(sandbox)) == 2 or None)
        await double.wait_for(
            lambda: (
                len([m for m in double.messages() if "Variations (image #4)" in m.content]) == 2
                or None
            )
        )


async def test_v2_waits_until_v1_taught_the_base(harness: Harness) -> None:
    numbered_from(harness, 1, configured=False)
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    await harness.standalone()
    async with harness.running() as app:
        grid = await imagine(double, alice, "learning")
        task = grid_task(grid)
        refused = await followup_text(await press(double, grid, vary_custom_id(task, 2), alice))
        assert "V1 or V4" in refused and "nothing was charged" in refused
        assert vary_indexes(sandbox) == []

        await press(double, grid, vary_custom_id(task, 1), alice)
        await variations_of(double, 1, alice)
        # 0 was refused (422, nothing taken), 1 was taken: the API numbers from 1.
        assert vary_indexes(sandbox) == [0, 1]
        assert await app.services.coordination.api_fact(FACT) == "1"

        await press(double, grid, vary_custom_id(task, 2), alice)
        await variations_of(double, 2, alice)
        assert vary_indexes(sandbox) == [0, 1, 2]
        status = await app.services.status_report(None)
        assert "V1 is imageIndex 1 (learned" in status
    # What was learned outlives the process.
    async with harness.running() as app:
        assert await app.services.tracker.vary_index.base() == 1
    # A setting that contradicts it wins, and /mj status says they disagree.
    harness.env["MJ_VARY_INDEX_BASE"] = "0"
    async with harness.running() as app:
        assert await app.services.tracker.vary_index.base() == 0
        assert "seen to count from 1: check the setting" in await app.services.status_report(None)


async def test_variation_running_across_a_restart_is_posted_once(harness: Harness) -> None:
    numbered_from(harness, 0)
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    await harness.standalone()
    async with harness.running() as app:
        grid = await imagine(double, alice, "across restarts")
        task = grid_task(grid)
        sandbox.task_seconds = None
        handle = await press(double, grid, vary_custom_id(task, 3), alice)
        await double.wait_for(lambda: grid.button(label="V3").style == SUCCESS or None)
        job = await app.services.tracker.store.live_twin(JobKind.VARY, task, 2)
        assert job is not None and job.upstream_task_id
    # The bot is down when the task finishes, and the click's token is long dead by then.
    sandbox.complete(job.upstream_task_id)
    double.expire_interaction(handle)
    async with harness.running() as app:
        await variations_of(double, 3, alice)
        await double.wait_for(lambda: not status_lines(double) or None)
        done = await app.services.tracker.store.get(job.id)
        assert done is not None and done.state is JobState.DELIVERED
    assert len([m for m in double.messages() if "Variations (image #3)" in m.content]) == 1
    assert vary_indexes(sandbox) == [2]


async def test_variations_and_rerolls_count_as_generations_and_never_pass_the_allowance(
    harness: Harness,
) -> None:
    numbered_from(harness, 0)
    harness.env["DAILY_IMAGINES_PER_USER"] = "3"
    harness.env["MAX_JOBS_PER_USER"] = "10"
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "counted")
        task = grid_task(grid)
        sandbox.task_seconds = None  # running jobs keep their use: nothing is given back
        handles = await asyncio.gather(
            *(press(double, grid, vary_custom_id(task, n), alice) for n in range(1, 5)),
            press(double, grid, reroll_custom_id(task), alice),
        )
        await double.wait_for(lambda: sum(1 for h in handles if h.followup_ids) == 3 or None)
        refusals = [await followup_text(h) for h in handles if h.followup_ids]
        assert all("used your 3 generations for today" in text for text in refusals), refusals
        # The /imagine and the two clicks not refused: three generations. Every click is
        # accounted for then (refused or sent), so none can add a fourth.
        await double.wait_for(
            lambda: len(vary_indexes(sandbox)) + sandbox.count("generate") == 3 or None
        )


async def test_a_grid_posted_before_variations_keeps_working(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        grid = await imagine(double, alice, "an old grid")
        task = grid_task(grid)
        # As the version before V1–V4 posted it: the U-row only.
        old_row = discord.ui.View(timeout=None)
        for number in range(1, 5):
            old_row.add_item(upscale_button(task, number))
        channel = app.bot.get_partial_messageable(grid.channel_id, guild_id=double.guild_id)
        await channel.get_partial_message(grid.id).edit(view=old_row)
        assert [b.label for b in grid.buttons()] == ["U1", "U2", "U3", "U4"]

        await click(double, grid, 2, alice)
        await result_for(double, 2, alice)
        assert sandbox.count("generateUpscale") == 1
        # Marking U2 done gives the old grid the whole set of buttons.
        await double.wait_for(lambda: [b.label for b in grid.buttons()] == GRID_LABELS or None)
        assert [b.label for b in grid.buttons() if b.style == SUCCESS] == ["U2"]


async def test_a_refused_variation_is_told_and_can_be_clicked_again(harness: Harness) -> None:
    numbered_from(harness, 0)
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "no credits")
        task = grid_task(grid)
        sandbox.fail_next("generateVary", 402)
        told = await followup_text(await press(double, grid, vary_custom_id(task, 3), alice))
        assert "out of credits" in told
        await double.wait_for_message(lambda m: "❌ Variations of image #3" in m.content)
        assert not [m for m in double.messages() if "Making variations of image #3" in m.content]
        assert grid.button(label="V3").style != SUCCESS

        await press(double, grid, vary_custom_id(task, 3), alice)
        await variations_of(double, 3, alice)
        assert vary_indexes(sandbox) == [2, 2]
