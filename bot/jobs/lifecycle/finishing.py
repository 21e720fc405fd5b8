"""The steps that end a job or speak of it, which the intake, the submitter, the watcher and
the keeper all take: fail it, fail it at its deadline, tell its requester privately."""

from __future__ import annotations

import logging

from bot.jobs import texts
from bot.jobs.kinds import registered
from bot.jobs.lifecycle.context import Context
from bot.jobs.store import Job, JobState

log = logging.getLogger(__name__)


async def fail(
    ctx: Context,
    job: Job,
    reason: str,
    *,
    from_states: tuple[JobState, ...] | None = None,
    give_back: bool = True,
) -> Job:
    states = from_states or tuple(
        s for s in JobState if s not in (JobState.DELIVERED, JobState.FAILED)
    )
    # Read before the failure is stored: the store forgets it with the job's end.
    follow_up = await ctx.whispers.take(job.id, job.label)
    failed = await ctx.store.transition(
        job.id, states, JobState.FAILED, give_back=give_back, paid=not give_back, error=reason
    )
    if failed is None:
        return await ctx.store.get(job.id) or job
    await ctx.leases.release(job.id)
    log.warning("failed %s: %s", failed.label, reason)
    if not registered(failed.kind):
        # Its words are its kind's: there is nothing to say it with.
        return failed
    try:
        await ctx.publisher.announce_failure(failed, reason, follow_up)
    except Exception:
        log.exception("could not announce the failure of %s", failed.label)
    return failed


async def expire(ctx: Context, job: Job) -> None:
    # Taken by the API (with no answer since, or done but never posted): it may well have
    # been paid, so it stays counted against every limit (a failure before is given back).
    paid = job.state in (JobState.SUBMITTING, JobState.SUBMITTED, JobState.SUCCEEDED)
    reason = texts.expired(job.state, ctx.settings.deadline_seconds)
    await fail(ctx, job, reason, from_states=(job.state,), give_back=not paid)


async def tell(ctx: Context, job: Job, text: str) -> None:
    await ctx.whispers.tell(job.id, job.label, text)
