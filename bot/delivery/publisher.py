"""Post jobs' status lines, results and failures, and notes for the admins, to Discord.

Everything here goes through the channel (REST), never through an interaction token, so a job
that finishes after the 15-minute token has died is still posted, by any process.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time

import aiohttp
import discord

from bot.credits import NoticeFailed
from bot.delivery.fetch import ImageFetcher
from bot.delivery.fit import fit
from bot.delivery.pool import ImagePool
from bot.delivery.texts import (
    allowed_mentions,
    failure_text,
    forbidden_reason,
    grid_text,
    result_text,
    status_text,
)
from bot.grid import GridButtons, ResultButtons, result_buttons
from bot.jobs.kinds import Product, kind_named
from bot.jobs.store import Job, JobStore
from bot.jobs.types import DeliveryError, FollowUp
from bot.midjourney.models import GRID_SIZE, Task

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
TOO_LARGE_CODE = 40005


class DiscordPublisher:
    """The tracker's Publisher on top of a discord.py client's REST side."""

    def __init__(
        self,
        client: discord.Client,
        store: JobStore,
        fetcher: ImageFetcher,
        pool: ImagePool | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._fetcher = fetcher
        # Re-encodes of every delivery share one bounded pool.
        self._pool = pool or ImagePool()
        self._grid_locks: dict[int, asyncio.Lock] = {}

    async def close(self) -> None:
        """Close the fetcher's connections: the publisher is the fetcher's only user."""
        await self._fetcher.close()

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self._client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def upload_limit(self, guild_id: int | None) -> int:
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
        channel = self._client.get_partial_messageable(channel_id, guild_id=guild_id)
        limit = self.upload_limit(guild_id)
        refusals = 0
        while True:
            files, links = await fit(images, urls, limit, label, self._pool)
            started = time.perf_counter()
            try:
                message = await channel.send(
                    "\n".join((content, *links)),
                    files=[discord.File(io.BytesIO(i.data), filename=i.filename) for i in files],
                    view=view or discord.utils.MISSING,
                    # A re-sent post after a crash is refused by Discord as the same message.
                    nonce=nonce,
                    allowed_mentions=allowed_mentions(requester_id),
                )
            except discord.Forbidden as exc:
                raise DeliveryError(forbidden_reason(), retry=False) from exc
            except discord.HTTPException as exc:
                too_large = exc.status == 413 or exc.code == TOO_LARGE_CODE
                if not (too_large and files):
                    raise DeliveryError(
                        f"Discord refused the post ({exc.status})", retry=exc.status >= 500
                    ) from exc
                refusals += 1
                sent = sum(len(i.data) for i in files)
                # Discord's real limit is below the one it advertised: halving what it refused
                # steps past the gaps between its limits (10, 25, 50, 100 MiB). If that is
                # refused too, the post carries links only, which no size limit refuses.
                limit = sent // 2 if refusals == 1 else 0
                log.warning(
                    "post too large %s bytes=%d refusals=%d: retrying with limit=%d",
                    label,
                    sent,
                    refusals,
                    limit,
                )
                continue
            log.info(
                "posted %s message=%s files=%d links=%d post_ms=%.1f",
                label,
                message.id,
                len(files),
                len(links),
                (time.perf_counter() - started) * 1000,
            )
            return message.id

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
