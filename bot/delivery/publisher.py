"""Post jobs' status lines, results and failures, and notes for the admins, to Discord.

Everything here goes through the channel (REST), never through an interaction token, so a job
that finishes after the 15-minute token has died is still posted, by any process.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import aiohttp
import discord

from bot.credits import NoticeFailed
from bot.delivery.fetch import ImageFetcher
from bot.delivery.fit import fit, share_limit
from bot.delivery.pool import ImagePool
from bot.delivery.sending import Draft, send_within
from bot.delivery.texts import (
    allowed_mentions,
    failure_text,
    forbidden_reason,
    grid_text,
    result_text,
    status_text,
    video_link,
    with_lines,
)
from bot.delivery.video import (
    DOWNLOAD_TIMEOUT,
    MAX_VIDEO_BYTES,
    Video,
    VideoFitter,
    video_kind,
)
from bot.grid import GridButtons, ResultButtons, result_buttons
from bot.jobs.job import UPLOAD_LIMIT
from bot.jobs.kinds import Product, kind_named
from bot.jobs.store import Job, JobStore
from bot.jobs.types import DeliveryError, FollowUp
from bot.midjourney.models import GRID_SIZE, Task

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# What an interaction may say a channel's upload limit is, to be believed.
TOLD_LIMITS = range(1024 * 1024, 1024**3 + 1)
# The vendor keeps results about 15 days: a video's link is promised for a day less.
RESULTS_KEPT = 14 * 24 * 3600
# A video job's last two minutes are for posting links: no download or encode may reach into
# them, a download then gets this long at most, and one that fails is not tried again.
LAST_CHANCE = 120.0
LAST_DOWNLOAD_SECONDS = 10.0


class DiscordPublisher:
    """The tracker's Publisher on top of a discord.py client's REST side."""

    def __init__(
        self,
        client: discord.Client,
        store: JobStore,
        fetcher: ImageFetcher,
        pool: ImagePool | None = None,
        videos: VideoFitter | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._fetcher = fetcher
        # Re-encodes of every delivery share one bounded pool, and videos' one encoder.
        self._pool = pool or ImagePool()
        self._videos = videos or VideoFitter()
        self._grid_locks: dict[int, asyncio.Lock] = {}

    async def close(self) -> None:
        """Close the fetcher's connections: the publisher is the fetcher's only user."""
        await self._fetcher.close()

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self._client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def upload_limit(self, guild_id: int | None, job: Job | None = None) -> int:
        """What a post in the job's channel may carry: what the interaction that asked for it
        said (its attachment_size_limit, kept in the job's options), else the server's limit
        as discord.py knows it, else Discord's default."""
        told = job.options.get(UPLOAD_LIMIT, "") if job is not None else ""
        if told.isdigit() and int(told) in TOLD_LIMITS:
            return int(told)
        guild = self._client.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def post_status(self, job: Job) -> int | None:
        try:
            message = await self._channel(job).send(
                status_text(job),
                # The requester has just asked: a second ping comes with the result.
                allowed_mentions=allowed_mentions(),
                # Re-posted after a crash that lost its id, it is the same message, not a second
                # status line left standing (Discord's nonces are at most 25 characters).
                nonce=f"s{job.id}",
            )
        except discord.Forbidden as exc:
            raise DeliveryError(forbidden_reason(), retry=False) from exc
        except discord.HTTPException as exc:
            # The status line is a courtesy; the job goes on without it.
            log.warning("status message not posted %s: %s", job.label, exc.status)
            return None
        return message.id

    async def mark_grid(self, job: Job) -> None:
        """Show green the buttons of the result the job was asked of (U<n>, V<n>, 🔄 under a
        grid) whose job did not fail."""
        button = kind_named(job.kind).button
        if job.grid_message_id is None or job.parent_task_id is None or button is None:
            return
        lock = self._grid_locks.setdefault(job.grid_message_id, asyncio.Lock())
        async with lock:
            use = await self._store.grid_use(job.parent_task_id, job.guild_id)
            message = self._channel(job).get_partial_message(job.grid_message_id)
            count = kind_named(job.kind).parent_count(job)
            view = ResultButtons(job.parent_task_id, button.under, use, count)
            try:
                await message.edit(view=view, allowed_mentions=allowed_mentions())
            except discord.HTTPException as exc:
                log.info("grid buttons not updated %s: %s", job.label, exc.status)

    async def deliver(self, job: Job) -> int:
        product = kind_named(job.kind).product
        if product is Product.VIDEO:
            return await self._post_videos(job)
        urls = job.result_urls[:GRID_SIZE] if product is Product.GRID else job.result_urls[:1]
        if job.upstream_task_id is None and product is Product.GRID:
            # The buttons name the grid's task: a grid without them would look broken.
            raise DeliveryError("the API gave no task id for the images", retry=False)
        # Under the result, the buttons of the kinds declared for its product.
        view = result_buttons(job.upstream_task_id, product) if job.upstream_task_id else None
        return await self._post_images(
            job.channel_id,
            job.guild_id,
            urls,
            stem=job.upstream_task_id or job.id,
            content=result_text(job),
            view=view,
            requester_id=job.requester_id,
            nonce=job.id,
            label=job.label,
        )

    async def post_grid(
        self, task: Task, *, requester_id: int, guild_id: int | None, channel_id: int
    ) -> int:
        """Show a generation the bot did not start, with both rows of buttons."""
        use = await self._store.grid_use(task.task_id, guild_id)
        return await self._post_images(
            channel_id,
            guild_id,
            task.result_urls[:GRID_SIZE],
            stem=task.task_id,
            content=grid_text(task.prompt, requester_id),
            view=GridButtons(task.task_id, use),
            requester_id=requester_id,
            # Each /upscale without an image posts a grid of its own: a nonce of its own too.
            nonce=secrets.randbits(64),
            label=f"task={task.task_id}",
        )

    async def _post_images(
        self,
        channel_id: int,
        guild_id: int | None,
        urls: tuple[str, ...],
        *,
        stem: str,
        content: str,
        view: discord.ui.View | None,
        requester_id: int,
        nonce: str | int,
        label: str,
    ) -> int:
        if not urls:
            raise DeliveryError("the API reported success but gave no image", retry=False)
        images = await asyncio.gather(
            *(self._fetcher.fetch(url, f"{stem}_{i}") for i, url in enumerate(urls))
        )

        async def draft(limit: int, why: str) -> Draft:
            files, links = await fit(images, urls, limit, label, self._pool)
            text = "\n".join((content, *links))
            return Draft(text, tuple((i.filename, i.data) for i in files), len(links))

        channel = self._client.get_partial_messageable(channel_id, guild_id=guild_id)
        return await send_within(
            channel,
            self.upload_limit(guild_id),
            draft,
            view=view,
            requester_id=requester_id,
            nonce=nonce,
            label=label,
        )

    async def _post_videos(self, job: Job) -> int:
        """The videos of a batch in one message: attached as they are, re-encoded to fit the
        channel, or as links (a paid video is never lost to its size)."""
        urls = job.result_urls[:GRID_SIZE]
        if not urls:
            raise DeliveryError("the API reported success but gave no video", retry=False)
        stem = job.upstream_task_id or job.id
        # Downloads and encodes stop short of the job's deadline, where it would fail unposted:
        # what is not attached by then goes as its link, which the paid video still has.
        until = job.deadline_at - LAST_CHANCE
        # One after another: each is tens of MB held in memory until the post.
        got = [
            await self._video(url, f"{stem}_{i}", job.label, until) for i, url in enumerate(urls)
        ]
        # The place in the batch of each video downloaded.
        places = [i for i, video in enumerate(got) if isinstance(video, Video)]
        videos = [video for video in got if isinstance(video, Video)]
        unfetched = {i: why for i, why in enumerate(got) if isinstance(why, str)}
        expires = int((job.completed_at or time.time()) + RESULTS_KEPT)

        async def shrink(video: Video, share: int) -> Video | None:
            data = await self._videos.fit(video.data, share, job.label, until)
            return None if data is None else Video(data, f"{video.filename.rsplit('.', 1)[0]}.mp4")

        async def draft(limit: int, why: str) -> Draft:
            kept = await share_limit(videos, limit, lambda video: len(video.data), shrink)
            attached = {places[k]: video for k, video in kept.items()}
            lines = [
                video_link(i + 1, url, unfetched.get(i, why), expires)
                for i, url in enumerate(urls)
                if i not in attached
            ]
            files = tuple((attached[i].filename, attached[i].data) for i in sorted(attached))
            return Draft(with_lines(job, lines), files, len(lines))

        task = job.upstream_task_id
        return await send_within(
            self._channel(job),
            self.upload_limit(job.guild_id, job),
            draft,
            view=result_buttons(task, Product.VIDEO, count=len(urls)) if task else None,
            requester_id=job.requester_id,
            nonce=job.id,
            label=job.label,
            # A paid video is never lost to a permission its link does not need.
            links_when_forbidden=True,
        )

    async def _video(self, url: str, stem: str, label: str, until: float) -> Video | str:
        """The video at ``url``, or why it is posted as its link; raises a DeliveryError that
        may be retried (the host's 5xx, a lost connection) while a later try has time before
        ``until``: it may attach it."""
        left = until - time.time()
        try:
            data = await self._fetcher.download(
                url,
                max_bytes=MAX_VIDEO_BYTES,
                timeout=min(DOWNLOAD_TIMEOUT, max(LAST_DOWNLOAD_SECONDS, left)),
                what="video",
            )
        except DeliveryError as exc:
            if exc.retry and left > LAST_DOWNLOAD_SECONDS:
                raise
            if exc.retry:
                log.info("video linked %s file=%s: %s, near its deadline", label, stem, exc.reason)
                return "the bot could not download it in time"
            log.info("video linked %s file=%s: %s", label, stem, exc.reason)
            return "the bot could not download it"
        kind = video_kind(data)
        if kind is None:
            log.info("video linked %s file=%s bytes=%d: not a video", label, stem, len(data))
            return "the file is not a video the bot knows"
        return Video(data, f"{stem}.{kind}")

    async def tidy_up(self, job: Job) -> None:
        if job.status_message_id is not None:
            message = self._channel(job).get_partial_message(job.status_message_id)
            try:
                await message.delete()
            except discord.NotFound:
                pass
            except discord.HTTPException as exc:
                log.info("status message not removed %s: %s", job.label, exc.status)
        await self.mark_grid(job)

    async def whisper(self, follow_up: FollowUp, text: str) -> None:
        # What Interaction.followup is: the interaction's webhook, reachable by any process.
        webhook = discord.Webhook.from_state(
            {"id": follow_up.application_id, "type": 3, "token": follow_up.token},
            state=self._client._connection,
        )
        try:
            await webhook.send(text, ephemeral=True, allowed_mentions=allowed_mentions())
        except discord.HTTPException as exc:
            log.warning("could not tell the requester privately: %s", exc.status)

    async def announce_failure(self, job: Job, reason: str, follow_up: FollowUp | None) -> None:
        text = failure_text(job, reason)
        if job.status_message_id is not None:
            message = self._channel(job).get_partial_message(job.status_message_id)
            try:
                # An edit notifies no one anyway; the status line it replaces did not either.
                await message.edit(content=text, allowed_mentions=allowed_mentions())
            except discord.HTTPException as exc:
                log.info("status message not edited %s: %s", job.label, exc.status)
                if follow_up is None:
                    await self._post_failure(job, text)
        elif follow_up is None:
            await self._post_failure(job, text)
        if follow_up is not None:
            await self.whisper(follow_up, f"❌ {reason}")
        await self.mark_grid(job)

    async def post_notice(self, channel_id: int, text: str) -> None:
        """Post a note for the server admins (the low-credit warning) in ``channel_id``;
        NoticeFailed says why Discord refused it."""
        channel = self._client.get_partial_messageable(channel_id)
        try:
            await channel.send(text, allowed_mentions=allowed_mentions())
        except discord.Forbidden as exc:
            raise NoticeFailed(
                f"the bot may not post in channel {channel_id} (HTTP 403); give it View Channel "
                "and Send Messages there"
            ) from exc
        except discord.NotFound as exc:
            raise NoticeFailed(
                f"channel {channel_id} does not exist or the bot cannot see it (HTTP 404); "
                "check ADMIN_CHANNEL_ID"
            ) from exc
        except discord.HTTPException as exc:
            raise NoticeFailed(f"Discord refused the post (HTTP {exc.status})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise NoticeFailed(f"Discord could not be reached ({type(exc).__name__})") from exc

    async def _post_failure(self, job: Job, text: str) -> None:
        try:
            await self._channel(job).send(
                text,
                allowed_mentions=allowed_mentions(job.requester_id),
            )
        except discord.HTTPException as exc:
            log.warning("failure of %s could not be told: %s", job.label, exc.status)
