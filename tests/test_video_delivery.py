"""Posting a batch of videos to the Discord double: attached as they are, re-encoded to fit the
channel's upload limit, or as links that say until when they work; Discord's 413, the
message's 2000 characters, and downloads that fail."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import discord
import pytest
from aiohttp import web

from bot.delivery.fetch import ImageFetcher
from bot.delivery.publisher import (
    DEFAULT_UPLOAD_LIMIT,
    LAST_CHANCE,
    RESULTS_KEPT,
    DiscordPublisher,
)
from bot.delivery.texts import MESSAGE_LIMIT
from bot.delivery.video import VideoFitter, mp4_duration, video_kind
from bot.jobs.store import Job, JobState, JobStore
from bot.jobs.types import DeliveryError
from bot.midjourney.sandbox_video import make_mp4
from tests.conftest import Serve
from tests.fakes.discord_double import DiscordDouble
from tests.harness import loose_mentions, message_payloads

COMPLETED = 1_760_000_000.0
EXPIRES = int(COMPLETED + RESULTS_KEPT)


@dataclass
class Videos:
    double: DiscordDouble
    publisher: DiscordPublisher
    base: str
    served: dict[str, bytes] = field(default_factory=dict)

    def serve(self, name: str, data: bytes) -> str:
        self.served[name] = data
        return f"{self.base}/v/{name}"

    def job(self, *urls: str, prompt: str = "a fox runs", **options: str) -> Job:
        return Job(
            id="0123456789abcdef01234567",
            kind="animate_low",
            parent_task_id="up-task",
            image_index=None,
            upstream_task_id="clip-task",
            requester_id=4242,
            guild_id=self.double.guild_id,
            channel_id=self.double.channel_id,
            grid_message_id=None,
            status_message_id=None,
            result_message_id=None,
            callback_secret="s" * 32,
            state=JobState.SUCCEEDED,
            error=None,
            result_urls=urls,
            prompt=prompt,
            options={"number": "2", "motion": "low", **options},
            created_at=COMPLETED - 60,
            updated_at=COMPLETED,
            # Far from its deadline: downloads that may work later are tried again.
            deadline_at=time.time() + 3600,
            completed_at=COMPLETED,
            delivered_at=None,
        )

    def limit_uploads_to(self, limit: int) -> None:
        self.publisher.upload_limit = lambda guild_id, job=None: limit  # type: ignore[method-assign]

    def posts(self) -> int:
        return self.double.count_requests("POST", r"/channels/\d+/messages")


@pytest.fixture
async def videos(double: DiscordDouble, serve: Serve, tmp_path: Path) -> AsyncIterator[Videos]:
    served: dict[str, bytes] = {}

    async def video(request: web.Request) -> web.Response:
        data = served.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404, text="gone")
        return web.Response(body=data, content_type="video/mp4")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    app = web.Application()
    app.router.add_get("/v/{name}", video)
    app.router.add_get("/status/{code}", status)
    base = await serve(app)
    client = discord.Client(intents=discord.Intents(guilds=True))
    await client.login("fake-discord-token-for-the-double")
    store = await JobStore.open(f"sqlite:///{tmp_path}/videos.sqlite3")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fitter = VideoFitter(scratch=str(scratch))
    publisher = DiscordPublisher(client, store, ImageFetcher(("127.0.0.1",)), videos=fitter)
    try:
        yield Videos(double, publisher, base, served)
    finally:
        await publisher.close()
        await store.close()
        await client.close()


async def test_a_video_that_fits_is_attached_with_its_buttons(videos: Videos) -> None:
    data = make_mp4(5, "one")
    message = videos.double.message(
        await videos.publisher.deliver(videos.job(videos.serve("a", data)))
    )
    assert message.attachments == [("clip-task_0.mp4", data)]
    assert message.content == "**a fox runs** - Video (image #2, low motion) <@4242>"
    assert loose_mentions(message_payloads(videos.double), 4242) == []
    assert [b.label for b in message.buttons()] == ["⏩ Extend"]
    assert message.nonce == "0123456789abcdef01234567"


async def test_a_batch_of_four_is_one_message_in_its_order(videos: Videos) -> None:
    batch = [make_mp4(2, f"v{i}") for i in range(4)]
    urls = [videos.serve(f"v{i}", data) for i, data in enumerate(batch)]
    message = videos.double.message(await videos.publisher.deliver(videos.job(*urls)))
    assert message.attachments == [(f"clip-task_{i}.mp4", d) for i, d in enumerate(batch)]
    assert [b.label for b in message.buttons()] == ["⏩ 1", "⏩ 2", "⏩ 3", "⏩ 4"]
    assert videos.posts() == 1


async def test_a_video_over_the_limit_is_reencoded_to_fit(videos: Videos) -> None:
    # 3 MB where the interaction said the channel takes 1 MiB.
    data = make_mp4(5, "big", width=640, height=360, pad_to=3 * 1024 * 1024)
    job = videos.job(videos.serve("big", data), upload_limit=str(1024 * 1024))
    message = videos.double.message(await videos.publisher.deliver(job))
    [(name, fitted)] = message.attachments
    assert name == "clip-task_0.mp4" and len(fitted) <= 1024 * 1024
    assert video_kind(fitted) == "mp4" and mp4_duration(fitted) == pytest.approx(5, abs=0.1)
    assert "http" not in message.content


async def test_a_batch_shares_the_limit(videos: Videos) -> None:
    small = make_mp4(2, "small")
    big = make_mp4(2, "big", pad_to=800_000)
    urls = [videos.serve("big", big), videos.serve("small", small)]
    videos.limit_uploads_to(700_000)
    message = videos.double.message(await videos.publisher.deliver(videos.job(*urls)))
    assert [name for name, _ in message.attachments] == ["clip-task_0.mp4", "clip-task_1.mp4"]
    assert message.attachments[1][1] == small
    assert sum(len(d) for _, d in message.attachments) <= 700_000


async def test_a_video_that_cannot_fit_is_a_link_that_says_until_when(videos: Videos) -> None:
    # 21 s in 100 kB would be under 40 kbit/s: not worth watching.
    url = videos.serve("long", make_mp4(21, "long"))
    videos.limit_uploads_to(100_000)
    message = videos.double.message(await videos.publisher.deliver(videos.job(url)))
    assert message.attachments == []
    assert message.content == (
        "**a fox runs** - Video (image #2, low motion) <@4242>\n"
        f"Video #1: {url} (not attached: too large for this channel; "
        f"the link works until about <t:{EXPIRES}:D>)"
    )
    # The buttons are there all the same: the video exists.
    assert [b.label for b in message.buttons()] == ["⏩ Extend"]


async def test_only_the_videos_that_do_not_fit_are_links(videos: Videos) -> None:
    fits = make_mp4(2, "fits")
    urls = [videos.serve("fits", fits), videos.serve("long", make_mp4(30, "long"))]
    videos.limit_uploads_to(200_000)
    message = videos.double.message(await videos.publisher.deliver(videos.job(*urls)))
    assert message.attachments == [("clip-task_0.mp4", fits)]
    assert message.content.splitlines()[1:] == [
        f"Video #2: {urls[1]} (not attached: too large for this channel; "
        f"the link works until about <t:{EXPIRES}:D>)"
    ]


async def test_discords_413_steps_down_to_links(videos: Videos) -> None:
    # The bot believes 10 MiB; this server takes 1000 bytes: the video, then a re-encode of
    # half its size are refused; the third post carries the link.
    data = make_mp4(3, "refused", width=640, height=360)
    url = videos.serve("refused", data)
    videos.double.attachment_size_limit = 1000
    message = videos.double.message(await videos.publisher.deliver(videos.job(url)))
    assert message.attachments == []
    assert message.content.endswith(
        f"Video #1: {url} (not attached: too large for this channel; "
        f"the link works until about <t:{EXPIRES}:D>)"
    )
    assert videos.posts() == 3


async def test_a_long_prompt_is_cut_so_that_every_link_fits(videos: Videos) -> None:
    # Four links of 200-character URLs that no longer work (404) and the longest prompt.
    urls = [f"{videos.base}/v/{'x' * 180}{i}" for i in range(4)]
    job = videos.job(*urls, prompt="fox " * 600)
    message = videos.double.message(await videos.publisher.deliver(job))
    assert len(message.content) <= MESSAGE_LIMIT
    lines = message.content.splitlines()
    assert lines[0].endswith("…** - Video (image #2, low motion) <@4242>")
    assert lines[1:] == [
        f"Video #{i + 1}: {url} (not attached: the bot could not download it; "
        f"the link works until about <t:{EXPIRES}:D>)"
        for i, url in enumerate(urls)
    ]


async def test_what_is_not_a_video_is_a_link(videos: Videos) -> None:
    url = videos.serve("page", b"<html><body>Access denied</body></html>")
    message = videos.double.message(await videos.publisher.deliver(videos.job(url)))
    assert message.attachments == []
    assert "not attached: the file is not a video the bot knows" in message.content


@pytest.mark.parametrize("code", [503, 429])
async def test_a_download_that_may_work_later_fails_to_be_retried(
    videos: Videos, code: int
) -> None:
    urls = [videos.serve("ok", make_mp4(2, "ok")), f"{videos.base}/status/{code}"]
    with pytest.raises(DeliveryError) as caught:
        await videos.publisher.deliver(videos.job(*urls))
    assert caught.value.retry is True
    assert "video could not be downloaded" in caught.value.reason
    assert videos.posts() == 0


async def test_near_its_deadline_a_video_that_will_not_download_is_posted_as_its_link(
    videos: Videos,
) -> None:
    urls = [videos.serve("ok", make_mp4(2, "ok")), f"{videos.base}/status/503"]
    # Inside the job's last two minutes: no later try would post it before it fails.
    job = replace(videos.job(*urls), deadline_at=time.time() + LAST_CHANCE - 1)
    message_id = await videos.publisher.deliver(job)
    message = videos.double.message(message_id)
    assert len(message.attachments) == 1
    assert f"Video #2: {urls[1]} (not attached: the bot could not download it in time;" in (
        message.content
    )


async def test_near_its_deadline_a_video_too_large_is_linked_rather_than_encoded(
    videos: Videos,
) -> None:
    big = make_mp4(2, "big", pad_to=3 * 1024 * 1024)
    videos.limit_uploads_to(2 * 1024 * 1024)
    job = replace(videos.job(videos.serve("big", big)), deadline_at=time.time() + LAST_CHANCE)
    message = videos.double.message(await videos.publisher.deliver(job))
    assert message.attachments == []
    assert "Video #1: " in message.content and "too large for this channel" in message.content


@pytest.mark.parametrize(
    ("told", "limit"),
    [
        (str(25 * 1024 * 1024), 25 * 1024 * 1024),
        (str(1024 * 1024), 1024 * 1024),
        # Implausible or not a number: the server's, here Discord's default.
        ("1000", DEFAULT_UPLOAD_LIMIT),
        (str(2 * 1024**3), DEFAULT_UPLOAD_LIMIT),
        ("-5", DEFAULT_UPLOAD_LIMIT),
        ("lots", DEFAULT_UPLOAD_LIMIT),
    ],
)
def test_the_upload_limit_an_interaction_told_is_believed_when_plausible(
    videos: Videos, told: str, limit: int
) -> None:
    job = videos.job("http://x/v", upload_limit=told)
    assert videos.publisher.upload_limit(job.guild_id, job) == limit
    assert videos.publisher.upload_limit(job.guild_id) == DEFAULT_UPLOAD_LIMIT
    assert videos.publisher.upload_limit(job.guild_id, replace(job, options={})) == (
        DEFAULT_UPLOAD_LIMIT
    )


async def test_discords_413_leads_to_a_reencode_of_half_the_size(videos: Videos) -> None:
    data = make_mp4(3, "refused", width=640, height=360)
    videos.double.attachment_size_limit = len(data) * 2 // 3
    job = videos.job(videos.serve("r", data))
    message = videos.double.message(await videos.publisher.deliver(job))
    [(name, fitted)] = message.attachments
    assert name == "clip-task_0.mp4" and len(fitted) <= len(data) // 2
    assert mp4_duration(fitted) == pytest.approx(3, abs=0.1)
    assert videos.posts() == 2
