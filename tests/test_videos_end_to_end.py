"""🎬 Animate and ⏩ Extend end to end: the real bot (discord.py, cogs, tracker, store, listener)
against the Discord double and the API sandbox's videos. A member animates an upscaled image,
extends the video up to the vendor's four times (the fifth refused unpaid), storms of clicks are
one job, a video too large for the channel is fitted or linked, the settings choose HD and
batches, and the videos allowance counts a click once."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from bot.delivery.video import mp4_duration, video_kind
from bot.jobs.types import Refused, UnknownTask
from bot.midjourney.sandbox import SandboxAPI, SandboxTask
from tests.fakes.discord_double import DiscordDouble, InteractionHandle, StoredMessage
from tests.harness import Harness, click, imagine, result_for

LOW, HIGH, EXTEND = "🎬 Animate (low motion)", "🎬 Animate (high motion)", "⏩ Extend"
SUCCESS = 3


def quick(sandbox: SandboxAPI) -> None:
    """Videos of a second, extensions of half one: real files, made fast."""
    sandbox.video_seconds = 1.0
    sandbox.extend_seconds = 0.5


async def upscaled(double: DiscordDouble, user: int, prompt: str) -> StoredMessage:
    """U1 of a new grid: the upscaled result, with the 🎬 buttons under it."""
    grid = await imagine(double, user, prompt)
    await click(double, grid, 1, user)
    return await result_for(double, 1, user)


async def press(
    double: DiscordDouble, message: StoredMessage, label: str, user: int
) -> InteractionHandle:
    button = message.button(label=label)
    assert button.custom_id is not None
    handle = await double.click(message.id, button.custom_id, user)
    ack = await handle.wait_ack()
    assert ack.type == 6 and ack.accepted
    return handle


def videos_posted(double: DiscordDouble, user: int) -> list[StoredMessage]:
    return [
        m
        for m in double.messages(ephemeral=False)
        if " - Video (" in m.content and f"<@{user}>" in m.content.split("\n", 1)[0]
    ]


async def video_message(double: DiscordDouble, user: int, n: int = 1) -> StoredMessage:
    """The ``n``-th video message posted for ``user``."""
    return await double.wait_for(
        lambda: (
            videos_posted(double, user)[n - 1] if len(videos_posted(double, user)) >= n else None
        )
    )


def calls(sandbox: SandboxAPI, endpoint: str) -> list[dict[str, object]]:
    return [c.body for c in sandbox.calls if c.endpoint == endpoint]


def video_tasks(sandbox: SandboxAPI) -> list[SandboxTask]:
    return [t for t in sandbox.tasks() if t.is_video]


async def test_animate_from_an_upscale_posts_a_playable_video_with_its_extend_button(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a fox in the snow")
        assert [b.label for b in result.buttons()] == [LOW, HIGH]
        status_seen: list[str] = []
        handle = await press(double, result, LOW, alice)
        status = await double.wait_for_message(lambda m: m.content.startswith("⏳ Animating"))
        status_seen.append(status.content)
        posted = await video_message(double, alice)
        # The paid call animates the upscale's own image, with its prompt.
        [body] = calls(sandbox, "generate")[-1:]
        upscale = [t for t in sandbox.tasks() if t.task_type == "mj_upscale"][-1]
        assert body["taskType"] == "mj_video" and body["motion"] == "low"
        assert body["videoBatchSize"] == 1 and body["prompt"] == "a fox in the snow"
        assert body["fileUrls"] == [upscale_url(sandbox, upscale)]
        [video] = video_tasks(sandbox)
        # The video itself, attached as the API made it: a real MP4 a client plays inline.
        [(name, data)] = posted.attachments
        assert name.endswith(".mp4") and data == sandbox.video_bytes_of(video.task_id, 0)
        assert video_kind(data) == "mp4" and mp4_duration(data) is not None
        first_line = posted.content.split("\n", 1)[0]
        assert first_line == f"**a fox in the snow** - Video (image #1, low motion) <@{alice}>"
        assert [b.label for b in posted.buttons()] == [EXTEND]
        assert status_seen == [
            f"⏳ Animating image #1 (low motion) for <@{alice}> (started "
            + re.findall(r"<t:\d+:R>\)", status_seen[0])[0]
        ]
        # The status line goes, the clicked 🎬 turns green; nothing was said privately.
        await double.wait_for(lambda: status.deleted or None)
        await double.wait_for(lambda: result.button(label=LOW).style == SUCCESS or None)
        assert handle.followups == []


def upscale_url(sandbox: SandboxAPI, upscale: SandboxTask) -> str:
    """The URL the sandbox gave for an upscale's image (what the bot kept of it)."""
    assert upscale.origin is not None
    return sandbox._result_urls(upscale, upscale.origin)[0]


