"""Fit result images to Discord's upload limit: re-encode what is too large, link what cannot be
made to fit, so that a result is never lost to its size."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, TypeVar

import PIL.Image
import PIL.ImageOps

from bot.delivery.fetch import Image
from bot.delivery.pool import ImagePool, PixelBudget

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class NotReencodable(Exception):
    """The bytes carry an image's magic number but no picture Pillow can re-encode as a still."""


async def fit(
    images: list[Image], urls: tuple[str, ...], limit: int, label: str, pool: ImagePool
) -> tuple[list[Image], list[str]]:
    """What to attach within ``limit`` bytes in all, re-encoding what is too large (in
    ``pool``), and the links of what still does not fit (a result is never lost). The files keep
    the urls' order, which is the order of the grid."""

    async def shrink(image: Image, share: int) -> Image | None:
        return await _shrunk(image, share, label, pool)

    kept = await share_limit(images, limit, lambda image: len(image.data), shrink)
    files = [kept[i] for i in range(len(images)) if i in kept]
    links = [url for i, url in enumerate(urls) if i not in kept]
    return files, links


async def share_limit(
    items: Sequence[T],
    limit: int,
    size: Callable[[T], int],
    shrink: Callable[[T, int], Awaitable[T | None]],
) -> dict[int, T]:
    """The items (by their index) to attach within ``limit`` bytes in all, each as it is or as
    ``shrink`` made it fit its share (None: it cannot be)."""
    kept: dict[int, T] = {}
    left = limit
    # Smallest first, each taking at most an equal share of what is left: small files go
    # as they are and the large ones share the rest fairly.
    by_size = sorted(range(len(items)), key=lambda i: size(items[i]))
    for position, index in enumerate(by_size):
        share = left // (len(by_size) - position)
        item = items[index]
        fitted = item if size(item) <= share else await shrink(item, share)
        if fitted is not None:
            kept[index] = fitted
            left -= size(fitted)
    return kept


async def _shrunk(image: Image, limit: int, label: str, pool: ImagePool) -> Image | None:
    """The image re-encoded to at most ``limit`` bytes, or None when it cannot be."""
    if limit < MIN_REENCODED_BYTES:
        return None
    started = time.perf_counter()
    try:
        # Decoding and encoding a large picture takes a CPU for a second: not on the event loop.
        data = await pool.run(reencode, image.data, limit, pool.budget)
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


def reencode(data: bytes, limit: int, budget: PixelBudget | None = None) -> bytes | None:
    """The picture in ``data`` as a JPEG of at most ``limit`` bytes, or None if none fits
    without shrinking it below MIN_SIDE pixels. Lower quality is tried before smaller sizes.
    With a ``budget``, the picture's pixels are reserved there before it is decoded and until
    its last encoding is done."""
    with contextlib.ExitStack() as held:
        try:
            with PIL.Image.open(io.BytesIO(data), formats=REENCODE_FORMATS) as source:
                if getattr(source, "is_animated", False):
                    raise NotReencodable("an animation (a still would lose it)")
                if source.width * source.height > MAX_PIXELS:
                    raise NotReencodable(f"{source.width}x{source.height} is too many pixels")
                if budget is not None:
                    held.enter_context(budget.reserve(source.width * source.height))
                icc_profile = source.info.get("icc_profile")
                picture = _opaque(PIL.ImageOps.exif_transpose(source))
        except NotReencodable:
            raise
        # Pillow's decoders raise many kinds of error on damaged or hostile input.
        except Exception as exc:
            raise NotReencodable(f"not decodable ({type(exc).__name__})") from exc
        return _within(picture, limit, icc_profile)


def _within(picture: PIL.Image.Image, limit: int, icc_profile: bytes | None) -> bytes | None:
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
    # Into a file with a descriptor, Pillow encodes and writes in C without the GIL. Into a
    # BytesIO, an optimized JPEG is encoded in one call that holds it, and the event loop, meant
    # to run beside this thread, stops for as long: 70 ms for a 2048 px picture (bench.jobcost).
    with _scratch_file() as out:
        picture.save(out, "JPEG", quality=quality, optimize=True, icc_profile=icc_profile)
        out.seek(0)
        return out.read()


def _scratch_file() -> IO[bytes]:
    """An anonymous file in memory where the system has them (Linux), else a temporary one."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("reencode", os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()
