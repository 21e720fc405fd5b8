"""An image attached to /imagine, checked before anything is stored or paid: its declared size,
its download from Discord (the safe fetch: Discord's CDN hosts only), its real type (the bytes,
not its name: PNG, JPEG, WebP, or a GIF, whose first frame Midjourney reads), its size again,
and pixels that decode (Pillow, off the event loop, within a pixel cap)."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from bot.delivery.fetch import ImageFetcher, image_kind
from bot.jobs.image_inputs import CONTENT_TYPES
from bot.jobs.types import DeliveryError

log = logging.getLogger(__name__)

# Where Discord serves attachments; the double of the tests serves them from its API's host.
DISCORD_ATTACHMENT_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
# Far beyond what Midjourney uses; a small file of huge dimensions (a decompression bomb) is
# refused before its pixels are decoded.
MAX_PIXELS = 40_000_000
# Pillow's names of the formats taken, and the extension each is stored under.
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
MB = 1024 * 1024


@dataclass(frozen=True)
class Attachment:
    """What the interaction says of an attachment."""

    filename: str
    size: int
    url: str


@dataclass(frozen=True)
class CheckedImage:
    content_type: str
    data: bytes


class AttachmentRefused(Exception):
    """An attachment the bot does not take; ``reason`` names it, for the member."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AttachmentChecker:
    """Downloads and checks attachments with ``fetcher`` (built with Discord's hosts and the
    size cap), which it closes."""

    def __init__(self, fetcher: ImageFetcher, max_mb: int) -> None:
        self._fetcher = fetcher
        self._max_mb = max_mb

    async def close(self) -> None:
        await self._fetcher.close()

    async def check(self, attachment: Attachment) -> CheckedImage:
        """The attachment's bytes and real type; raises AttachmentRefused with the reason."""
        name = attachment.filename
        too_big = f"{name} is larger than {self._max_mb} MB"
        if attachment.size > self._max_mb * MB:
            raise AttachmentRefused(too_big)
        try:
            data = await self._fetcher.download(attachment.url)
        except DeliveryError as exc:
            log.info("attachment not downloaded: %s", exc.reason)
            if "larger" in exc.reason:
                raise AttachmentRefused(too_big) from None
            raise AttachmentRefused(f"{name} could not be downloaded from Discord") from None
        if len(data) > self._max_mb * MB:
            raise AttachmentRefused(too_big)
        ext = image_kind(data)
        if ext is None or ext not in CONTENT_TYPES:
            raise AttachmentRefused(f"{name} is not a PNG, JPEG, WebP or GIF image")
        problem = await asyncio.to_thread(_pixels_problem, data)
        if problem is not None:
            raise AttachmentRefused(f"{name} {problem}")
        return CheckedImage(CONTENT_TYPES[ext], data)


def _pixels_problem(data: bytes) -> str | None:
    """Why the image's pixels cannot be used, or None (in a thread: decoding takes time)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in FORMATS:
                return "is not a PNG, JPEG, WebP or GIF image"
            width, height = image.size
            if width * height > MAX_PIXELS:
                return f"has more than {MAX_PIXELS // 1_000_000} million pixels"
            # The first frame only, as Midjourney reads a GIF.
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return "cannot be read as an image (its pixels are damaged)"
    return None
