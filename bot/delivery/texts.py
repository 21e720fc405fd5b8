"""The texts the bot posts in a channel about a job: status lines, results, failures."""

from __future__ import annotations

import re
import unicodedata

import discord

from bot.jobs.kinds import Pieces, kind_named
from bot.jobs.kinds.base import owner_mention
from bot.jobs.params import shown_params
from bot.jobs.store import Job

PROMPT_LIMIT = 1500
REASON_LIMIT = 400
MESSAGE_LIMIT = 2000


def allowed_mentions(requester_id: int | None = None) -> discord.AllowedMentions:
    """Whom a message may notify: the requester its text names (a result, a grid, a failure
    posted anew), or nobody. Every send and edit passes one: a prompt is anyone's text, and its
    @everyone, @here, role or user mentions must stay words. Each field is set: one left out is
    True to discord.py, and a message without any lets Discord ping every mention in it."""
    if requester_id is None:
        return discord.AllowedMentions.none()
    return discord.AllowedMentions(
        everyone=False, users=[discord.Object(requester_id)], roles=False, replied_user=False
    )


# Bidirectional overrides and isolates: they would turn the rest of a line around.
_BIDI = frozenset(map(chr, (*range(0x202A, 0x202F), *range(0x2066, 0x206A))))


def one_line(text: str) -> str:
    """Someone else's words (a prompt, a server's name, a vendor's error) as one line of ours:
    no line or paragraph break of any kind, no control or bidirectional character."""
    return "".join(
        " " if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text
    )


def prompt_text(
    prompt: str | None, options: dict[str, str] | None = None, limit: int = PROMPT_LIMIT
) -> str:
    """The prompt in bold (cut after ``limit`` characters), then, when it had parameters typed
    in it, those that were sent with it (``--ar 16:9 --s 250``)."""
    if not prompt:
        return "**(no prompt known)**"
    cleaned = discord.utils.escape_markdown(one_line(prompt))
    if len(cleaned) > limit:
        cleaned = cleaned[:limit] + "…"
    return f"**{cleaned}**{_params(options or {})}"


def _params(options: dict[str, str]) -> str:
    # The values come from fixed lists and whole numbers (read_params, parse_record_info), and
    # are escaped all the same, like any stored text; a flag's own dashes are the bot's.
    return re.sub(
        r"(?<= )[^ ]+",
        lambda m: m[0] if m[0].startswith("--") else discord.utils.escape_markdown(one_line(m[0])),
        shown_params(options),
    )


def pieces(job: Job, prompt_limit: int = PROMPT_LIMIT) -> Pieces:
    """The parts of ``job`` its kind's lines are made of."""
    return Pieces(
        prompt=prompt_text(job.prompt, job.options, prompt_limit),
        requester_id=job.requester_id,
        number=(job.image_index or 0) + 1,
        started=f"<t:{int(job.created_at)}:R>",
        options=job.options,
    )


def status_text(job: Job) -> str:
    return kind_named(job.kind).status_line(pieces(job))


def imagine_status_text(
    prompt: str, requester_id: int, started_at: float, options: dict[str, str] | None = None
) -> str:
    """/imagine's own answer, before its job is stored."""
    started = f"<t:{int(started_at)}:R>"
    shown = prompt_text(prompt, options)
    return kind_named("imagine").status_line(Pieces(shown, requester_id, 1, started))


def result_text(job: Job, prompt_limit: int = PROMPT_LIMIT) -> str:
    return kind_named(job.kind).result_line(pieces(job, prompt_limit))


def video_link(number: int, url: str, why: str, expires: int) -> str:
    """The line of a video that is not attached (``why``: a clause), with when its link dies."""
    return (
        f"Video #{number}: {url} (not attached: {why}; the link works until about <t:{expires}:D>)"
    )


def with_lines(job: Job, lines: list[str]) -> str:
    """The job's result line, then ``lines`` (its videos' links), within one message: the
    prompt is cut shorter when it must be, a link never."""
    tail = "".join(f"\n{line}" for line in lines)
    room = MESSAGE_LIMIT - len(tail)
    limit = PROMPT_LIMIT
    text = result_text(job)
    while len(text) > room and limit > 0:
        limit = max(0, limit - (len(text) - room))
        text = result_text(job, limit)
    return text + tail


def grid_text(prompt: str | None, requester_id: int) -> str:
    """The line above a grid's four images."""
    return f"{prompt_text(prompt)}{owner_mention(requester_id)}"


def failure_text(job: Job, reason: str) -> str:
    what = kind_named(job.kind).failure_what(pieces(job))
    # The prompt may take 1500 of Discord's 2000 characters; the reason gets what is left.
    return f"❌ {what} for <@{job.requester_id}> failed: {reason[:REASON_LIMIT]}"


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def forbidden_reason() -> str:
    return (
        "the bot may not post in that channel; a server admin must give it View Channel, "
        "Send Messages and Attach Files there"
    )