async def test_extend_posts_a_longer_video_until_the_fifth_is_refused_unpaid(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a lighthouse in a storm")
        await press(double, result, HIGH, alice)
        message = await video_message(double, alice)
        lengths = [mp4_duration(message.attachments[0][1])]
        for extension in range(1, 5):
            await press(double, message, EXTEND, alice)
            message = await video_message(double, alice, extension + 1)
            first_line = message.content.split("\n", 1)[0]
            assert f"high motion, extended {extension}×) <@{alice}>" in first_line
            lengths.append(mp4_duration(message.attachments[0][1]))
            # An extension has its own ⏩ while the vendor allows more.
            assert [b.label for b in message.buttons()] == [EXTEND]
        bodies = calls(sandbox, "generateVideoExtend")
        assert len(bodies) == 4
        assert all(b["index"] == 0 and b["taskType"] == "mj_video_extend_auto" for b in bodies)
        # Each extension is longer than the video it extends.
        known = [length for length in lengths if length is not None]
        assert len(known) == 5 and all(a < b for a, b in itertools.pairwise(known))
        credits = sandbox.credits
        handle = await press(double, message, EXTEND, alice)
        told = await handle.wait_followup()
        assert told.ephemeral and "extended 4 times already" in told.content
        assert "nothing was charged" in told.content or "not extended" in told.content
    assert len(calls(sandbox, "generateVideoExtend")) == 4 and sandbox.credits == credits


async def test_a_storm_of_animate_clicks_is_one_paid_video(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    users = [double.add_user(f"member{n}") for n in range(12)]
    async with harness.running():
        result = await upscaled(double, users[0], "a storm of foxes")
        sandbox.task_seconds = None
        button = result.button(label=LOW)
        assert button.custom_id is not None
        handles = await asyncio.gather(
            *(double.click(result.id, button.custom_id, user) for user in users)
        )
        assert all(ack.accepted for ack in await asyncio.gather(*(h.wait_ack() for h in handles)))
        await double.wait_for(
            lambda: (
                sum("already being animated" in m.content for m in double.messages()) == 11 or None
            )
        )
        [video] = await double.wait_for(lambda: video_tasks(sandbox) or None)
        sandbox.complete(video.task_id)
        await double.wait_for_message(lambda m: " - Video (" in m.content and m.attachments)
    assert len([c for c in calls(sandbox, "generate") if c["taskType"] == "mj_video"]) == 1
    assert len([m for m in double.messages() if " - Video (" in m.content]) == 1


async def test_hd_batches_of_two_get_an_extend_button_per_video(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    harness.env.update({"VIDEO_QUALITY": "hd", "VIDEO_BATCH_SIZE": "2"})
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "two foxes")
        await press(double, result, LOW, alice)
        posted = await video_message(double, alice)
        [body] = [c for c in calls(sandbox, "generate") if c["taskType"] == "mj_video_hd"]
        assert body["videoBatchSize"] == 2
        assert len(posted.attachments) == 2
        assert [b.label for b in posted.buttons()] == ["⏩ 1", "⏩ 2"]
        # The second video waits until the API's numbering is known; the first teaches it.
        handle = await press(double, posted, "⏩ 2", alice)
        told = await handle.wait_followup()
        assert told.ephemeral and "MJ_EXTEND_INDEX_BASE" in told.content
        assert calls(sandbox, "generateVideoExtend") == []
        await press(double, posted, "⏩ 1", alice)
        await video_message(double, alice, 2)
        await press(double, posted, "⏩ 2", alice)
        longer = await video_message(double, alice, 3)
        assert [b["index"] for b in calls(sandbox, "generateVideoExtend")] == [0, 1]
        extended = [t for t in video_tasks(sandbox) if t.parent_task_id is not None]
        assert [t.image_index for t in extended] == [0, 1]
        # An HD video's extension is HD, its file the sandbox's for it.
        assert longer.attachments[0][1] == sandbox.video_bytes_of(extended[1].task_id, 0)


async def test_the_extend_index_base_is_learnt_from_the_first_video(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    sandbox.extend_index_base = 1
    alice = double.add_user("alice")
    async with harness.running() as app:
        result = await upscaled(double, alice, "a fox counting from one")
        await press(double, result, LOW, alice)
        posted = await video_message(double, alice)
        await press(double, posted, EXTEND, alice)
        await video_message(double, alice, 2)
        # 0 was refused as out of range (nothing taken), 1 taken: the base is 1, kept.
        assert [b["index"] for b in calls(sandbox, "generateVideoExtend")] == [0, 1]
        assert await app.services.tracker.extend_index.learned() == 1
        # The owners see it in /mj status.
        handle = await double.slash("mj status", {}, double.owner_id)
        report = await handle.wait_followup()
        assert "⏩: the first video is index 1 (learned from the API's answers)" in report.content


async def test_a_video_too_large_for_the_channel_is_fitted_or_linked(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    # Padded to 3 MiB each, over a channel that takes 2 MiB: re-encoded, they fit.
    sandbox.video_bytes = 3 * 1024 * 1024
    double.attachment_size_limit = 2 * 1024 * 1024
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a fox too large")
        await press(double, result, LOW, alice)
        fitted = await video_message(double, alice)
        [(name, data)] = fitted.attachments
        assert name.endswith(".mp4") and len(data) <= 2 * 1024 * 1024
        assert video_kind(data) == "mp4" and mp4_duration(data) is not None
        assert "Video #1:" not in fitted.content


async def test_a_video_that_cannot_be_made_to_fit_is_posted_as_its_link(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    # A channel that takes nothing the size of a video: the link, with the date it works until.
    double.attachment_size_limit = 1024 * 1024
    sandbox.video_bytes = 2 * 1024 * 1024
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a fox behind a link")
        harness.double.attachment_size_limit = 1024
        await press(double, result, LOW, alice)
        posted = await video_message(double, alice)
    assert posted.attachments == []
    [video] = video_tasks(sandbox)
    assert "Video #1: http" in posted.content and f"{video.task_id}_0_0.mp4" in posted.content
    assert re.search(r"the link works until about <t:\d+:D>", posted.content)
    # Its ⏩ is there all the same: the video exists at the vendor.
    assert [b.label for b in posted.buttons()] == [EXTEND]


async def test_the_videos_allowance_counts_a_click_and_refuses_past_it(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    harness.env.update({"DAILY_VIDEOS_PER_USER": "1", "VIDEO_BATCH_SIZE": "4"})
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "one fox a day")
        await press(double, result, LOW, alice)
        # A batch of four is one click: one use.
        posted = await video_message(double, alice)
        assert len(posted.attachments) == 4
        handle = await press(double, result, HIGH, alice)
        told = await handle.wait_followup()
        assert told.ephemeral and "1 video" in told.content and "today" in told.content
        usage = await double.slash("mj usage", {}, alice)
        await usage.wait_ack()
        shown = await double.wait_for(
            lambda: usage.original if usage.original and usage.original.content else None
        )
        assert "video" in shown.content
    assert len([c for c in calls(sandbox, "generate") if c.get("motion")]) == 1


async def test_video_buttons_work_after_a_restart(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    await harness.standalone()
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a fox that outlives the bot")
        await press(double, result, LOW, alice)
        posted = await video_message(double, alice)
    async with harness.running():
        await press(double, posted, EXTEND, alice)
        await video_message(double, alice, 2)
        await press(double, result, HIGH, alice)
        await video_message(double, alice, 3)
    assert len(calls(sandbox, "generateVideoExtend")) == 1


async def test_a_failed_video_is_said_plainly_and_given_back(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    harness.env["DAILY_VIDEOS_PER_USER"] = "1"
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a fox that will not move")
        sandbox.task_seconds = None
        handle = await press(double, result, LOW, alice)
        [video] = await double.wait_for(lambda: video_tasks(sandbox) or None)
        sandbox.fail(video.task_id, "Video generation failed")
        told = await handle.wait_followup()
        assert told.ephemeral and told.content.startswith("❌ ")
        assert "Video generation failed" in told.content
        # The status line says it in the channel too, and the allowance is given back.
        await double.wait_for_message(
            lambda m: m.content.startswith("❌ Video of image #1 (low motion)") or None
        )
        sandbox.task_seconds = 0
        await press(double, result, LOW, alice)
        await video_message(double, alice)


async def test_a_video_refused_for_credits_costs_nothing_and_says_why(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    alice = double.add_user("alice")
    async with harness.running():
        result = await upscaled(double, alice, "a fox with no credits")
        sandbox.fail_next("generate", 402)
        handle = await press(double, result, HIGH, alice)
        told = await handle.wait_followup()
        assert told.ephemeral and "credits" in told.content
    assert video_tasks(sandbox) == []
    assert videos_posted(double, alice) == []


async def test_a_video_of_a_result_the_bot_did_not_make_here_pays_nothing(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    alice = double.add_user("alice")
    async with harness.running() as app:
        result = await upscaled(double, alice, "a fox of ours")
        tracker = app.services.tracker
        where = {
            "requester_id": alice,
            "guild_id": double.guild_id,
            "channel_id": double.channel_id,
            "grid_message_id": result.id,
        }
        # A forged button naming a task the bot never made: unknown, refused before paying.
        stranger = sandbox.add_generation()
        for kind, index in (("animate_low", None), ("extend", 0)):
            with pytest.raises(UnknownTask):
                await tracker.request_on_grid(
                    kind, parent_task_id=stranger, image_index=index, **where
                )
        # ⏩ of an upscale (no video) is refused as the wrong kind of result.
        upscale = [t for t in sandbox.tasks() if t.task_type == "mj_upscale"][-1]
        with pytest.raises(Refused):
            await tracker.request_on_grid(
                "extend", parent_task_id=upscale.task_id, image_index=0, **where
            )
    assert video_tasks(sandbox) == []
    assert calls(sandbox, "generateVideoExtend") == []
