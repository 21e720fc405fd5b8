"""What /mj status tells: a server's admin, that server's jobs and failures of the last day; the
bot's owners, every server's, the API account's credits and how results reach the bot."""

from __future__ import annotations

import time

from bot.delivery.texts import one_line
from bot.jobs.stats import JobStats
from bot.jobs.tables import JobState
from bot.jobs.vary_index import VaryIndex
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.errors import ApiError, ApiUnreachable

DAY = 24 * 60 * 60
FAILURES_SHOWN = 5
REASON_CHARS = 120

_GROUPS = (
    ("queued", (JobState.REQUESTED,)),
    ("running", (JobState.SUBMITTING, JobState.SUBMITTED, JobState.SUCCEEDED)),
    ("done", (JobState.DELIVERED,)),
    ("failed", (JobState.FAILED,)),
)


async def status_report(
    stats: JobStats,
    client: MidjourneyClient,
    *,
    guild_id: int | None,
    callbacks: str,
    low_credit_threshold: int = 0,
    spending: str | None = None,
    costs: str | None = None,
    vary_index: str | None = None,
    videos: str | None = None,
    servers: list[str] | None = None,
    now: float | None = None,
) -> str:
    """The report, in Discord markdown. With ``guild_id``, that server's alone, for its admins:
    no account, no callback URL, nothing of another server. Without, the owners' report:
    ``callbacks`` says how results reach the bot, ``low_credit_threshold`` (0: none) when the
    admins are warned of low credits, ``servers`` a line per server. ``spending`` is the
    limits in force there, ``costs`` (owners) what a job of each cost key is taken to cost,
    ``vary_index`` how V1–V4 are numbered for the API, ``videos`` what 🎬 asks for and how
    ⏩ numbers videos."""
    now = time.time() if now is None else now
    counts = await stats.states_since(now - DAY, guild_id)
    jobs = ", ".join(
        f"{sum(counts.get(state, 0) for state in states)} {name}" for name, states in _GROUPS
    )
    where = "every server" if guild_id is None else "this server"
    lines = ["**Midjourney upscale bot**", f"Jobs in the last 24 h, {where}: {jobs}"]
    if guild_id is None:
        try:
            credits = f"{await client.credits()} credits left"
            if low_credit_threshold:
                credits += f" (warning below {low_credit_threshold})"
        except (ApiError, ApiUnreachable) as exc:
            credits = f"unknown ({exc.user_message})"
        lines += [f"API account: {credits}", f"Callbacks: {callbacks}"]
    if spending is not None:
        lines.append(f"Daily limits: {spending}")
    if costs is not None:
        lines.append(
            f"Credits per job (learnt from the credit readings, else the defaults): {costs}"
        )
    if vary_index is not None:
        lines.append(f"Variations: {vary_index}")
    if videos is not None:
        lines.append(f"Videos: {videos}")
    if servers:
        lines.append("Servers:")
        lines += servers
    failures = await stats.recent_failures(FAILURES_SHOWN, guild_id)
    if failures:
        lines.append("Last failures:")
        for job in failures:
            reason = one_line(job.error or "no reason recorded")[:REASON_CHARS]
            lines.append(f"- <t:{int(job.updated_at)}:R> {job.kind} `{job.id}`: {reason}")
    else:
        lines.append("No failures recorded.")
    return "\n".join(lines)


async def index_summary(
    index: VaryIndex, configured: int | None, *, first: str, setting: str, meanwhile: str
) -> str:
    """How an endpoint's items are numbered (``first`` base), and who said so."""
    base = await index.base()
    if configured is not None:
        learned = await index.learned()
        if learned not in (None, base):
            return (
                f"{first} {base} ({setting}), but the API was seen to count from {learned}: "
                "check the setting"
            )
        return f"{first} {base} ({setting})"
    if base is None:
        return f"not learned yet: {meanwhile}"
    return f"{first} {base} (learned from the API's answers)"
