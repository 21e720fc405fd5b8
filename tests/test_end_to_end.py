"""The real bot (discord.py, cogs, tracker, store, listener) against the Discord double, with the
API sandbox served by the bot itself (MJ_API_BASE_URL=sandbox, callbacks to its own listener)."""

from __future__ import annotations

import gc
import logging

import pytest

from bot.grid import upscale_custom_id
from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.store import JobState
from tests.fakes.discord_double import StoredMessage
from tests.harness import (
    GRID_LABELS,
    SECONDARY,
    SUCCESS,
    TOKEN,
    Harness,
    click,
    grid_task,
    imagine,
    result_for,
    status_lines,
    submitted,
)


async def test_imagine_then_upscale_posts_the_right_bytes(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    async with harness.running() as app:
        assert set(double.commands(double.guild_id)) == {"imagine", "upscale", "mj"}
        grid = await imagine(double, alice, "a red fox in snow")
        task = grid_task(grid)
        assert attachments_match(grid, [sandbox.image_bytes(task, i) for i in range(4)])
        assert f"<@{alice}>" in grid.content
        assert [b.label for b in grid.buttons()] == GRID_LABELS

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
        job = await app.services.tracker.store.live_twin("upscale", task, 1)
        assert job is not None and job.state is JobState.DELIVERED and job.upstream_task_id
        assert job.result_message_id == result.id
        assert attachments_match(result, [sandbox.image_bytes(job.upstream_task_id, 0)])
        # The callback itself was taken (polling would have hidden a refused one).
        assert CallbackSecrets.from_token(TOKEN).made_here(job.callback_secret)
        assert [a.status for a in sandbox.callback_attempts if a.task_id == job.upstream_task_id]
        assert all(
            a.status == 200 for a in sandbox.callback_attempts if a.task_id == job.upstream_task_id
        )

        await double.wait_for(lambda: grid.button(label="U2").style == SUCCESS or None)
        assert [b.style for b in grid.buttons()] == [SECONDARY, SUCCESS] + [SECONDARY] * 7
        assert status_lines(double) == []


def attachments_match(message: StoredMessage, expected: list[bytes]) -> bool:
    return [data for _name, data in message.attachments] == expected


async def test_second_click_never_pays_twice(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice, bob, carol = (double.add_user(n) for n in ("alice", "bob", "carol"))
    async with harness.running() as app:
        grid = await imagine(double, alice, "two clicks")
        sandbox.task_seconds = None  # the upscale keeps running until the test finishes it
        await click(double, grid, 1, alice)
        await submitted(double, grid, 1)
        second = await click(double, grid, 1, bob)
        running = await second.wait_followup()
        assert running.ephemeral and "already being upscaled" in running.content
        assert sandbox.count("generateUpscale") == 1

        job = await app.services.tracker.store.live_twin("upscale", grid_task(grid), 0)
        assert job is not None and job.upstream_task_id
        sandbox.complete(job.upstream_task_id)
        result = await result_for(double, 1, alice)
        await double.wait_for(lambda: not status_lines(double) or None)

        third = await click(double, grid, 1, carol)
        pointer = await third.wait_followup()
        assert pointer.ephemeral and str(result.id) in pointer.content
        assert sandbox.count("generateUpscale") == 1
        results = [m for m in double.messages(ephemeral=False) if "Image #1" in m.content]
        assert results == [result]


async def test_ack_comes_before_a_slow_api_answers(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        grid = await imagine(double, alice, "slow api")
        sandbox.answer_delay = 1.0
        await click(double, grid, 3, alice)
        # Acknowledged while the API call is still under way (its answer takes a second).
        job = await app.services.tracker.store.live_twin("upscale", grid_task(grid), 2)
        assert job is None or job.state in (JobState.REQUESTED, JobState.SUBMITTING)
        await result_for(double, 3, alice)


async def test_buttons_work_after_a_restart(harness: Harness) -> None:
    double = harness.double
    alice = double.add_user("alice")
    await harness.standalone()
    async with harness.running():
        grid = await imagine(double, alice, "before the restart")
    async with harness.running():
        await click(double, grid, 4, alice)
        result = await result_for(double, 4, alice)
        assert "before the restart" in result.content
    assert harness.sandbox.count("generateUpscale") == 1


async def test_job_running_across_a_restart_is_posted_once(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    await harness.standalone()
    async with harness.running() as app:
        grid = await imagine(double, alice, "across restarts")
        sandbox.task_seconds = None
        handle = await click(double, grid, 2, alice)
        await submitted(double, grid, 2)
        job = await app.services.tracker.store.live_twin("upscale", grid_task(grid), 1)
        assert job is not None and job.upstream_task_id
    # The bot is down when the task finishes.
    sandbox.complete(job.upstream_task_id)
    double.expire_interaction(handle)  # and the click's token is long dead by now
    async with harness.running():
        await result_for(double, 2, alice)
        await double.wait_for(lambda: not status_lines(double) or None)
    assert len([m for m in double.messages(ephemeral=False) if "Image #2" in m.content]) == 1
    assert sandbox.count("generateUpscale") == 1


async def test_upscale_command(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    foreign = sandbox.add_generation(prompt="made elsewhere")
    async with harness.running():
        handle = await double.slash("upscale", {"task_id": foreign, "image": 4}, alice)
        assert (await handle.wait_ack()).type == 5
        result = await result_for(double, 4, alice)
        assert "made elsewhere" in result.content
        call = next(c.body for c in sandbox.calls if c.endpoint == "generateUpscale")
        assert call["taskId"] == foreign and call["imageIndex"] == 3

        for options, words in (
            ({"task_id": foreign, "image": 7}, "image must be 1 to 4"),
            ({"task_id": foreign, "image": 0}, "image must be 1 to 4"),
            ({"task_id": "not a task!", "image": 1}, "not a task id"),
        ):
            bad = await double.slash("upscale", options, alice)
            ack = await bad.wait_ack()
            assert ack.type == 4 and bad.original is not None and bad.original.ephemeral
            assert words in bad.original.content
        assert sandbox.count("generateUpscale") == 1

        shown = await double.slash("upscale", {"task_id": foreign}, alice)
        await shown.wait_ack()
        grid = await double.wait_for_message(
            lambda m: len(m.attachments) == 4 and "made elsewhere" in m.content
        )
        assert grid_task(grid) == foreign
        assert [b.label for b in grid.buttons()] == GRID_LABELS
        assert [b.style for b in grid.buttons()][:5] == [SECONDARY] * 3 + [SUCCESS, SECONDARY]


async def test_api_refusal_is_told_to_the_clicker_and_can_be_retried(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "no credits")
        sandbox.fail_next("generateUpscale", 402)
        handle = await click(double, grid, 1, alice)
        told = await handle.wait_followup()
        assert told.ephemeral and "out of credits" in told.content
        await double.wait_for_message(lambda m: "❌ Upscale of image #1" in m.content)
        assert not [m for m in double.messages() if "Upscaling image #1" in m.content]
        assert grid.button(label="U1").style == SECONDARY

        await click(double, grid, 1, alice)
        await result_for(double, 1, alice)
        assert sandbox.count("generateUpscale") == 2


async def test_failed_generation_is_said(harness: Harness) -> None:
    double = harness.double
    alice = double.add_user("alice")
    async with harness.running():
        handle = await double.slash("imagine", {"prompt": "this will --fail"}, alice)
        await handle.wait_ack()
        told = await handle.wait_followup()
        assert told.ephemeral and "could not finish" in told.content
        status = handle.original
        assert status is not None
        await double.wait_for(lambda: "failed" in status.content or None)
        assert not [m for m in double.messages() if m.attachments]


async def test_imagine_refuses_bad_choices_without_calling_the_api(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        for options in (
            {"prompt": "x", "aspect_ratio": "7:3"},
            {"prompt": "x", "version": "99"},
            {"prompt": "x", "speed": "warp"},
            {"prompt": "x" * 2001},
            {"prompt": "   "},
            {"prompt": "a red\x00fox"},
        ):
            handle = await double.slash("imagine", options, alice)
            await handle.wait_ack()
            assert handle.original is not None and handle.original.ephemeral
            assert handle.original.content.startswith("❌")
    assert sandbox.count("generate") == 0


async def test_the_start_up_heap_is_frozen_while_the_bot_runs(harness: Harness) -> None:
    """Full collections skip what start-up made (docs/performance.md: their pauses held up
    acknowledgements); the collector is given back as it was when the bot closes."""
    assert gc.get_freeze_count() == 0
    async with harness.running():
        assert gc.get_freeze_count() > 50_000
    assert gc.get_freeze_count() == 0


async def test_a_click_acknowledged_too_late_is_one_warning_and_costs_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine(double, alice, "an overloaded evening")
        # Every acknowledgement now arrives after Discord gave up (an overloaded bot, a lagging
        # gateway): 404 Unknown interaction.
        double.ack_deadline = 0.0
        with caplog.at_level(logging.WARNING):
            handle = await double.click(grid.id, upscale_custom_id(grid_task(grid), 1), alice)
            await double.wait_for(lambda: handle.rejected_callbacks or None)
            await double.wait_for(
                lambda: any("too late" in r.getMessage() for r in caplog.records) or None
            )
    late = [r for r in caplog.records if "too late" in r.getMessage()]
    assert len(late) == 1 and late[0].levelno == logging.WARNING and late[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sandbox.count("generateUpscale") == 0
