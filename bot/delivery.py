"""Fetch result images safely and post them, and every status, to Discord.

Everything here goes through the channel (REST), never through an interaction token, so a job
that finishes after the 15-minute token has died is still posted, by any process.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
import discord

from bot.grid import GridButtons
from bot.jobs.store import Job, JobKind, JobStore
from bot.jobs.tracker import DeliveryError, Whisper
from bot.midjourney.models import GRID_SIZE, Task
from bot.net import read_capped

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
PROMPT_LIMIT = 1500
REASON_LIMIT = 400

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


def image_kind(data: bytes) -> str | None:
    """The file extension the bytes really are (PNG, JPEG, GIF, WebP), or None."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass(frozen=True)
class Image:
    data: bytes
    filename: str


class ImageFetcher:
    """Downloads result images from trusted hosts only, with a size cap, and checks they are
    images; redirects are followed by hand so that each hop is checked too."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        trusted_hosts: Iterable[str],
        *,
        max_bytes: int = MAX_IMAGE_BYTES,
        timeout: float = 60.0,
    ) -> None:
        self._session = session
        self._trusted = frozenset(h.lower() for h in trusted_hosts)
        self._max = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10)

    def trusted(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and (parts.hostname or "") in self._trusted

    async def fetch(self, url: str, stem: str) -> Image:
        for _ in range(MAX_REDIRECTS + 1):
            if not self.trusted(url):
                host = urlsplit(url).hostname or url[:60]
                raise DeliveryError(
                    f"the result is hosted on {host}, which is not a trusted host "
                    "(the server admin can add it to MJ_RESULT_HOSTS)",
                    retry=False,
                )
            try:
                async with self._session.get(
                    url, allow_redirects=False, timeout=self._timeout
                ) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status != 200:
                        raise DeliveryError(
                            f"the result image could not be downloaded (HTTP {response.status})",
                            retry=response.status >= 500 or response.status == 429,
                        )
                    data = await read_capped(response, self._max)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise DeliveryError(
                    f"the result image could not be downloaded ({type(exc).__name__})", retry=True
                ) from exc
            if data is None:
                raise DeliveryError("the result image is larger than the bot accepts", retry=False)
            kind = image_kind(data)
            if kind is None:
                raise DeliveryError("the result file is not an image", retry=False)
            return Image(data, f"{stem}.{kind}")
        raise DeliveryError("the result image is behind too many redirects", retry=False)


def _prompt_text(prompt: str | None) -> str:
    if not prompt:
        return "**(no prompt known)**"
    cleaned = discord.utils.escape_markdown(prompt.replace("\n", " "))
    if len(cleaned) > PROMPT_LIMIT:
        cleaned = cleaned[:PROMPT_LIMIT] + "…"
    return f"**{cleaned}**"


def status_text(job: Job) -> str:
    started = f"<t:{int(job.created_at)}:R>"
    if job.kind is JobKind.UPSCALE:
        number = (job.image_index or 0) + 1
        return f"⏳ Upscaling image #{number} for <@{job.requester_id}> (started {started})"
    return imagine_status_text(job.prompt or "", job.requester_id, job.created_at)


def imagine_status_text(prompt: str, requester_id: int, started_at: float) -> str:
    started = f"<t:{int(started_at)}:R>"
    return f"⏳ Generating {_prompt_text(prompt)} for <@{requester_id}> (started {started})"


def result_text(job: Job) -> str:
    if job.kind is JobKind.UPSCALE:
        number = (job.image_index or 0) + 1
        return f"{_prompt_text(job.prompt)} - Image #{number} <@{job.requester_id}>"
    return f"{_prompt_text(job.prompt)} - <@{job.requester_id}>"


def failure_text(job: Job, reason: str) -> str:
    if job.kind is JobKind.UPSCALE:
        what = f"Upscale of image #{(job.image_index or 0) + 1}"
    else:
        what = f"Generation of {_prompt_text(job.prompt)}"
    # The prompt may take 1500 of Discord's 2000 characters; the reason gets what is left.
    return f"❌ {what} for <@{job.requester_id}> failed: {reason[:REASON_LIMIT]}"


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


class DiscordPublisher:
    """The tracker's Publisher on top of a discord.py client's REST side."""

    def __init__(self, client: discord.Client, store: JobStore, fetcher: ImageFetcher) -> None:
        self._client = client
        self._store = store
        self._fetcher = fetcher
        self._grid_locks: dict[int, asyncio.Lock] = {}

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self._client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def upload_limit(self, guild_id: int | None) -> int:
        guild = self._client.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def post_status(self, job: Job) -> int | None:
        try:
            message = await self._channel(job).send(
                status_text(job), allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.Forbidden as exc:
            raise DeliveryError(_forbidden_reason(), retry=False) from exc
        except discord.HTTPException as exc:
            # The status line is a courtesy; the job goes on without it.
            log.warning("status message not posted %s: %s", job.label, exc.status)
            return None
        return message.id

    async def mark_grid(self, job: Job) -> None:
        """Show the grid's U-buttons green for every image with a live or done upscale."""
        if job.grid_message_id is None or job.parent_task_id is None:
            return
        lock = self._grid_locks.setdefault(job.grid_message_id, asyncio.Lock())
        async with lock:
            done = await self._store.upscaled_indexes(job.parent_task_id)
            message = self._channel(job).get_partial_message(job.grid_message_id)
            try:
                await message.edit(view=GridButtons(job.parent_task_id, frozenset(done)))
            except discord.HTTPException as exc:
                log.info("grid buttons not updated %s: %s", job.label, exc.status)

    async def deliver(self, job: Job) -> int:
        urls = job.result_urls[:GRID_SIZE] if job.kind is JobKind.IMAGINE else job.result_urls[:1]
        view = GridButtons(job.upstream_task_id) if job.kind is JobKind.IMAGINE else None
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
        """Show a generation the bot did not start, with its U1–U4 row."""
        done = await self._store.upscaled_indexes(task.task_id)
        return await self._post_images(
            channel_id,
            guild_id,
            task.result_urls[:GRID_SIZE],
            stem=task.task_id,
            content=f"{_prompt_text(task.prompt)} - <@{requester_id}>",
            view=GridButtons(task.task_id, frozenset(done)),
            requester_id=requester_id,
            nonce=None,
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
        nonce: str | None,
        label: str,
    ) -> int:
        if not urls:
            raise DeliveryError("the API reported success but gave no image", retry=False)
        images = await asyncio.gather(
            *(self._fetcher.fetch(url, f"{stem}_{i}") for i, url in enumerate(urls))
        )
        files, links = _fit(images, urls, self.upload_limit(guild_id))
        if links:
            content += "\n" + "\n".join(links)
        channel = self._client.get_partial_messageable(channel_id, guild_id=guild_id)
        started = time.perf_counter()
        try:
            message = await channel.send(
                content,
                files=[discord.File(io.BytesIO(i.data), filename=i.filename) for i in files],
                view=view or discord.utils.MISSING,
                # A re-sent post after a crash is refused by Discord as the same message.
                nonce=nonce,
                allowed_mentions=discord.AllowedMentions(
                    everyone=False, roles=False, users=[discord.Object(requester_id)]
                ),
            )
        except discord.Forbidden as exc:
            raise DeliveryError(_forbidden_reason(), retry=False) from exc
        except discord.HTTPException as exc:
            raise DeliveryError(
                f"Discord refused the post ({exc.status})", retry=exc.status >= 500
            ) from exc
        log.info(
            "posted %s message=%s files=%d post_ms=%.1f",
            label,
            message.id,
            len(files),
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

    async def announce_failure(self, job: Job, reason: str, whisper: Whisper | None) -> None:
        text = failure_text(job, reason)
        if job.status_message_id is not None:
            message = self._channel(job).get_partial_message(job.status_message_id)
            try:
                await message.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as exc:
                log.info("status message not edited %s: %s", job.label, exc.status)
                if whisper is None:
                    await self._post_failure(job, text)
        elif whisper is None:
            await self._post_failure(job, text)
        if whisper is not None:
            await whisper(f"❌ {reason}")
        await self.mark_grid(job)

    async def _post_failure(self, job: Job, text: str) -> None:
        try:
            await self._channel(job).send(
                text,
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.requester_id)]),
            )
        except discord.HTTPException as exc:
            log.warning("failure of %s could not be told: %s", job.label, exc.status)


def _fit(images: list[Image], urls: tuple[str, ...], limit: int) -> tuple[list[Image], list[str]]:
    """Attach what fits under the upload limit; link the rest rather than lose it."""
    files: list[Image] = []
    links: list[str] = []
    used = 0
    for image, url in zip(images, urls, strict=True):
        if used + len(image.data) <= limit:
            files.append(image)
            used += len(image.data)
        else:
            links.append(url)
    return files, links


def _forbidden_reason() -> str:
    return (
        "the bot may not post in that channel; a server admin must give it View Channel, "
        "Send Messages and Attach Files there"
    )
