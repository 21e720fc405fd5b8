"""Images a member gave /imagine, as the API fetches them: kept in the store and served by the
bot's listener (``<PUBLIC_URL>/inputs/<token>.<ext>``) for IMAGE_INPUT_DAYS, or, without a
public address, the Discord attachment's own signed link, which expires about a day after the
interaction. A job's options name them (``images``); a job or re-roll whose images are gone
fails before anything is paid (``InputsGone``).

A token is a capability: whoever has the link may fetch the image. It is never logged above
debug, and bot.redaction blanks it in a URL."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.tables import image_inputs

log = logging.getLogger(__name__)

# The listener's route of a kept image, under PUBLIC_URL.
INPUTS_PATH = "/inputs/"
# A job's options: the task type (absent: mj_txt2img), the omni-reference strength, and its
# images, space-separated: "<token>.<ext>" (kept by the bot) or an https attachment link.
TASK_TYPE = "task_type"
OMNI_STRENGTH = "ow"
IMAGES = "images"

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
CONTENT_TYPES = {ext: content_type for content_type, ext in EXTENSIONS.items()}
DAY = 86400.0
# How long a Discord link must still live when the job is sent: the API fetches it after it
# answers, and a relaxed job waits upstream for minutes, often longer, before it does.
LINK_MARGIN_SECONDS = 600.0
RELAXED_LINK_MARGIN_SECONDS = 3600.0


class InputsGone(Exception):
    """A job's images are no longer to be had: nothing was sent, nothing paid."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KeptImage:
    content_type: str
    data: bytes


def references(options: Mapping[str, str]) -> tuple[str, ...]:
    """The images a job's options name, in order."""
    return tuple(options.get(IMAGES, "").split())


def attachment_expiry(url: str) -> float | None:
    """When a Discord attachment link stops working (its ``ex`` query parameter, hex seconds),
    or None when it does not say."""
    values = parse_qs(urlsplit(url).query).get("ex")
    if not values:
        return None
    try:
        return float(int(values[0], 16))
    except ValueError:
        return None


def _token_of(reference: str) -> str | None:
    """The token of a kept image's reference, None for a link."""
    if "://" in reference:
        return None
    return reference.partition(".")[0]


class ImageInputs:
    """The ``image_inputs`` rows: kept, read while they live, swept once expired."""

    def __init__(
        self,
        engine: AsyncEngine,
        days: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._seconds = days * DAY
        self._clock = clock

    async def keep(
        self, *, guild_id: int | None, requester_id: int, content_type: str, data: bytes
    ) -> str:
        """Store an image checked already; its reference for the job's options."""
        ext = EXTENSIONS[content_type]
        token = secrets.token_urlsafe(32)
        now = self._clock()
        async with self._engine.begin() as conn:
            await conn.execute(
                image_inputs.insert().values(
                    token=token,
                    guild_id=guild_id,
                    requester_id=requester_id,
                    content_type=content_type,
                    data=data,
                    created_at=now,
                    expires_at=now + self._seconds,
                )
            )
        log.info("image input kept user=%s bytes=%d", requester_id, len(data))
        return f"{token}.{ext}"

    async def read(self, name: str) -> KeptImage | None:
        """The image served as ``name`` ("<token>.<ext>"), None when unknown or expired."""
        token, dot, ext = name.partition(".")
        if not dot or ext not in CONTENT_TYPES or not token:
            return None
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(image_inputs.c.content_type, image_inputs.c.data).where(
                        image_inputs.c.token == token,
                        image_inputs.c.expires_at > self._clock(),
                    )
                )
            ).first()
        if row is None or CONTENT_TYPES[ext] != row.content_type:
            return None
        return KeptImage(row.content_type, bytes(row.data))

    async def kept(self, tokens: tuple[str, ...]) -> set[str]:
        """Which of ``tokens`` are still served."""
        if not tokens:
            return set()
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(image_inputs.c.token).where(
                    image_inputs.c.token.in_(tokens), image_inputs.c.expires_at > self._clock()
                )
            )
            return {row.token for row in rows}

    async def forget(self, refs: tuple[str, ...]) -> None:
        """Delete the kept images of ``refs`` (a request that was not taken)."""
        tokens = [t for t in map(_token_of, refs) if t is not None]
        if tokens:
            async with self._engine.begin() as conn:
                await conn.execute(image_inputs.delete().where(image_inputs.c.token.in_(tokens)))

    async def sweep(self) -> int:
        """Delete the expired images; how many went."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                image_inputs.delete().where(image_inputs.c.expires_at <= self._clock())
            )
        return result.rowcount or 0

    async def problem(self, options: Mapping[str, str]) -> str | None:
        """Why a job with these options cannot be sent now (its images are gone, or its Discord
        links expire before the API would fetch them), or None."""
        refs = references(options)
        tokens = tuple(t for t in map(_token_of, refs) if t is not None)
        if len(await self.kept(tokens)) < len(set(tokens)):
            return "the images it was made from are no longer kept by the bot"
        relaxed = options.get("speed") == "relaxed"
        margin = RELAXED_LINK_MARGIN_SECONDS if relaxed else LINK_MARGIN_SECONDS
        now = self._clock()
        for ref in refs:
            expiry = attachment_expiry(ref) if _token_of(ref) is None else None
            if expiry is not None and expiry <= now + margin:
                return "the Discord links of the images it was made from have expired"
        return None

    async def urls(self, options: Mapping[str, str], base: str | None) -> tuple[str, ...]:
        """The links the API fetches a job's images from; raises InputsGone when they are no
        longer to be had, before anything is paid."""
        refs = references(options)
        if not refs:
            return ()
        problem = await self.problem(options)
        if problem is None and base is None and any(_token_of(r) for r in refs):
            # Kept while PUBLIC_URL was set, which is unset now: the API could not reach them.
            problem = "the bot has no public address to serve its images from"
        if problem is not None:
            raise InputsGone(problem)
        return tuple(r if _token_of(r) is None else f"{base}{INPUTS_PATH}{r}" for r in refs)
