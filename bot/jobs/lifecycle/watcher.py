"""Waiting for a paid task: one watcher task per submitted job, woken by its doorbell (a
callback, a NOTIFY) or by the poll policy; it asks record-info, settles the job, posts the
result, and fails the job at its deadline."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bot.jobs.kinds import kind_named
from bot.jobs.lifecycle.context import Context
from bot.jobs.lifecycle.finishing import expire, fail
from bot.jobs.store import Job, JobState
from bot.jobs.types import CallbackVerdict, DeliveryError
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.midjourney.models import Task, TaskStatus

log = logging.getLogger(__name__)

# How long record-info may not know a task the API took before a 404 means it does not exist.
NOT_FOUND_GRACE_SECONDS = 120.0


class Watcher:
    def __init__(self, ctx: Context, *, send: Callable[[Job], Coroutine[Any, Any, Job]]) -> None:
        self._ctx = ctx
        # Sends a job found ``requested`` (the intake's start, unbounded and not foreign).
        self._send = send
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._doorbells: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Jobs whose watcher was started by their paid call's answer: its first look waits.
        self._fresh: set[str] = set()
        # Rings (NOTIFY) for jobs of this process not watched yet: their paid call's answer is
        # not in, and the vendor's callback went to another process.
        self._rung_early: set[str] = set()
        # When every job was last rung (a LISTEN connection made again after a gap).
        self._rung_all_at = 0.0

    def watching(self, job_id: str) -> bool:
        return job_id in self._watchers

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._watchers.values())

    def cancel(self, job_id: str) -> None:
        watcher = self._watchers.get(job_id)
        if watcher is not None:
            watcher.cancel()

    def clear(self) -> None:
        self._watchers.clear()

    async def on_callback(self, secret: str, task_id: str | None) -> CallbackVerdict:
        """Record a callback for the job owning ``secret``.

        The body is not trusted: it only rings the doorbell, record-info decides.
        """
        ctx = self._ctx
        if not ctx.secrets.made_here(secret):
            return CallbackVerdict.UNKNOWN
        job = await ctx.store.by_secret(secret)
        if job is None:
            return CallbackVerdict.UNKNOWN
        if job.finished:
            # A replay, or the vendor's retry: accepted so that it stops, nothing more.
            log.info("callback for finished %s ignored", job.label)
            return CallbackVerdict.ACCEPTED
        if task_id is not None and job.upstream_task_id not in (None, task_id):
            return CallbackVerdict.MISMATCH
        if job.upstream_task_id is None and task_id is not None:
            # The API call may have succeeded right before a crash: the callback tells us the id.
            job = await ctx.store.update(job.id, upstream_task_id=task_id)
        log.info("callback received %s state=%s", job.label, job.state)
        if not ctx.leases.holds(job.id):
            # Another process may be working on it: its doorbell rings through the store. If
            # that process is gone, the watcher started below takes the job over.
            await ctx.notify(job.id)
        self.ring(job)
        return CallbackVerdict.ACCEPTED

    def watch(self, job: Job) -> None:
        if self._ctx.closing or job.id in self._watchers:
            return
        self._doorbells.setdefault(job.id, asyncio.Event())
        task = asyncio.create_task(
            self._watch_loop(job.id), name=f"watch-{self._ctx.leases.owner}-{job.id}"
        )
        self._watchers[job.id] = task
        task.add_done_callback(functools.partial(self._forget, job.id))

    def answered(self, job: Job) -> None:
        """A job whose paid call was just answered, its task id stored. With callbacks on, a
        watcher started for it now does not ask record-info at once: a task the API took a
        moment ago is not done, and its callback (or, if none comes, the first poll) wakes the
        watcher. One already watching (a job taken over meanwhile) is rung to see the task id,
        and one rung before it was watched, or answered past its deadline, looks at once."""
        rung_early = job.id in self._rung_early or job.created_at <= self._rung_all_at
        self._rung_early.discard(job.id)
        # Past its deadline, one look before it expires: the task may be done and paid.
        quiet = not rung_early and job.deadline_at > time.time()
        if quiet and self._ctx.callbacks_enabled and job.id not in self._watchers:
            self._fresh.add(job.id)
            self.watch(job)
            if job.id not in self._watchers:
                self._fresh.discard(job.id)
            return
        self.ring(job)

    def _forget(self, job_id: str, _watcher: asyncio.Task[None]) -> None:
        self._fresh.discard(job_id)
        self._rung_early.discard(job_id)
        self._watchers.pop(job_id, None)
        self._doorbells.pop(job_id, None)
        self._locks.pop(job_id, None)
        self._ctx.whispers.forget(job_id)

    def ring(self, job: Job) -> None:
        self.watch(job)
        doorbell = self._doorbells.get(job.id)
        # None while shutting down: the callback is saved, and the next start resumes the job.
        if doorbell is not None:
            doorbell.set()

    def ring_all(self) -> None:
        self._rung_all_at = time.time()
        for doorbell in self._doorbells.values():
            doorbell.set()

    def rung(self, job_id: str) -> None:
        doorbell = self._doorbells.get(job_id)
        if doorbell is not None:
            doorbell.set()
        elif self._ctx.leases.holds(job_id):
            # Its watcher starts once the paid call's answer is stored: it must look at once.
            self._rung_early.add(job_id)

    async def _watch_loop(self, job_id: str) -> None:
        ctx = self._ctx
        poll = ctx.settings.poll
        doorbell = self._doorbells[job_id]
        delay: float | None = None
        started = time.monotonic()
        # Not asked about until rung (``answered``), once: a ring before the first look (a
        # callback that beat the watcher to its start) is a reason to ask.
        quiet_start = job_id in self._fresh
        self._fresh.discard(job_id)
        # The job as this watcher's own move just wrote it (the UPDATE's RETURNING): no need to
        # read it again.
        written: Job | None = None
        try:
            if not await ctx.leases.claim(job_id):
                return
            while True:
                # Cleared before the job is read, not before the wait: a ring while it is read
                # or checked is kept, and the wait below returns at once.
                rung = doorbell.is_set()
                doorbell.clear()
                job = written if written is not None else await ctx.store.get(job_id)
                written = None
                if job is None or job.finished:
                    await ctx.leases.release(job_id)
                    return
                if job.state is JobState.REQUESTED:
                    # Put back after a 429 by a process that hung past its lease while this one
                    # took the job over: whoever holds a requested job sends it.
                    # Shielded: a watcher cancelled (its lease lost) must not cut a paid call off
                    # from its answer, or the answer from its write.
                    sending = ctx.background.spawn(self._send(job))
                    job = await asyncio.shield(sending)
                    if job.state is JobState.REQUESTED:
                        # Shutting down, or handed over in turn: left to the next holder.
                        return
                    continue
                if job.state is JobState.SUCCEEDED:
                    if await self._deliver(job):
                        return
                    # A failed post that may succeed later: ring again after a pause.
                    delay = poll.max_interval
                else:
                    quiet = quiet_start and not rung and job.deadline_at > time.time()
                    quiet_start = False
                    moved = False if quiet else await self._check(job)
                    if isinstance(moved, Job):
                        written = moved
                    if moved:
                        continue
                    delay = poll.next_delay(
                        time.monotonic() - started, delay, callbacks=ctx.callbacks_enabled
                    )
                remaining = job.deadline_at - time.time()
                if remaining <= 0:
                    await expire(ctx, job)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(doorbell.wait(), timeout=min(delay, remaining))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Its lease is kept: the job is still this process's, and its next sweep (not
            # this one at once, which would spin on a fault that lasts) resumes it.
            log.exception("watcher of job=%s crashed; the next sweep resumes it", job_id)

    async def _check(self, job: Job) -> Job | bool:
        """Ask record-info; False while the job is not done, else True when it moved on
        (succeeded or failed), or the job as this watcher moved it."""
        if job.upstream_task_id is None:
            return False
        try:
            task = await self._ctx.client.record_info(job.upstream_task_id)
        except ApiError as exc:
            if exc.code == 404 and await self._long_taken(job):
                await fail(self._ctx, job, exc.user_message)
                return True
            log.info("record-info refused %s code=%s; will retry", job.label, exc.code)
            return False
        except ApiUnreachable as exc:
            log.info("record-info unavailable %s: %s; will retry", job.label, exc)
            return False
        return await self._settle(job, task)

    async def _long_taken(self, job: Job) -> bool:
        """Whether the API took the job's request longer ago than a 404's grace. Counted from
        the API's answer, not the job's creation: a job can wait minutes for its turn (a low
        pace, a backlog after a restart, 429s) and its brand-new task is then just as unknown
        for a while."""
        taken = await self._ctx.store.taken_at(job.id)
        # Not stamped (a job that counts against nothing, or whose answer was lost and whose
        # task id came by callback): its last change, at the earliest its move to submitting
        # just before its request went out.
        since = job.updated_at if taken is None else taken
        return time.time() - since > NOT_FOUND_GRACE_SECONDS

    async def _settle(self, job: Job, task: Task) -> Job | bool:
        if task.status is TaskStatus.PENDING:
            return False
        if task.status is TaskStatus.FAILED:
            reason = (
                f"Midjourney could not finish it: {task.error}"
                if task.error
                else ("Midjourney could not finish it")
            )
            await fail(self._ctx, job, reason)
            return True
        urls = kind_named(job.kind).keeps(task.result_urls, job)
        fields: dict[str, Any] = {"result_urls": urls, "completed_at": time.time()}
        if job.prompt is None and task.prompt:
            fields["prompt"] = task.prompt
        done = await self._ctx.store.transition(
            job.id,
            (JobState.SUBMITTING, JobState.SUBMITTED),
            JobState.SUCCEEDED,
            paid=True,
            **fields,
        )
        if done is None:
            # Moved on by another step meanwhile: to be read again.
            return True
        log.info("succeeded %s results=%d", done.label, len(urls))
        return done

    async def _deliver(self, job: Job) -> bool:
        """Post the result once; True when the job is finished (delivered or given up)."""
        ctx = self._ctx
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock, ctx.busy():
            for attempt in range(1, ctx.settings.delivery_retries + 1):
                if not await ctx.leases.claim(job.id):
                    # Taken over while this process did not renew in time: the holder posts.
                    return True
                # Read under the lease, not before it: a holder that posted the result and let
                # the lease go in between has moved the job on, and a read from before the
                # claim would post it a second time.
                current = await ctx.store.get(job.id)
                if current is None or current.state is not JobState.SUCCEEDED:
                    if current is None or current.finished:
                        await ctx.leases.release(job.id)
                    return True
                job = current
                try:
                    message_id = await ctx.publisher.deliver(job)
                except DeliveryError as exc:
                    log.warning("delivery failed %s attempt=%d: %s", job.label, attempt, exc)
                    if not exc.retry:
                        # Paid for, so it stays counted: a post made to fail (an admin taking
                        # the bot's permissions away after the click) must not pass the caps.
                        await fail(
                            ctx, job, exc.reason, from_states=(JobState.SUCCEEDED,), give_back=False
                        )
                        return True
                    await asyncio.sleep(min(2**attempt, 10))
                    continue
                delivered = await ctx.store.transition(
                    job.id,
                    (JobState.SUCCEEDED,),
                    JobState.DELIVERED,
                    result_message_id=message_id,
                    delivered_at=time.time(),
                )
                # Given back either way: moved on meanwhile, the job has ended too.
                await ctx.leases.release(job.id)
                if delivered is not None:
                    log.info("delivered %s message=%s", delivered.label, message_id)
                    ctx.metrics.delivered(job.kind, job.completed_at, delivered.delivered_at)
                    await ctx.publisher.tidy_up(delivered)
                return True
            return False
