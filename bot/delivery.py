"""Fetch result images safely and post them, and every status, to Discord.

Everything here goes through the channel (REST), never through an interaction token, so a job
that finishes after the 15-minute token has died is still posted, by any process.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
import discord
import PIL.Image
import PIL.ImageOps
from aiohttp.abc import AbstractResolver

from bot.config import VENDOR_RESULT_HOSTS
from bot.credits import NoticeFailed
from bot.grid import GridButtons, owner_mention
from bot.jobs.store import Job, JobKind, JobStore
from bot.jobs.tracker import DeliveryError, Whisper
from bot.midjourney.models import GRID_SIZE, Task
from bot.net import NonPublicAddressError, PublicOnlyResolver, is_public, read_capped

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
PROMPT_LIMIT = 1500
REASON_LIMIT = 400
# Re-encoding an image that does not fit the upload limit: JPEG, because every Discord client
# shows it inline; first at lower qualities, then at smaller sizes at the lowest one.
JPEG_QUALITIES = (90, 75)
MAX_DOWNSCALES = 6
# Smaller than this the picture is a thumbnail, not the result: its link serves better.
MIN_SIDE = 256
MIN_REENCODED_BYTES = 32 * 1024
# Twice the sides of the largest Midjourney upscale (4096 px); decoding more risks the bot's memory.
MAX_PIXELS = 8192 * 8192
REENCODE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
TOO_LARGE_CODE = 40005

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
    images; redirects are followed by hand so that each hop is checked too.

    Hosts in ``public_only`` (the vendors' file hosts) must resolve to public addresses; the other
    trusted hosts were named by the operator (MJ_RESULT_HOSTS, the API host, which is 127.0.0.1
    in sandbox mode) and may be anywhere. The address check is made by the fetcher's own
    resolver at connection time, so a DNS answer cannot change between check and connect.
    Build it inside the running event loop, and close() it.
    """

    def __init__(
        self,
        trusted_hosts: Iterable[str],
        *,
        public_only: Iterable[str] = VENDOR_RESULT_HOSTS,
        resolver: AbstractResolver | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
        timeout: float = 60.0,
    ) -> None:
        self._trusted = frozenset(h.lower() for h in trusted_hosts)
        self._any_address = self._trusted - frozenset(h.lower() for h in public_only)
        self._resolver = PublicOnlyResolver(
            resolver or aiohttp.DefaultResolver(), any_address=self._any_address
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self._resolver),
            # A proxy would resolve the names itself, out of the resolver's sight.
            trust_env=False,
        )
        self._max = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10)

    async def close(self) -> None:
        await self._session.close()
        await self._resolver.close()

    def _refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched, or None if it may."""
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return "the result link is not a valid URL"
        if parts.scheme not in ("http", "https") or not host:
            return "the result link is not an http(s) link"
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        # aiohttp connects to an IP literal without asking the resolver, so it is checked here.
        if literal is not None and host not in self._any_address and not is_public(host):
            return (
                f"the result link points to {host}, a private, loopback or link-local address, "
                "which the bot does not download from"
            )
        if host not in self._trusted:
            return (
                f"the result is hosted on {host}, which is not a trusted host "
                "(the server admin can add it to MJ_RESULT_HOSTS)"
            )
        return None

    async def fetch(self, url: str, stem: str) -> Image:
        for _ in range(MAX_REDIRECTS + 1):
            refusal = self._refusal(url)
            if refusal is not None:
                raise DeliveryError(refusal, retry=False)
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
                if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                    exc.os_error, NonPublicAddressError
                ):
                    raise DeliveryError(
                        f"the result host {exc.os_error.host} resolved to a private, loopback "
                        "or link-local address, so the bot did not download from it",
                        retry=False,
                    ) from exc
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
    return f"{_prompt_text(job.prompt)}{owner_mention(job.requester_id)}"


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
                allowed_mentions=discord.AllowedMentions.none(),
                # Re-posted after a crash that lost its id, it is the same message, not a second
                # status line left standing (Discord's nonces are at most 25 characters).
                nonce=f"s{job.id}",
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
            content=f"{_prompt_text(task.prompt)}{owner_mention(requester_id)}",
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
        channel = self._client.get_partial_messageable(channel_id, guild_id=guild_id)
        limit = self.upload_limit(guild_id)
        refusals = 0
        while True:
            files, links = await _fit(images, urls, limit, label)
            started = time.perf_counter()
            try:
                message = await channel.send(
                    "\n".join((content, *links)),
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

    async def post_notice(self, channel_id: int, text: str) -> None:
        """Post a note for the server admins (the low-credit warning) in ``channel_id``;
        NoticeFailed says why Discord refused it."""
        channel = self._client.get_partial_messageable(channel_id)
        try:
            await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
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
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.requester_id)]),
            )
        except discord.HTTPException as exc:
            log.warning("failure of %s could not be told: %s", job.label, exc.status)


class NotReencodable(Exception):
    """The bytes carry an image's magic number but no picture Pillow can re-encode as a still."""


