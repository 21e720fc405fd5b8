"""The job lifecycle: submit → wait (callback or poll) → confirm → deliver, and recovery at start.

The tracker knows nothing of discord.py: it stores plain ids and speaks to Discord through a
:class:`Publisher`. Every state change goes through the store's conditional transitions, so a
callback, a poll and a restart racing for one job leave exactly one outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bot.jobs import grids, texts
from bot.jobs.admission import OverQuota, TooManyJobs
from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.coordination import Coordination
from bot.jobs.leases import JobLeases
from bot.jobs.reposts import Reposts, RepostsUsed
from bot.jobs.servers import FRESH_SECONDS
from bot.jobs.spending import UNLIMITED, Spending
from bot.jobs.store import DuplicateJob, Job, JobKind, JobState, JobStore
from bot.jobs.tables import GRID_BUTTON_KINDS
from bot.jobs.throttle import Pace, QueueFull, SubmitThrottle
from bot.jobs.types import (
    CALLBACK_PATH,
    CallbackVerdict,
    DeliveryError,
    FollowUp,
    NotServed,
    Outcome,
    PollPolicy,
    Publisher,
    Refused,
    UnknownTask,
)
from bot.jobs.vary_index import BaseUnknown, Sent, TryOther, VaryIndex
from bot.jobs.whispers import Whispers
from bot.metrics import Metrics, recorder
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.midjourney.models import GRID_SIZE, Task, TaskStatus
from bot.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# The vendor's documented pace: about 20 new tasks per 10 s per account.
SUBMIT_WINDOW_SECONDS = 10.0
VENDOR_RATE = 20
# Task types whose grid a re-roll (a text-to-image generate of its prompt) makes again.
REROLLABLE = ("mj_txt2img",)
# The least time a job's deadline must leave when it is sent, for its result to be posted.
SEND_MARGIN_SECONDS = 60.0
# Pauses before resending a submission the API refused without taking it (429, no connection).
SUBMIT_RETRY_DELAYS = (2.0, 5.0, 10.0, 20.0)
# How long record-info may not know a task the API took before a 404 means it does not exist.
NOT_FOUND_GRACE_SECONDS = 120.0
# Pauses between tries of the write that keeps a paid task's id while the store fails (a
# restart, a failover, a lock); the last one repeats until the job's deadline.
KEEP_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
# How often a process without leases (SQLite) looks for its stranded jobs; with leases, it
# looks at each renewal. Also the least time between two restarts of a watcher that crashes.
SWEEP_SECONDS = 10.0


class Tracker:
    def __init__(
        self,
        store: JobStore,
        client: MidjourneyClient,
        publisher: Publisher,
        *,
        callback_secrets: CallbackSecrets | None = None,
        callback_base: str | None,
        deadline_seconds: float,
        watermark: str | None = None,
        vary_index_base: int | None = None,
        poll: PollPolicy | None = None,
        delivery_retries: int = 3,
        throttle: Pace | None = None,
        submit_retry_delays: tuple[float, ...] = SUBMIT_RETRY_DELAYS,
        keep_retry_delays: tuple[float, ...] = KEEP_RETRY_DELAYS,
        max_jobs_per_user: int | None = None,
        metrics: Metrics | None = None,
        on_submitted: Callable[[], None] | None = None,
        spending: Spending | None = None,
        lease_seconds: float | None = None,
        lease_owner: str | None = None,
        grid_reposts_per_hour: int | None = None,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self._store = store
        self._reposts = Reposts(store.engine, grid_reposts_per_hour)
        # Several processes on one store (PostgreSQL) each work on the jobs they lease.
        coordination = Coordination(store.database)
        self._leases = JobLeases(coordination, lease_seconds, lease_owner)
        # Daily allowances and the credit budget; without, uses are counted but not limited.
        self._spending = spending or Spending(store.ledger, UNLIMITED)
        self._metrics = recorder(metrics)
        # Told each time the API took a paid request (the low-credit watch reads credits then).
        self._on_submitted = on_submitted
        self._client = client
        self._publisher = publisher
        self._callback_base = callback_base.rstrip("/") if callback_base else None
        # Without a shared key, only this tracker's own jobs are known: a restarted bot needs
        # the same key to recognise the callbacks of jobs made before (bot.app derives it).
        self._secrets = callback_secrets or CallbackSecrets(secrets.token_bytes(32))
        self._deadline = deadline_seconds
        self._watermark = watermark
        self._vary_index = VaryIndex(coordination, vary_index_base)
        self._poll = poll or PollPolicy()
        self._delivery_retries = delivery_retries
        self._throttle = throttle or SubmitThrottle(
            VENDOR_RATE, SUBMIT_WINDOW_SECONDS, max_waiting=100
        )
        self._submit_retry_delays = submit_retry_delays
        self._keep_retry_delays = keep_retry_delays
        self._max_jobs_per_user = max_jobs_per_user
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # Jobs a start of this process has in hand, from before their INSERT to the end of
        # `_start`: by callback secret, which is known before the store makes the job's id. The
        # sweep leaves them, and watched ones, alone.
        self._in_hand: set[str] = set()
        self._late: set[str] = set()
        # A job whose deadline is nearer than this when its turn comes is not sent.
        self._send_margin = min(SEND_MARGIN_SECONDS, deadline_seconds / 4)
        self._sweep_seconds = sweep_seconds
        self._doorbells: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._whispers = Whispers(store, publisher.whisper)
        self._closing = False
        self._background = BackgroundTasks(log)
        # Steps that must not be cut off by a shutdown: a paid call awaiting its answer, a post.
        self._busy_steps = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def store(self) -> JobStore:
        return self._store

    @property
    def lease_owner(self) -> str:
        """Who this process is in ``leases`` (its log lines and task names say so too)."""
        return self._leases.owner

    @property
    def vary_index(self) -> VaryIndex:
        return self._vary_index

    @property
    def callbacks_enabled(self) -> bool:
        return self._callback_base is not None

    def callback_url(self, job: Job) -> str | None:
        if self._callback_base is None:
            return None
        return f"{self._callback_base}{CALLBACK_PATH}{job.callback_secret}"

    # -- requests -------------------------------------------------------------------------

    async def request_on_grid(
        self,
        kind: JobKind,
        *,
        parent_task_id: str,
        image_index: int | None,
        requester_id: int,
        guild_id: int | None,
        channel_id: int,
        grid_message_id: int | None,
        role_ids: tuple[int, ...] = (),
        follow_up: FollowUp | None = None,
    ) -> Outcome:
        """Start what a grid's button asks for (an upscale, V<n>, 🔄) of ``parent_task_id``, or
        return the job that makes it a duplicate: the live upscale of that image, the running
        variation of that image, the running re-roll of that grid.

        Raises Refused when the bot cannot take it (shutting down, queue full, user limit, a
        daily allowance or the credit budget, V2/V3 before the index base of variations is
        known); ``role_ids`` are the requester's roles there. A grid the bot made in another
        server is unknown here (UnknownTask), and a job another server asked for is not
        returned: the click is refused without naming it.
        """
        if kind not in GRID_BUTTON_KINDS:
            raise ValueError(f"{kind} is not started from a grid")
        self._check_open()
        if (
            kind is JobKind.VARY
            and image_index is not None
            and not await self._vary_index.can_send(image_index)
        ):
            raise Refused(texts.vary_base_unknown(image_index + 1), whole=True)
        grid = await self._store.by_upstream(parent_task_id)
        if grid is not None and grid.guild_id != guild_id:
            # Another server's grid: unknown here, whatever the button or task id says. A task
            # that does not exist meets the door and the limits first: so does this one, or
            # their refusals would tell the two apart.
            over = await self.preview(
                kind, requester_id=requester_id, guild_id=guild_id, role_ids=role_ids
            )
            log.info("%s refused: task=%s is another server's", kind, parent_task_id)
            raise over or UnknownTask()
        try:
            job = await self._create(
                role_ids,
                kind=kind,
                parent_task_id=parent_task_id,
                image_index=image_index,
                requester_id=requester_id,
                guild_id=guild_id,
                channel_id=channel_id,
                grid_message_id=grid_message_id,
                prompt=grid.prompt if grid is not None else None,
                options=grid.options if grid is not None else None,
                follow_up=follow_up,
            )
        except DuplicateJob as dup:
            if dup.job.guild_id != guild_id:
                # A grid made outside the bot, asked of in another server too: that job is not
                # this server's to see (its message, its requester), nor paid for again.
                log.info("%s refused: %s is another server's", kind, dup.job.label)
                raise Refused(texts.asked_elsewhere(kind)) from None
            log.info("%s click deduplicated %s image=%s", kind, dup.job.label, _number(image_index))
            return Outcome(dup.job, created=False)
        except NotServed:
            raise
        except Refused:
            # Clicking a button whose job runs is a duplicate, whatever the limit says.
            live = await self._store.live_twin(kind, parent_task_id, image_index)
            if live is not None and live.guild_id == guild_id:
                return Outcome(live, created=False)
            raise
        log.info(
            "%s requested %s parent=%s image=%s user=%s",
            kind,
            job.label,
            parent_task_id,
            _number(image_index),
            requester_id,
        )
        self._whispers.remember(job.id, follow_up)
        return Outcome(await self._start(job, foreign=grid is None), created=True)

    async def request_imagine(
        self,
        *,
        prompt: str,
        options: dict[str, str],
        requester_id: int,
        guild_id: int | None,
        channel_id: int,
        status_message_id: int | None,
        role_ids: tuple[int, ...] = (),
        follow_up: FollowUp | None = None,
    ) -> Outcome:
        """Start one generation; raises Refused like request_on_grid."""
        self._check_open()
        job = await self._create(
            role_ids,
            kind=JobKind.IMAGINE,
            prompt=prompt,
            options=options,
            requester_id=requester_id,
            guild_id=guild_id,
            channel_id=channel_id,
            status_message_id=status_message_id,
            follow_up=follow_up,
        )
        log.info("imagine requested %s user=%s", job.label, requester_id)
        self._whispers.remember(job.id, follow_up)
        return Outcome(await self._start(job), created=True)

    # -- callbacks --------------------------------------------------------------------------

    async def on_callback(self, secret: str, task_id: str | None) -> CallbackVerdict:
        """Record a callback for the job owning ``secret``.

        The body is not trusted: it only rings the doorbell, record-info decides.
        """
        if not self._secrets.made_here(secret):
            return CallbackVerdict.UNKNOWN
        job = await self._store.by_secret(secret)
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
            job = await self._store.update(job.id, upstream_task_id=task_id)
        log.info("callback received %s state=%s", job.label, job.state)
        if not self._leases.holds(job.id):
            # Another process may be working on it: its doorbell rings through the store. If
            # that process is gone, the watcher started below takes the job over.
            await self._leases.notify(job.id)
        self._ring(job)
        return CallbackVerdict.ACCEPTED

    # -- lifecycle --------------------------------------------------------------------------

    async def recover(self) -> int:
        """Resume every job that is neither delivered nor failed (with leases: that no live
        process works on, and from then on every third of a lease); returns how many. From then
        on, the stranded jobs of this process are looked for too (see sweep)."""
        if self._leases.enabled:
            await self._leases.listen(self._rung, self._ring_all)
            taken = await self._resume(await self._store.orphans())
        else:
            taken = await self._resume(await self._store.unfinished())
        self._background.spawn(self._keep_jobs(), name=f"keep-{self._leases.owner}")
        return taken

    async def _resume(self, jobs: list[Job]) -> int:
        taken = 0
        for job in jobs:
            if (
                self._closing
                or job.id in self._watchers
                or job.callback_secret in self._in_hand
                or not await self._leases.claim(job.id)
            ):
                continue
            taken += 1
            log.info("recovering %s state=%s", job.label, job.state)
            self._take_up(job)
        return taken

    def _take_up(self, job: Job) -> None:
        if job.state is JobState.REQUESTED:
            # In hand from now, not from when the spawned start first runs.
            self._in_hand.add(job.callback_secret)
            # Recovered work was accepted before: it queues whatever the queue's bound.
            self._background.spawn(self._start(job, queue_bound=False))
        else:
            self._watch(job)

    async def _keep_jobs(self) -> None:
        """Every third of a lease (with leases) or every sweep interval (without): leases
        renewed, orphans taken over, then the sweep. A failure is logged and tried again at the
        next turn."""
        ttl = self._leases.ttl
        while not self._closing:
            await asyncio.sleep(self._sweep_seconds if ttl is None else ttl / 3)
            if ttl is not None:
                try:
                    await self._leases.listen(self._rung, self._ring_all)
                    for job_id in await self._leases.renew():
                        # Taken over while this process did not renew in time (it hung).
                        log.warning("lease lost job=%s; another process has it", job_id)
                        watcher = self._watchers.get(job_id)
                        if watcher is not None:
                            watcher.cancel()
                    await self._resume(await self._store.orphans())
                except Exception:
                    log.exception("renewing job leases failed; trying again")
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping for stranded jobs failed; trying again")

    async def sweep(self) -> None:
        """Move on every unfinished job of this process (with leases: that it holds) that
        nothing works on: its watcher crashed, or its start raised. One past its deadline fails
        as at the deadline; any other is resumed as at a start, so a watcher that keeps
        crashing is started again once a sweep, never in a loop. Follow-ups past their
        interaction's life are deleted too."""
        forgotten = await self._store.sweep_follow_ups()
        if forgotten:
            log.info("deleted %d expired follow-ups", forgotten)
        if self._leases.enabled:
            held = self._leases.held()
            keys = await self._store.unfinished_keys(held) if held else []
        else:
            keys = await self._store.unfinished_keys()
        # Jobs resumed past their deadline, kept while they are unfinished.
        self._late &= {job_id for job_id, _ in keys}
        for job_id, secret in keys:
            if self._closing:
                return
            if not self._stranded(job_id, secret):
                continue
            # The list may be stale: a job that ended meanwhile must not be started again.
            job = await self._store.get(job_id)
            if job is None or job.finished or not self._stranded(job.id, job.callback_secret):
                continue
            if job.deadline_at <= time.time() and job.id in self._late:
                # Resumed once past its deadline, stranded again: it fails. In the background,
                # as the failure's post must not hold up the lease renewals of this loop.
                self._late.discard(job.id)
                self._in_hand.add(job.callback_secret)
                self._background.spawn(self._expire_in_hand(job))
                continue
            if job.deadline_at <= time.time():
                # One look first, as a restart would: a paid result may be there to post.
                self._late.add(job.id)
            log.warning("stranded %s state=%s; resumed", job.label, job.state)
            self._take_up(job)

    async def _expire_in_hand(self, job: Job) -> None:
        try:
            await self._expire(job)
        finally:
            self._in_hand.discard(job.callback_secret)

    def _stranded(self, job_id: str, secret: str) -> bool:
        return job_id not in self._watchers and secret not in self._in_hand

    def _ring_all(self) -> None:
        for doorbell in self._doorbells.values():
            doorbell.set()

    def _rung(self, job_id: str) -> None:
        doorbell = self._doorbells.get(job_id)
        if doorbell is not None:
            doorbell.set()

    async def preview(
        self, kind: JobKind, *, requester_id: int, guild_id: int | None, role_ids: tuple[int, ...]
    ) -> Refused | None:
        """The refusal a request would meet now (shutting down, queue full, a limit), None if
        none: lets /imagine refuse privately before it posts its visible status line."""
        try:
            self._check_open()
            quota = await self._spending.quota(kind, requester_id, guild_id, role_ids)
        except Refused as refused:
            return refused
        over = await self._store.refusal(
            requester_id=requester_id,
            guild_id=guild_id,
            max_unfinished=self._max_jobs_per_user,
            quota=quota,
        )
        return None if over is None else self._spending.refusal(over, kind, requester_id)

    async def _create(self, role_ids: tuple[int, ...], **fields: Any) -> Job:
        """Store the job, in hand (see _in_hand): the caller's `_start` lets go of it."""
        kind, requester_id = fields["kind"], fields["requester_id"]
        secret = self._secrets.new()
        self._in_hand.add(secret)
        try:
            job = await self._store.create(
                deadline_seconds=self._deadline,
                max_unfinished=self._max_jobs_per_user,
                quota=await self._spending.quota(kind, requester_id, fields["guild_id"], role_ids),
                callback_secret=secret,
                lease=self._leases.terms(),
                **fields,
            )
        except (TooManyJobs, OverQuota) as exc:
            self._in_hand.discard(secret)
            raise self._spending.refusal(exc, kind, requester_id) from None
        except BaseException:
            self._in_hand.discard(secret)
            raise
        self._leases.created(job.id)
        return job

    def _check_open(self) -> None:
        if self._closing:
            raise Refused("the bot is restarting; try again in a minute")
        if self._throttle.full():
            raise Refused(texts.queue_full(self._throttle.waiting))

    async def close(self, grace: float = 0.0) -> None:
        """Stop taking work, give paid calls and posts under way up to ``grace`` seconds to
        finish, then stop every watcher; unfinished jobs resume at the next start."""
        self._closing = True
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), timeout=grace)
        await self._background.close(*self._watchers.values())
        self._watchers.clear()
        await self._leases.close()

    async def wait_idle(self) -> None:
        """Until no job of this process is being watched (tests and shutdown use it)."""
        while self._watchers:
            await asyncio.gather(*list(self._watchers.values()), return_exceptions=True)

    async def _start(self, job: Job, *, queue_bound: bool = True, foreign: bool = False) -> Job:
        """Check, announce and submit a job in hand. Should this raise, the job stays with
        this process (and its lease): the next sweep resumes it or fails it at its deadline."""
        self._in_hand.add(job.callback_secret)
        try:
            return await self._begin(job, queue_bound=queue_bound, foreign=foreign)
        finally:
            self._in_hand.discard(job.callback_secret)

    async def _still_served(self, job: Job) -> bool:
        """Whether a job not paid for yet may still be: one that waited (a queue, a restart)
        since the door let it in asks again, as the owner may have closed its server since.
        A closed one fails here, given back."""
        if time.time() - job.created_at <= FRESH_SECONDS:
            return True
        try:
            await self._spending.server(job.guild_id)
        except NotServed as refused:
            await self._fail(job, refused.reason, from_states=(JobState.REQUESTED,))
            return False
        return True

    async def _begin(self, job: Job, *, queue_bound: bool, foreign: bool) -> Job:
        if not await self._still_served(job):
            # Recovered in a server closed since: no status line, no look-up, nothing paid.
            return await self._store.get(job.id) or job
        if foreign or (job.kind is JobKind.REROLL and not job.prompt):
            # A grid this bot never saw; or a re-roll stored before record-info told its grid's
            # prompt (a crash in between, or a grid whose own job never learned it): a
            # generation of nothing is not sent.
            job = await self._check_foreign_grid(job)
            if job.finished:
                return job
        if job.status_message_id is None:
            try:
                message_id = await self._publisher.post_status(job)
            except DeliveryError as exc:
                return await self._fail(job, exc.reason)
            if message_id is not None:
                job = await self._store.update(job.id, status_message_id=message_id)
        return await self._submit(job, queue_bound=queue_bound)

    @contextlib.asynccontextmanager
    async def _busy(self) -> AsyncIterator[None]:
        self._busy_steps += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._busy_steps -= 1
            if self._busy_steps == 0:
                self._quiet.set()

    async def show_grid(
        self, task_id: str, *, requester_id: int, guild_id: int | None, channel_id: int
    ) -> str | None:
        """Post the four images of a finished generation with its buttons, within the member's
        re-posts of the hour here; the error if not. Raises NotServed where the bot spends
        nothing (a record-info call and four downloads are the owner's too)."""
        await self._spending.server(guild_id)
        try:
            # Counted whatever it shows: a task that does not exist costs a look-up, a post
            # made to fail four downloads, and another server's task must cost the same.
            await self._reposts.take(requester_id, guild_id)
        except RepostsUsed as used:
            log.info("grid re-post refused: %d an hour used user=%s", used.limit, requester_id)
            return texts.reposts_used(used.limit, used.next_at)
        grid = await self._store.by_upstream(task_id)
        if grid is not None and grid.guild_id != guild_id:
            log.info("grid re-post refused: task=%s is another server's", task_id)
            return texts.unknown_task()
        return await grids.show_grid(
            self._client,
            self._publisher,
            task_id,
            requester_id=requester_id,
            guild_id=guild_id,
            channel_id=channel_id,
        )

    async def made_for(self, task_id: str, guild_id: int | None) -> int | None:
        """Whom the bot made the grid (or image) of ``task_id`` for in this server; None for a
        task it did not make here (made elsewhere, or in another server: unknown here)."""
        grid = await self._store.by_upstream(task_id)
        return grid.requester_id if grid is not None and grid.guild_id == guild_id else None

    async def _check_foreign_grid(self, job: Job) -> Job:
        """A grid this bot never saw (``/upscale`` of a task made elsewhere, its buttons): make
        sure it exists, and learn its prompt and options, before paying."""
        assert job.parent_task_id is not None
        task = await grids.finished_grid(self._client, job.parent_task_id)
        if isinstance(task, str):
            return await self._fail(job, task)
        if job.kind is not JobKind.UPSCALE and len(task.result_urls) < GRID_SIZE:
            return await self._fail(job, "that task is not a grid of four images")
        if job.image_index is not None and job.image_index >= len(task.result_urls):
            return await self._fail(job, "that task has no such image")
        if job.kind is JobKind.REROLL and not task.prompt:
            return await self._fail(job, "the API does not say what that grid's prompt was")
        if job.kind is JobKind.REROLL and task.task_type not in (None, *REROLLABLE):
            # Its input images would be lost: a re-roll would be another, paid, picture.
            return await self._fail(
                job, "only grids generated from a text prompt can be re-rolled here"
            )
        if task.prompt:
            job = await self._store.update(job.id, prompt=task.prompt, options=task.options)
        return job

    async def _submit(self, job: Job, *, queue_bound: bool = True) -> Job:
        """Send the paid request once it is this job's turn.

        A refusal that says the request was not taken (429, no connection) puts the job back to
        ``requested`` and tries again after a pause, a bounded number of times. Any answer after
        which the task may exist anyway is never resent: the job waits for its callback or poll.
        """
        retries = iter(self._submit_retry_delays)
        # V1/V4's other value, once its safe one was refused as out of range (vary_index).
        second: int | None = None
        while True:
            if self._throttle.busy():
                if queue_bound and self._throttle.full():
                    return await self._fail(job, texts.queue_full(self._throttle.waiting))
                ahead = self._throttle.waiting
                log.info("submission queued %s ahead=%d", job.label, ahead)
                # Not awaited: the place in the queue is taken in this same step, below.
                self._background.spawn(self._tell(job, texts.queued(ahead)))
            try:
                turn = await self._throttle.acquire(bounded=queue_bound)
            except QueueFull:
                return await self._fail(job, texts.queue_full(self._throttle.waiting))
            async with self._busy():
                try:
                    if self._closing:
                        # Left as requested: the next start submits it.
                        return job
                    if not await self._still_served(job):
                        return await self._store.get(job.id) or job
                    if time.time() > job.deadline_at - self._send_margin:
                        # Paid now, its result would come after the deadline and never be
                        # posted: it waited too long (a backlog, 429s, a long outage).
                        return await self._fail(
                            job, texts.waited_too_long(), from_states=(JobState.REQUESTED,)
                        )
                    claimed = await self._store.transition(
                        job.id, (JobState.REQUESTED,), JobState.SUBMITTING
                    )
                    if claimed is None:
                        # Moved on meanwhile (a callback told its task): still this process's
                        # to see through, so it is watched rather than left leased and idle.
                        current = await self._store.get(job.id) or job
                        if not current.finished:
                            self._watch(current)
                        return current
                    job = claimed
                    try:
                        sent = await self._send(job, second)
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
                        await self._vary_index.learn(sent.teaches, job.label)
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
                    return await self._fail(
                        job,
                        "the bot could not make that request",
                        from_states=(JobState.SUBMITTING,),
                    )
                except BaseUnknown:
                    # Only a job stored before the base was forgotten (a changed setting) gets
                    # here: nothing was sent.
                    return await self._fail(
                        job,
                        texts.vary_base_unknown((job.image_index or 0) + 1),
                        from_states=(JobState.SUBMITTING,),
                    )
                except (ApiError, ApiUnreachable) as exc:
                    pause = next(retries, None) if exc.retryable else None
                    if pause is not None:
                        log.warning("submit refused %s: %s; again in %.0f s", job.label, exc, pause)
                        self._throttle.pause(pause)
                        put_back = await self._put_back(job)
                        if put_back is None:
                            return job
                        job = put_back
                        continue
                    if exc.maybe_done:
                        return await self._await_unknown(job, exc)
                    log.warning("submit refused %s: %s", job.label, exc)
                    return await self._fail(
                        job, exc.user_message, from_states=(JobState.SUBMITTING,)
                    )
                finally:
                    await turn.done()

    async def _put_back(self, job: Job) -> Job | None:
        """Back to ``requested`` after an answer that proves nothing was taken, to be sent
        again by this process; None when another one holds the job now (this one hung past its
        lease, and that one adopted it while it was ``submitting``): the holder sends it, woken
        at once."""
        back = functools.partial(
            self._store.transition, job.id, (JobState.SUBMITTING,), JobState.REQUESTED
        )
        # Lost, a job nothing was paid for would wait as "maybe paid" until its deadline.
        job = await self._until_stored(job, job.label, "a refused request", back) or job
        if await self._leases.claim(job.id):
            return job
        log.warning("lease lost while submitting %s; its holder sends it", job.label)
        await self._leases.notify(job.id)
        return None

    async def _send(self, job: Job, second: int | None) -> Sent:
        if job.kind is JobKind.UPSCALE:
            assert job.parent_task_id is not None and job.image_index is not None
            return Sent(
                await self._client.upscale(
                    job.parent_task_id,
                    job.image_index,
                    watermark=self._watermark,
                    callback_url=self.callback_url(job),
                )
            )
        if job.kind is JobKind.VARY:
            assert job.parent_task_id is not None and job.image_index is not None
            vary = functools.partial(
                self._client.vary,
                job.parent_task_id,
                watermark=self._watermark,
                callback_url=self.callback_url(job),
            )
            return await self._vary_index.send(job.image_index, vary, job.label, second=second)
        return Sent(
            await self._client.generate(
                job.prompt or "",
                speed=job.options.get("speed", "fast"),
                aspect_ratio=job.options.get("aspect_ratio"),
                version=job.options.get("version"),
                callback_url=self.callback_url(job),
            )
        )

    async def _await_unknown(self, job: Job, exc: ApiError | ApiUnreachable) -> Job:
        # The request may have been taken (and paid for): resending could charge twice, so the
        # job waits for a callback within its deadline instead.
        log.warning("submit outcome unknown %s: %s", job.label, exc)
        minutes = max(1, round((job.deadline_at - time.time()) / 60))
        await self._tell(job, texts.maybe_started(exc.user_message, minutes))
        self._watch(job)
        return job

    async def _submitted(self, job: Job, task_id: str) -> Job:
        job = await self._keep(job, task_id)
        log.info("submitted %s kind=%s", job.label, job.kind)
        if self._on_submitted is not None:
            self._on_submitted()
        if job.kind in GRID_BUTTON_KINDS:
            self._background.spawn(self._publisher.mark_grid(job))
        if not self._leases.holds(job.id):
            # Taken over while the store was away: the holder hears of the task id now rather
            # than at its next poll.
            with contextlib.suppress(Exception):
                await self._leases.notify(job.id)
        # Rung, not only watched: this process may have taken itself over meanwhile (a lease
        # run out during the outage), and that watcher has yet to see the task id.
        self._ring(job)
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
        pauses = iter(self._keep_retry_delays)
        pause = 0.0
        while True:
            try:
                return await write()
            except Exception as exc:
                pause = next(pauses, pause)
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
        submitted = await self._store.transition(
            job.id, (JobState.SUBMITTING,), JobState.SUBMITTED, paid=True, upstream_task_id=task_id
        )
        if submitted is not None:
            return submitted
        # A callback raced ahead of us and already moved the job on, or the last try was kept.
        current = await self._store.get(job.id)
        if current is not None and current.upstream_task_id is None:
            current = await self._store.update(job.id, upstream_task_id=task_id)
        return current or job

    def _watch(self, job: Job) -> None:
        if self._closing or job.id in self._watchers:
            return
        self._doorbells.setdefault(job.id, asyncio.Event())
        task = asyncio.create_task(
            self._watch_loop(job.id), name=f"watch-{self._leases.owner}-{job.id}"
        )
        self._watchers[job.id] = task
        task.add_done_callback(functools.partial(self._forget, job.id))

    def _forget(self, job_id: str, _watcher: asyncio.Task[None]) -> None:
        self._watchers.pop(job_id, None)
        self._doorbells.pop(job_id, None)
        self._locks.pop(job_id, None)
        self._whispers.forget(job_id)

    def _ring(self, job: Job) -> None:
        self._watch(job)
        doorbell = self._doorbells.get(job.id)
        # None while shutting down: the callback is saved, and the next start resumes the job.
        if doorbell is not None:
            doorbell.set()

    async def _watch_loop(self, job_id: str) -> None:
        doorbell = self._doorbells[job_id]
        delay: float | None = None
        started = time.monotonic()
        try:
            if not await self._leases.claim(job_id):
                return
            while True:
                job = await self._store.get(job_id)
                if job is None or job.finished:
                    await self._leases.release(job_id)
                    return
                if job.state is JobState.REQUESTED:
                    # Put back after a 429 by a process that hung past its lease while this one
                    # took the job over: whoever holds a requested job sends it.
                    # Shielded: a watcher cancelled (its lease lost) must not cut a paid call off
                    # from its answer, or the answer from its write.
                    sending = self._background.spawn(
                        self._begin(job, queue_bound=False, foreign=False)
                    )
                    job = await asyncio.shield(sending)
                    if job.state is JobState.REQUESTED:
                        # Shutting down, or handed over in turn: left to the next holder.
                        return
                    continue
                if job.state is JobState.SUCCEEDED:
                    if await self._deliver(job):
                        return
                    # A failed post that may succeed later: ring again after a pause.
                    delay = self._poll.max_interval
                else:
                    if await self._check(job):
                        continue
                    delay = self._poll.next_delay(
                        time.monotonic() - started, delay, callbacks=self.callbacks_enabled
                    )
                remaining = job.deadline_at - time.time()
                if remaining <= 0:
                    await self._expire(job)
                    return
                doorbell.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(doorbell.wait(), timeout=min(delay, remaining))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Its lease is kept: the job is still this process's, and its next sweep (not
            # this one at once, which would spin on a fault that lasts) resumes it.
            log.exception("watcher of job=%s crashed; the next sweep resumes it", job_id)

    async def _check(self, job: Job) -> bool:
        """Ask record-info; True when the job moved on (succeeded or failed)."""
        if job.upstream_task_id is None:
            return False
        try:
            task = await self._client.record_info(job.upstream_task_id)
        except ApiError as exc:
            if exc.code == 404 and await self._long_taken(job):
                await self._fail(job, exc.user_message)
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
        taken = await self._store.taken_at(job.id)
        # Not stamped (a job that counts against nothing, or whose answer was lost and whose
        # task id came by callback): its last change, at the earliest its move to submitting
        # just before its request went out.
        since = job.updated_at if taken is None else taken
        return time.time() - since > NOT_FOUND_GRACE_SECONDS

    async def _settle(self, job: Job, task: Task) -> bool:
        if task.status is TaskStatus.PENDING:
            return False
        if task.status is TaskStatus.FAILED:
            reason = (
                f"Midjourney could not finish it: {task.error}"
                if task.error
                else ("Midjourney could not finish it")
            )
            await self._fail(job, reason)
            return True
        urls = task.result_urls
        if job.kind is JobKind.UPSCALE:
            urls = urls[:1]
        fields: dict[str, Any] = {"result_urls": urls, "completed_at": time.time()}
        if job.prompt is None and task.prompt:
            fields["prompt"] = task.prompt
        done = await self._store.transition(
            job.id,
            (JobState.SUBMITTING, JobState.SUBMITTED),
            JobState.SUCCEEDED,
            paid=True,
            **fields,
        )
        if done is not None:
            log.info("succeeded %s results=%d", done.label, len(urls))
        return True

    async def _deliver(self, job: Job) -> bool:
        """Post the result once; True when the job is finished (delivered or given up)."""
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock, self._busy():
            current = await self._store.get(job.id)
            if current is None or current.state is not JobState.SUCCEEDED:
                return True
            job = current
            for attempt in range(1, self._delivery_retries + 1):
                if not await self._leases.claim(job.id):
                    # Taken over while this process did not renew in time: the holder posts.
                    return True
                try:
                    message_id = await self._publisher.deliver(job)
                except DeliveryError as exc:
                    log.warning("delivery failed %s attempt=%d: %s", job.label, attempt, exc)
                    if not exc.retry:
                        # Paid for, so it stays counted: a post made to fail (an admin taking
                        # the bot's permissions away after the click) must not pass the caps.
                        await self._fail(
                            job, exc.reason, from_states=(JobState.SUCCEEDED,), give_back=False
                        )
                        return True
                    await asyncio.sleep(min(2**attempt, 10))
                    continue
                delivered = await self._store.transition(
                    job.id,
                    (JobState.SUCCEEDED,),
                    JobState.DELIVERED,
                    result_message_id=message_id,
                    delivered_at=time.time(),
                )
                if delivered is not None:
                    await self._leases.release(job.id)
                    log.info("delivered %s message=%s", delivered.label, message_id)
                    self._metrics.delivered(job.kind, job.completed_at, delivered.delivered_at)
                    await self._publisher.tidy_up(delivered)
                return True
            return False

    async def _expire(self, job: Job) -> None:
        # Taken by the API (with no answer since, or done but never posted): it may well have
        # been paid, so it stays counted against every limit (a failure before is given back).
        paid = job.state in (JobState.SUBMITTING, JobState.SUBMITTED, JobState.SUCCEEDED)
        reason = texts.expired(job.state, self._deadline)
        await self._fail(job, reason, from_states=(job.state,), give_back=not paid)

    async def _fail(
        self,
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
        follow_up = await self._whispers.take(job.id, job.label)
        failed = await self._store.transition(
            job.id, states, JobState.FAILED, give_back=give_back, paid=not give_back, error=reason
        )
        if failed is None:
            return await self._store.get(job.id) or job
        await self._leases.release(job.id)
        log.warning("failed %s: %s", failed.label, reason)
        try:
            await self._publisher.announce_failure(failed, reason, follow_up)
        except Exception:
            log.exception("could not announce the failure of %s", failed.label)
        return failed

    async def _tell(self, job: Job, text: str) -> None:
        await self._whispers.tell(job.id, job.label, text)


def _why(exc: Exception) -> str:
    """A store error in one line: the driver's first line, not SQLAlchemy's statement dump."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def _number(image_index: int | None) -> str:
    """The button's number (U2, V2) of an image index, for log lines; "-" for 🔄."""
    return "-" if image_index is None else str(image_index + 1)
