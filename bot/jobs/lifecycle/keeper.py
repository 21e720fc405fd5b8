"""Recovery and upkeep: the unfinished jobs taken up at start (with leases: those no live
process holds), then a keeper task that renews the leases, takes over orphans and sweeps for
this process's stranded jobs."""

from __future__ import annotations

import asyncio
import logging
import time

from bot.jobs import texts
from bot.jobs.kinds import registered
from bot.jobs.lifecycle.context import Context
from bot.jobs.lifecycle.finishing import expire, fail
from bot.jobs.lifecycle.intake import Intake
from bot.jobs.lifecycle.watcher import Watcher
from bot.jobs.store import Job, JobState

log = logging.getLogger(__name__)


class Keeper:
    def __init__(self, ctx: Context, intake: Intake, watcher: Watcher) -> None:
        self._ctx = ctx
        self._intake = intake
        self._watcher = watcher
        # Jobs resumed past their deadline, kept while they are unfinished.
        self._late: set[str] = set()

    async def recover(self) -> int:
        """Resume every job that is neither delivered nor failed (with leases: that no live
        process works on, and from then on every third of a lease); returns how many. From then
        on, the stranded jobs of this process are looked for too (see sweep)."""
        ctx = self._ctx
        if ctx.leases.enabled:
            await self._listen()
            taken = await self._resume(await ctx.store.orphans())
        else:
            taken = await self._resume(await ctx.store.unfinished())
        ctx.background.spawn(self._keep_jobs(), name=f"keep-{ctx.leases.owner}")
        return taken

    async def _listen(self) -> None:
        await self._ctx.leases.listen(self._watcher.rung, self._watcher.ring_all)

    async def _resume(self, jobs: list[Job]) -> int:
        ctx = self._ctx
        taken = 0
        for job in jobs:
            if (
                ctx.closing
                or self._watcher.watching(job.id)
                or job.callback_secret in ctx.in_hand
                or not await ctx.leases.claim(job.id)
            ):
                continue
            taken += 1
            log.info("recovering %s state=%s", job.label, job.state)
            self._take_up(job)
        return taken

    def _take_up(self, job: Job) -> None:
        if not registered(job.kind):
            self._ctx.in_hand.add(job.callback_secret)
            self._ctx.background.spawn(self._end_unknown(job))
            return
        if job.state is JobState.REQUESTED:
            # In hand from now, not from when the spawned start first runs.
            self._ctx.in_hand.add(job.callback_secret)
            # Recovered work was accepted before: it queues whatever the queue's bound.
            self._ctx.background.spawn(self._intake.start(job, queue_bound=False))
        else:
            self._watcher.watch(job)

    async def _keep_jobs(self) -> None:
        """Every third of a lease (with leases) or every sweep interval (without): leases
        renewed, orphans taken over, then the sweep. A failure is logged and tried again at the
        next turn."""
        ctx = self._ctx
        ttl = ctx.leases.ttl
        while not ctx.closing:
            await asyncio.sleep(ctx.settings.sweep_seconds if ttl is None else ttl / 3)
            if ttl is not None:
                try:
                    await self._listen()
                    for job_id in await ctx.leases.renew():
                        # Taken over while this process did not renew in time (it hung).
                        log.warning("lease lost job=%s; another process has it", job_id)
                        self._watcher.cancel(job_id)
                    await self._resume(await ctx.store.orphans())
                except Exception:
                    log.exception("renewing job leases failed; trying again")
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping for stranded jobs failed; trying again")
            try:
                # On a SQLite file, the log copied into the file off the loop (its own try: a
                # failed checkpoint must not keep stranded jobs from the sweep).
                await ctx.store.database.checkpoint()
            except Exception:
                log.exception("checkpointing the SQLite file failed; trying again")

    async def sweep(self) -> None:
        """Move on every unfinished job of this process (with leases: that it holds) that
        nothing works on: its watcher crashed, or its start raised. One past its deadline fails
        as at the deadline; any other is resumed as at a start, so a watcher that keeps
        crashing is started again once a sweep, never in a loop. Follow-ups past their
        interaction's life, and images given to /imagine past IMAGE_INPUT_DAYS, are deleted
        too."""
        ctx = self._ctx
        forgotten = await ctx.store.sweep_follow_ups()
        if forgotten:
            log.info("deleted %d expired follow-ups", forgotten)
        images = await ctx.inputs.sweep()
        if images:
            log.info("deleted %d expired image inputs", images)
        if ctx.leases.enabled:
            held = ctx.leases.held()
            keys = await ctx.store.unfinished_keys(held) if held else []
            # A lease on a job that has ended, which no watcher will give back (one crashed
            # right after claiming it), would be renewed until the process stops.
            for job_id in held - {job_id for job_id, _ in keys}:
                if not self._watcher.watching(job_id):
                    await ctx.leases.release(job_id)
        else:
            keys = await ctx.store.unfinished_keys()
        self._late &= {job_id for job_id, _ in keys}
        for job_id, secret in keys:
            if ctx.closing:
                return
            if not self.stranded(job_id, secret):
                continue
            # The list may be stale: a job that ended meanwhile must not be started again.
            job = await ctx.store.get(job_id)
            if job is None or job.finished or not self.stranded(job.id, job.callback_secret):
                continue
            if job.deadline_at <= time.time() and job.id in self._late:
                # Resumed once past its deadline, stranded again: it fails. In the background,
                # as the failure's post must not hold up the lease renewals of this loop.
                self._late.discard(job.id)
                ctx.in_hand.add(job.callback_secret)
                ctx.background.spawn(self._expire_in_hand(job))
                continue
            if job.deadline_at <= time.time():
                # One look first, as a restart would: a paid result may be there to post.
                self._late.add(job.id)
            log.warning("stranded %s state=%s; resumed", job.label, job.state)
            self._take_up(job)

    async def _end_unknown(self, job: Job) -> None:
        """A job of a kind no plug-in registers here cannot be sent, watched or posted: it ends
        once, given back if it was never sent."""
        try:
            log.warning("%s is of kind %r, which is not registered here", job.label, job.kind)
            await fail(
                self._ctx,
                job,
                texts.unknown_kind(),
                from_states=(job.state,),
                give_back=job.state is JobState.REQUESTED,
            )
        finally:
            self._ctx.in_hand.discard(job.callback_secret)

    async def _expire_in_hand(self, job: Job) -> None:
        try:
            await expire(self._ctx, job)
        finally:
            self._ctx.in_hand.discard(job.callback_secret)

    def stranded(self, job_id: str, secret: str) -> bool:
        return not self._watcher.watching(job_id) and secret not in self._ctx.in_hand
