"""What /mj status tells a server admin: jobs of the last day, credits, callbacks, failures."""

from __future__ import annotations

import time

from bot.jobs.store import JobState, JobStore
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
    store: JobStore,
    client: MidjourneyClient,
    *,
    callbacks: str,
    low_credit_threshold: int = 0,
    spending: str | None = None,
    vary_index: str | None = None,
    now: float | None = None,
) -> str:
    """The report, in Discord markdown; ``callbacks`` says how results reach the bot,
    ``low_credit_threshold`` (0: none) when the admins are warned of low credits, ``spending``
    the daily limits in force, ``vary_index`` how V1–V4 are numbered for the API."""
    now = time.time() if now is None else now
    counts = await store.states_since(now - DAY)
    jobs = ", ".join(
        f"{sum(counts.get(state, 0) for state in states)} {name}" for name, states in _GROUPS
    )
    try:
        credits = f"{await client.credits()} credits left"
        if low_credit_threshold:
            credits += f" (warning below {low_credit_threshold})"
    except (ApiError, ApiUnreachable) as exc:
        credits = f"unknown ({exc.user_message})"
    lines = [
        "**Midjourney upscale bot**",
        f"Jobs in the last 24 h: {jobs}",
        f"API account: {credits}",
        f"Callbacks: {callbacks}",
    ]
    if spending is not None:
        lines.append(f"Daily limits: {spending}")
    if vary_index is not None:
        lines.append(f"Variations: {vary_index}")
    failures = await store.recent_failures(FAILURES_SHOWN)
    if failures:
        lines.append("Last failures:")
        for job in failures:
            reason = (job.error or "no reason recorded")[:REASON_CHARS]
            lines.append(f"- <t:{int(job.updated_at)}:R> {job.kind} `{job.id}`: {reason}")
    else:
        lines.append("No failures recorded.")
    return "\n".join(lines)
