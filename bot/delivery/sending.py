"""A result's post within an upload limit: made again within less when Discord refuses it as
too large, with links only when it refuses its files for a permission; its files handed to
discord.py without a copy."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from bot.delivery.texts import allowed_mentions, forbidden_reason
from bot.jobs.types import DeliveryError

log = logging.getLogger(__name__)

TOO_LARGE_CODE = 40005
TOO_LARGE = "too large for this channel"
# Why a video is a link when Discord refused its file for a permission (Attach Files taken away
# after the click): the message itself may still be allowed.
NOT_ALLOWED = "the bot may not attach files in this channel"


@dataclass(frozen=True)
class Draft:
    """One try at a result's post: its text, its files (name, bytes) and how many links it has
    instead of files."""

    text: str
    files: tuple[tuple[str, bytes], ...]
    links: int


class _SharedBytes(io.BytesIO):
    """A BytesIO over bytes the bot holds anyway, for an upload. aiohttp sizes a BytesIO with
    getbuffer(), which makes a BytesIO copy bytes it shares; on the event loop that copy, and on
    a VM the faults of its fresh pages, cost up to 28 ms for one re-encoded result (measured,
    docs/performance.md section 8). It is never written, so a view of the bytes is the same."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


def upload(filename: str, data: bytes) -> discord.File:
    """``data`` as a file of a message, sent without a copy of it."""
    return discord.File(_SharedBytes(data), filename=filename)


async def send_within(
    channel: discord.PartialMessageable,
    limit: int,
    draft: Callable[[int, str], Awaitable[Draft]],
    *,
    view: discord.ui.View | None,
    requester_id: int,
    nonce: str | int,
    label: str,
    links_when_forbidden: bool = False,
) -> int:
    """Post what ``draft`` makes of ``limit`` bytes (``why`` what it leaves out is a link);
    when Discord refuses it as too large anyway, make it again within less. With
    ``links_when_forbidden``, a post whose files Discord refuses for a permission is made
    again with links only, which need none but Send Messages."""
    refusals = 0
    why = TOO_LARGE
    while True:
        post = await draft(limit, why)
        started = time.perf_counter()
        try:
            message = await channel.send(
                post.text,
                files=[upload(n, d) for n, d in post.files],
                view=view or discord.utils.MISSING,
                # A re-sent post after a crash is refused by Discord as the same message.
                nonce=nonce,
                allowed_mentions=allowed_mentions(requester_id),
            )
        except discord.Forbidden as exc:
            if not (links_when_forbidden and post.files):
                raise DeliveryError(forbidden_reason(), retry=False) from exc
            log.warning(
                "post forbidden %s files=%d code=%s: retrying with links only",
                label,
                len(post.files),
                exc.code,
            )
            limit, why = 0, NOT_ALLOWED
            continue
        except discord.HTTPException as exc:
            too_large = exc.status == 413 or exc.code == TOO_LARGE_CODE
            if not (too_large and post.files):
                raise DeliveryError(
                    f"Discord refused the post ({exc.status})", retry=exc.status >= 500
                ) from exc
            refusals += 1
            sent = sum(len(d) for _, d in post.files)
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
            len(post.files),
            post.links,
            (time.perf_counter() - started) * 1000,
        )
        return message.id
