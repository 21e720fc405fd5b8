"""Attacks on 🎬 Animate and ⏩ Extend found in review (issue 24): what a hostile or broken
video, a channel that changed under the bot, or a slow host did to the bot or to a paid video."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bot.delivery import video
from bot.delivery.video import VideoFitter
from bot.jobs.types import DeliveryError, UnknownTask
from bot.midjourney.sandbox_video import make_mp4
from tests import test_video_delivery
from tests.harness import Harness
from tests.test_server_reach import second_server
from tests.test_video_delivery import EXPIRES, Videos
from tests.test_video_media import box, ftyp, mvhd
from tests.test_videos_end_to_end import (
    LOW,
    calls,
    press,
    quick,
    upscaled,
    video_message,
    video_tasks,
)

# The publisher posting to the Discord double, videos served from a local host.
videos = test_video_delivery.videos


async def test_a_box_storm_mp4_does_not_block_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 MiB of empty boxes before the movie header: eight million boxes walked to find its
    # length, then again for its sound. On the event loop, seconds of nothing else: no
    # interaction acknowledged, no callback answered, no gateway heartbeat.
    storm = box(b"free", b"") * ((64 * 1024 * 1024) // 8 - 32)
    data = ftyp(b"isom") + storm + box(b"moov", mvhd(0, 1000, 5000))
    failing = tmp_path / "ffmpeg"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # Where the walk runs, not how long it takes: the real walk, watched.
    walked_in: list[threading.Thread] = []
    walk = video._mp4_facts

    def watched(data: bytes) -> object:
        walked_in.append(threading.current_thread())
        return walk(data)

    monkeypatch.setattr(video, "_mp4_facts", watched)
    fitter = VideoFitter(scratch=str(scratch), ffmpeg=str(failing))
    assert await fitter.fit(data, 10 * 1024 * 1024, "job=t") is None
    assert walked_in and threading.main_thread() not in walked_in


async def test_a_video_the_bot_may_no_longer_attach_is_posted_as_its_link(videos: Videos) -> None:
    # The click found Attach Files granted; an admin took it away while the video was made:
    # Discord refuses the post with the file (403 Missing Permissions). The bot may still send
    # messages there, and the paid video exists: its link is posted, not a failure.
    data = make_mp4(2, "paid")
    url = videos.serve("paid", data)
    videos.double.fail_next("POST", r"/channels/\d+/messages", 403, code=50013)
    message = videos.double.message(await videos.publisher.deliver(videos.job(url)))
    assert message.attachments == []
    assert message.content == (
        "**a fox runs** - Video (image #2, low motion) <@4242>\n"
        f"Video #1: {url} (not attached: the bot may not attach files in this channel; "
        f"the link works until about <t:{EXPIRES}:D>)"
    )
    assert [b.label for b in message.buttons()] == ["⏩ Extend"]
    assert videos.posts() == 2


async def test_a_video_the_bot_may_not_post_at_all_fails_as_before(videos: Videos) -> None:
    # No Send Messages either: the links are refused too, and the failure says what to fix.
    url = videos.serve("paid", make_mp4(2, "paid"))
    videos.double.fail_next("POST", r"/channels/\d+/messages", 403, code=50013, times=2)
    with pytest.raises(DeliveryError) as caught:
        await videos.publisher.deliver(videos.job(url))
    assert caught.value.retry is False
    assert "Send Messages and Attach Files" in caught.value.reason
    assert videos.posts() == 2


async def test_another_servers_image_and_video_cannot_be_animated_or_extended(
    harness: Harness,
) -> None:
    # Server B forges the custom_ids of 🎬 and ⏩ naming server A's upscale and video: unknown
    # there, refused before paying, and nothing of A's job is named.
    double, sandbox = harness.double, harness.sandbox
    quick(sandbox)
    channel_b = second_server(harness)
    alice, mallory = double.add_user("alice"), double.add_user("mallory")
    async with harness.running() as app:
        result = await upscaled(double, alice, "a fox of server A")
        await press(double, result, LOW, alice)
        await video_message(double, alice)
        upscale = [t for t in sandbox.tasks() if t.task_type == "mj_upscale"][-1]
        [video] = video_tasks(sandbox)
        guild_b = double.guild_of(channel_b)
        where = {
            "requester_id": mallory,
            "guild_id": guild_b,
            "channel_id": channel_b,
            "grid_message_id": None,
        }
        for kind, task, index in (
            ("animate_high", upscale.task_id, None),
            ("animate_low", upscale.task_id, None),
            ("extend", video.task_id, 0),
        ):
            with pytest.raises(UnknownTask):
                await app.services.tracker.request_on_grid(
                    kind, parent_task_id=task, image_index=index, **where
                )
    assert len(video_tasks(sandbox)) == 1
    assert calls(sandbox, "generateVideoExtend") == []
