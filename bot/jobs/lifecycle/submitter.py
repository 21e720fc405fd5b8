"""The paid call: a job's turn at the pace, the request, what its answer means (a task id kept
until stored, a refusal put back and sent again, an outcome nobody knows), and nothing sent
twice."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from bot.jobs import texts
from bot.jobs.image_inputs import InputsGone
from bot.jobs.kinds import kind_named
from bot.jobs.lifecycle.context import Context
from bot.jobs.lifecycle.finishing import fail, tell
from bot.jobs.servers import FRESH_SECONDS
from bot.jobs.store import Job, JobState
from bot.jobs.throttle import QueueFull
from bot.jobs.types import NotServed
from bot.jobs.vary_index import BaseUnknown, TryOther
from bot.midjourney.errors import ApiError, ApiUnreachable

log = logging.getLogger(__name__)

# The least time a job's deadline must leave when it is sent, for its result to be posted.
SEND_MARGIN_SECONDS = 60.0


class Submitter:
    def __init__(
        self, ctx: Context, *, watch: Callable[[Job], None], answered: Callable[[Job], None]
    ) -> None:
        self._ctx = ctx
        # The watcher's: a job whose answer is in (or may be) is waited for from then on.
        self._watch = watch
        self._answered = answered
        # A job whose deadline is nearer than this when its turn comes is not sent.
        self._send_margin = min(SEND_MARGIN_SECONDS, ctx.settings.deadline_seconds / 4)

    async def still_served(self, job: Job) -> bool:
        """Whether a job not paid for yet may still be: one that waited (a queue, a restart)
        since the door let it in asks again, as the owner may have closed its server since.
        A closed one fails here, given back."""
        if time.time() - job.created_at <= FRESH_SECONDS:
            return True
        try:
            await self._ctx.spending.server(job.guild_id)
        except NotServed as refused:
            await fail(self._ctx, job, refused.reason, from_states=(JobState.REQUESTED,))
            return False
        return True

    async def submit(self, job: Job, *, queue_bound: bool = True) -> Job:
        """Send the paid request once it is this job's turn.

        A refusal that says the request was not taken (429, no connection) puts the job back to
        ``requested`` and tries again after a pause, a bounded number of times. Any answer after
        which the task may exist anyway is never resent: the job waits for its callback or poll.
        """
        ctx = self._ctx
        throttle = ctx.throttle
        resent = 0
        # V1/V4's other value, once its safe one was refused as out of range (vary_index).
        second: int | None = None
        while True:
            if throttle.busy():
                if queue_bound and throttle.full():
                    return await fail(ctx, job, texts.queue_full(throttle.waiting))
                ahead = throttle.waiting
                log.info("submission queued %s ahead=%d", job.label, ahead)
                # Not awaited: the place in the queue is taken in this same step, below.
                ctx.background.spawn(tell(ctx, job, texts.queued(ahead)))
            try:
                turn = await throttle.acquire(bounded=queue_bound)
            except QueueFull:
                return await fail(ctx, job, texts.queue_full(throttle.waiting))
            async with ctx.busy():
                try:
                    if ctx.closing:
                        # Left as requested: the next start submits it.
                        return job
                    if not await self.still_served(job):
                        return await ctx.store.get(job.id) or job
                    if time.time() > job.deadline_at - self._send_margin:
                        # Paid now, its result would come after the deadline and never be
                        # posted: it waited too long (a backlog, 429s, a long outage).
                        return await fail(
                            ctx, job, texts.waited_too_long(), from_states=(JobState.REQUESTED,)
                        )
                    claimed = await ctx.store.transition(
                        job.id, (JobState.REQUESTED,), JobState.SUBMITTING
                    )
                    if claimed is None:
                        # Moved on meanwhile (a callback told its task): still this process's
                        # to see through, so it is watched rather than left leased and idle.
                        current = await ctx.store.get(job.id) or job
                        if not current.finished:
                            self._watch(current)
                        return current
                    job = claimed
                    try:
                        sent = await kind_named(job.kind).send(ctx.call(job, second), job)
                        # Until it is stored, this line is the only trace of a paid task.
                        log.info(
                            "paid call answered job=%s task=%s kind=%s",
                            job.id,
                            sent.task_id,
                            job.kind,
                        )
                    finally:
                        await turn.done()
                    job = await self._submitted(job, sent.task_id)
                    if sent.teaches is not None:
                        await (sent.learner or ctx.vary_index).learn(sent.teaches, job.label)
                    return job
                except TryOther as other:
                    # The refusal took nothing: ``requested`` again while it waits its turn, so a
                    # crash meanwhile resubmits it rather than waiting for a task that never was.
                    second = other.value
                    # An accepted click: its second value queues whatever the queue's bound.
                    queue_bound = False
                    put_back = await self._put_back(job)
                    if put_back is None:
                        return job
                    job = put_back
                    continue
                except ValueError as exc:
                    # The client refused the job's own values before sending anything.
                    log.error("submit impossible %s: %s", job.label, exc)
                    return await fail(
                        ctx,
                        job,
                        "the bot could not make that request",
                        from_states=(JobState.SUBMITTING,),
                    )
                except InputsGone as gone:
                    # Checked before the request was made: nothing was sent.
                    log.info("submit impossible %s: its images are gone", job.label)
                    return await fail(ctx, job, gone.reason, from_states=(JobState.SUBMITTING,))
                except BaseUnknown as unknown:
                    # Only a job stored before the base was forgotten (a changed setting) gets
                    # here: nothing was sent.
                    return await fail(ctx, job, unknown.reason, from_states=(JobState.SUBMITTING,))
                except (ApiError, ApiUnreachable) as exc:
                    pause = ctx.settings.retry.resend_after(exc, resent)
                    if pause is not None:
                        resent += 1
                        log.warning("submit refused %s: %s; again in %.0f s", job.label, exc, pause)
                        throttle.pause(pause)
                        put_back = await self._put_back(job)
                        if put_back is None:
                            return job
                        job = put_back
                        continue
                    if exc.maybe_done:
                        return await self._await_unknown(job, exc)
                    log.warning("submit refused %s: %s", job.label, exc)
                    return await fail(
                        ctx, job, exc.user_message, from_states=(JobState.SUBMITTING,)
                    )
                finally:
                    await turn.done()

    async def _put_back(self, job: Job) -> Job | None:
        """Back to ``requested`` after an answer that proves nothing was taken, to be sent
        again by this process; None when another one holds the job now (this one hung past its
        lease, and that one adopted it while it was ``submitting``): the holder sends it, woken
        at once."""
        back = functools.partial(
            self._ctx.store.transition, job.id, (JobState.SUBMITTING,), JobState.REQUESTED
        )
        # Lost, a job nothing was paid for would wait as "maybe paid" until its deadline.
        job = await self._until_stored(job, job.label, "a refused request", back) or job
        if await self._ctx.leases.claim(job.id):
            return job
        log.warning("lease lost while submitting %s; its holder sends it", job.label)
        await self._ctx.notify(job.id)
        return None

    async def _await_unknown(self, job: Job, exc: ApiError | ApiUnreachable) -> Job:
        # The request may have been taken (and paid for): resending could charge twice, so the
        # job waits for a callback within its deadline instead.
        log.warning("submit outcome unknown %s: %s", job.label, exc)
        minutes = max(1, round((job.deadline_at - time.time()) / 60))
        await tell(self._ctx, job, texts.maybe_started(exc.user_message, minutes))
        self._watch(job)
        return job

    async def _submitted(self, job: Job, task_id: str) -> Job:
        ctx = self._ctx
        job = await self._keep(job, task_id)
        log.info("submitted %s kind=%s", job.label, job.kind)
        if ctx.on_submitted is not None:
            ctx.on_submitted()
        if kind_named(job.kind).button is not None:
            ctx.background.spawn(ctx.publisher.mark_grid(job))
        if not ctx.leases.holds(job.id):
            # Taken over while the store was away: the holder hears of the task id now rather
            # than at its next poll.
            with contextlib.suppress(Exception):
                await ctx.notify(job.id)
        # Not only watched: this process may have taken itself over meanwhile (a lease run out
        # during the outage), and that watcher, rung by ``answered``, has yet to see the task id.
        self._answered(job)
        return job

    async def _keep(self, job: Job, task_id: str) -> Job:
        """Store a paid task's id: lost, the task is paid for and never posted."""
        label = dataclasses.replace(job, upstream_task_id=task_id).label
        stored = await self._until_stored(
            job, label, "the paid task", functools.partial(self._store_task_id, job, task_id)
        )
        return stored or job

    async def _until_stored(
        self, job: Job, label: str, what: str, write: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """``write`` tried again while the store fails (a restart, a failover, a pool checkout
        timeout, a lock) until the job's deadline, for a write that must not be lost. The job
        stays this process's meanwhile (its lease is renewed apart)."""
        failures = 0
        while True:
            try:
                return await write()
            except Exception as exc:
                failures += 1
                pause = self._ctx.settings.retry.keep_after(failures)
                if time.time() + pause >= job.deadline_at:
                    log.error(
                        "gave up storing %s of %s at the deadline: %s", what, label, _why(exc)
                    )
                    return None
                log.warning(
                    "could not store %s of %s: %s; again in %.1f s",
                    what,
                    label,
                    _why(exc),
                    pause,
                )
                await asyncio.sleep(pause)

    async def _store_task_id(self, job: Job, task_id: str) -> Job:
        # Tried again after a failure whose outcome is unknown (a connection cut during the
        # commit): every step holds whether or not the previous try was written.
        store = self._ctx.store
        submitted = await store.transition(
            job.id, (JobState.SUBMITTING,), JobState.SUBMITTED, paid=True, upstream_task_id=task_id
        )
        if submitted is not None:
            return submitted
        # A callback raced ahead of us and already moved the job on, or the last try was kept.
        current = await store.get(job.id)
        if current is not None and current.upstream_task_id is None:
            current = await store.update(job.id, upstream_task_id=task_id)
        return current or job


def _why(exc: Exception) -> str:
    """A store error in one line: the driver's first line, not SQLAlchemy's statement dump."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__
