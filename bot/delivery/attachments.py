"""An image attached to /imagine, checked before anything is stored or paid: its declared size,
its download from Discord (the safe fetch: Discord's CDN hosts only), its real type (the bytes,
not its name: PNG, JPEG, WebP, or a GIF, whose first frame Midjourney reads), its size again,
and pixels that decode (Pillow, within a pixel cap read from the header before any decoding,
in the shared ImagePool with the pixels charged to its PixelBudget: a burst of small
decompression bombs is decoded a few at a time, never all at once)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from bot.delivery.fetch import ImageFetcher, image_kind
from bot.delivery.pool import ImagePool, PixelBudget
from bot.jobs.image_inputs import CONTENT_TYPES
from bot.jobs.types import DeliveryError

log = logging.getLogger(__name__)

# Where Discord serves attachments; the double of the tests serves them from its API's host.
DISCORD_ATTACHMENT_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
# Far beyond what Midjourney uses; a small file of huge dimensions (a decompression bomb) is
# refused from its header, before its pixels are decoded. Kept at 40 Mpx rather than lowered:
# members' photos of that size are taken today, and the PixelBudget bounds what is decoded at
# once whatever the cap.
MAX_PIXELS = 40_000_000
# Pillow's names of the formats taken, and the extension each is stored under.
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
MB = 1024 * 1024
DAMAGED = "cannot be read as an image (its pixels are damaged)"
TOO_LARGE = f"has more than {MAX_PIXELS // 1_000_000} million pixels"


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
    size cap), which it closes, a few downloads at a time; decodes in ``pool`` (the publisher's,
    so that results and attachments share one bound), or in a pool of its own."""

    def __init__(self, fetcher: ImageFetcher, max_mb: int, pool: ImagePool | None = None) -> None:
        self._fetcher = fetcher
        self._max_mb = max_mb
        self._pool = pool or ImagePool()

    async def close(self) -> None:
        await self._fetcher.close()

    async def check(self, attachment: Attachment) -> CheckedImage:
        """The attachment's bytes and real type; raises AttachmentRefused with the reason."""
        name = attachment.filename
        too_big = f"{name} is larger than {self._max_mb} MB"
        if attachment.size > self._max_mb * MB:
            raise AttachmentRefused(too_big)
        try:
            # A few at a time, by the fetcher's own slots (each up to IMAGE_INPUT_MAX_MB held).
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
        problem = await self._pool.run(_decoded_within, data, self._pool.budget)
        if problem is not None:
            raise AttachmentRefused(f"{name} {problem}")
        return CheckedImage(CONTENT_TYPES[ext], data)


def _decoded_within(data: bytes, budget: PixelBudget) -> str | None:
    """Why the image cannot be used, from its header alone if it is too large, or else once
    decoded with its pixels reserved in ``budget`` (in a thread of the pool)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return DAMAGED
    if width * height > MAX_PIXELS:
        return TOO_LARGE
    with budget.reserve(width * height):
        return _pixels_problem(data)


def _pixels_problem(data: bytes) -> str | None:
    """Why the image's pixels cannot be used, or None (in a thread: decoding takes time)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in FORMATS:
                return "is not a PNG, JPEG, WebP or GIF image"
            width, height = image.size
            if width * height > MAX_PIXELS:
                return TOO_LARGE
            # The first frame only, as Midjourney reads a GIF.
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return DAMAGED
    return None