async def _fit(
    images: list[Image], urls: tuple[str, ...], limit: int, label: str
) -> tuple[list[Image], list[str]]:
    """What to attach within ``limit`` bytes in all, re-encoding what is too large, and the
    links of what still does not fit (a result is never lost). The files keep the urls' order,
    which is the order of the grid."""
    kept: dict[int, Image] = {}
    left = limit
    # Smallest first, each taking at most an equal share of what is left: small images go
    # as they are and the large ones share the rest fairly.
    by_size = sorted(range(len(images)), key=lambda i: len(images[i].data))
    for position, index in enumerate(by_size):
        share = left // (len(by_size) - position)
        image = images[index]
        fitted = image if len(image.data) <= share else await _shrunk(image, share, label)
        if fitted is not None:
            kept[index] = fitted
            left -= len(fitted.data)
    files = [kept[i] for i in range(len(images)) if i in kept]
    links = [url for i, url in enumerate(urls) if i not in kept]
    return files, links


async def _shrunk(image: Image, limit: int, label: str) -> Image | None:
    """The image re-encoded to at most ``limit`` bytes, or None when it cannot be."""
    if limit < MIN_REENCODED_BYTES:
        return None
    started = time.perf_counter()
    try:
        # Decoding and encoding a large picture takes a CPU for a second: not on the event loop.
        data = await asyncio.to_thread(reencode, image.data, limit)
    except NotReencodable as exc:
        log.info("linked %s file=%s: %s", label, image.filename, exc)
        return None
    if data is None:
        log.info(
            "linked %s file=%s bytes=%d: no re-encoding fits limit=%d",
            label,
            image.filename,
            len(image.data),
            limit,
        )
        return None
    log.info(
        "re-encoded %s file=%s bytes=%d->%d limit=%d ms=%.0f",
        label,
        image.filename,
        len(image.data),
        len(data),
        limit,
        (time.perf_counter() - started) * 1000,
    )
    return Image(data, f"{image.filename.rsplit('.', 1)[0]}.jpg")


def reencode(data: bytes, limit: int) -> bytes | None:
    """The picture in ``data`` as a JPEG of at most ``limit`` bytes, or None if none fits
    without shrinking it below MIN_SIDE pixels. Lower quality is tried before smaller sizes."""
    try:
        with PIL.Image.open(io.BytesIO(data), formats=REENCODE_FORMATS) as source:
            if getattr(source, "is_animated", False):
                raise NotReencodable("an animation (a still would lose it)")
            if source.width * source.height > MAX_PIXELS:
                raise NotReencodable(f"{source.width}x{source.height} is too many pixels")
            icc_profile = source.info.get("icc_profile")
            picture = _opaque(PIL.ImageOps.exif_transpose(source))
    except NotReencodable:
        raise
    # Pillow's decoders raise many kinds of error on damaged or hostile input.
    except Exception as exc:
        raise NotReencodable(f"not decodable ({type(exc).__name__})") from exc
    encoded = b""
    for quality in JPEG_QUALITIES:
        encoded = _jpeg(picture, quality, icc_profile)
        if len(encoded) <= limit:
            return encoded
    scale = 1.0
    for _ in range(MAX_DOWNSCALES):
        # A JPEG's size follows its pixel count: shrink the sides by the square root of the
        # excess, and a little more, so that one or two steps usually suffice.
        scale *= min(0.9, 0.95 * math.sqrt(limit / len(encoded)))
        size = (round(picture.width * scale), round(picture.height * scale))
        if min(size) < MIN_SIDE:
            return None
        smaller = picture.resize(size, PIL.Image.Resampling.LANCZOS)
        encoded = _jpeg(smaller, JPEG_QUALITIES[-1], icc_profile)
        if len(encoded) <= limit:
            return encoded
    return None


def _opaque(picture: PIL.Image.Image) -> PIL.Image.Image:
    """The picture in RGB, transparent parts on white: JPEG has no alpha channel."""
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        flat = PIL.Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return picture.convert("RGB")


def _jpeg(picture: PIL.Image.Image, quality: int, icc_profile: bytes | None) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality, optimize=True, icc_profile=icc_profile)
    return out.getvalue()


def _forbidden_reason() -> str:
    return (
        "the bot may not post in that channel; a server admin must give it View Channel, "
        "Send Messages and Attach Files there"
    )
