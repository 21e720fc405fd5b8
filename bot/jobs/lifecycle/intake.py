"""Taking a request: the refusals it may meet first (shutting down, a full queue, the door,
the limits), the job's INSERT with its dedupe, another server's grid, a grid the bot never saw,
then the status line before the submitter takes over. Also the grid re-posts of `/upscale`."""

from __future__ import annotations

import logging
from typing import Any

from bot.jobs import grids, texts
from bot.jobs.admission import OverQuota, TooManyJobs
from bot.jobs.job import UPLOAD_LIMIT
from bot.jobs.kinds import Product, kind_named, registered
from bot.jobs.kinds.imagine import IMAGINE
from bot.jobs.lifecycle.context import Context
from bot.jobs.lifecycle.finishing import fail
from bot.jobs.lifecycle.submitter import Submitter
from bot.jobs.reposts import Reposts, RepostsUsed
from bot.jobs.store import DuplicateJob, Job
from bot.jobs.types import DeliveryError, FollowUp, NotServed, Outcome, Refused, UnknownTask

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, ctx: Context, submitter: Submitter) -> None:
        self._ctx = ctx
        self._submitter = submitter
        self._reposts = Reposts(ctx.store.engine, ctx.settings.grid_reposts_per_hour)

    async def request_on_grid(
        self,
        kind: str,
        *,
        parent_task_id: str,
        image_index: int | None,
        requester_id: int,
        guild_id: int | None,
        channel_id: int,
        grid_message_id: int | None,
        role_ids: tuple[int, ...] = (),
        follow_up: FollowUp | None = None,
        upload_limit: int | None = None,
    ) -> Outcome:
        """Start what a grid's button asks for (an upscale, V<n>, 🔄) of ``parent_task_id``, or
        return the job that makes it a duplicate: the live upscale of that image, the running
        variation of that image, the running re-roll of that grid.

        Raises Refused when the bot cannot take it (shutting down, queue full, user limit, a
        daily allowance or the credit budget, V2/V3 before the index base of variations is
        known); ``role_ids`` are the requester's roles there. A grid the bot made in another
        server is unknown here (UnknownTask), and a job another server asked for is not
        returned: the click is refused without naming it. ``upload_limit`` is what the clicked
        channel takes in bytes (the interaction's), kept with a video job for its post.
        """
        button = kind_named(kind).button
        if button is None:
            raise ValueError(f"{kind} is not started from a button")
        self.check_open()
        not_now = await self._not_sendable_yet(kind, image_index)
        if not_now is not None:
            raise not_now
        store = self._ctx.store
        grid = await store.by_upstream(parent_task_id)
        if grid is not None and grid.guild_id != guild_id:
            # Another server's grid: unknown here, whatever the button or task id says. A task
            # that does not exist meets the door and the limits first: so does this one, or
            # their refusals would tell the two apart.
            over = await self.preview(
                kind, requester_id=requester_id, guild_id=guild_id, role_ids=role_ids
            )
            log.info("%s refused: task=%s is another server's", kind, parent_task_id)
            raise over or UnknownTask()
        if grid is None and kind_named(kind).own_parent_only:
            # Made from what only the bot's own job knows (an upscale's image URL).
            log.info("%s refused: task=%s is not one the bot made here", kind, parent_task_id)
            raise UnknownTask()
        if grid is not None and not _made(grid, button.under):
            # A button (or /upscale) asked of the wrong kind of result, e.g. U1 of an upscale:
            # the API would be paid for it, for nothing.
            log.info("%s refused: task=%s is a %s result", kind, parent_task_id, grid.kind)
            raise Refused(texts.not_a(button.under))
        if grid is not None:
            problem = await kind_named(kind).grid_problem(self._ctx.call(None), grid, image_index)
            if problem is not None:
                log.info("%s refused: %s cannot be made again", kind, grid.label)
                raise Refused(problem)
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
                options=self._options(kind, grid, upload_limit),
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
            live = await store.live_twin(kind, parent_task_id, image_index)
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
        self._ctx.whispers.remember(job.id, follow_up)
        return Outcome(await self.start(job, foreign=grid is None), created=True)

    def _options(
        self, kind: str, parent: Job | None, upload_limit: int | None
    ) -> dict[str, str] | None:
        """A new job's options: its kind's, from its parent's; a video's post needs the
        channel's upload limit, which the interaction tells and the guild may not."""
        if parent is None:
            return None
        options = kind_named(kind).options_of(self._ctx.call(None), parent)
        if kind_named(kind).product is Product.VIDEO and upload_limit is not None:
            options = {**options, UPLOAD_LIMIT: str(upload_limit)}
        return options

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
        self.check_open()
        job = await self._create(
            role_ids,
            kind=IMAGINE.name,
            prompt=prompt,
            options=options,
            requester_id=requester_id,
            guild_id=guild_id,
            channel_id=channel_id,
            status_message_id=status_message_id,
            follow_up=follow_up,
        )
        log.info("imagine requested %s user=%s", job.label, requester_id)
        self._ctx.whispers.remember(job.id, follow_up)
        return Outcome(await self.start(job), created=True)

    async def preview(
        self, kind: str, *, requester_id: int, guild_id: int | None, role_ids: tuple[int, ...]
    ) -> Refused | None:
        """The refusal a request would meet now (shutting down, queue full, a limit), None if
        none: lets /imagine refuse privately before it posts its visible status line."""
        spending = self._ctx.spending
        try:
            self.check_open()
            quota = await spending.quota(kind, requester_id, guild_id, role_ids)
        except Refused as refused:
            return refused
        over = await self._ctx.store.refusal(
            requester_id=requester_id,
            guild_id=guild_id,
            max_unfinished=self._ctx.settings.max_jobs_per_user,
            quota=quota,
        )
        return None if over is None else spending.refusal(over, kind, requester_id)

    def check_open(self) -> None:
        ctx = self._ctx
        if ctx.closing:
            raise Refused("the bot is restarting; try again in a minute")
        if ctx.throttle.full():
            raise Refused(texts.queue_full(ctx.throttle.waiting))

    async def _create(self, role_ids: tuple[int, ...], **fields: Any) -> Job:
        """Store the job, in hand (see Context.in_hand): the caller's `start` lets go of it."""
        ctx = self._ctx
        kind, requester_id = fields["kind"], fields["requester_id"]
        secret = ctx.secrets.new()
        ctx.in_hand.add(secret)
        try:
            job = await ctx.store.create(
                deadline_seconds=ctx.settings.deadline_seconds,
                max_unfinished=ctx.settings.max_jobs_per_user,
                quota=await ctx.spending.quota(kind, requester_id, fields["guild_id"], role_ids),
                callback_secret=secret,
                lease=ctx.leases.terms(),
                **fields,
            )
        except (TooManyJobs, OverQuota) as exc:
            ctx.in_hand.discard(secret)
            raise ctx.spending.refusal(exc, kind, requester_id) from None
        except BaseException:
            ctx.in_hand.discard(secret)
            raise
        ctx.leases.created(job.id)
        return job

    async def start(self, job: Job, *, queue_bound: bool = True, foreign: bool = False) -> Job:
        """Check, announce and submit a job in hand. Should this raise, the job stays with
        this process (and its lease): the next sweep resumes it or fails it at its deadline."""
        self._ctx.in_hand.add(job.callback_secret)
        try:
            return await self.begin(job, queue_bound=queue_bound, foreign=foreign)
        finally:
            self._ctx.in_hand.discard(job.callback_secret)

    async def begin(self, job: Job, *, queue_bound: bool, foreign: bool) -> Job:
        ctx = self._ctx
        if not await self._submitter.still_served(job):
            # Recovered in a server closed since: no status line, no look-up, nothing paid.
            return await ctx.store.get(job.id) or job
        if foreign or kind_named(job.kind).checks_parent(job):
            # A grid this bot never saw; or a re-roll stored before record-info told its grid's
            # prompt (a crash in between, or a grid whose own job never learned it): a
            # generation of nothing is not sent.
            job = await self._check_foreign_grid(job)
            if job.finished:
                return job
        if job.status_message_id is None:
            try:
                message_id = await ctx.publisher.post_status(job)
            except DeliveryError as exc:
                return await fail(ctx, job, exc.reason)
            if message_id is not None:
                job = await ctx.store.update(job.id, status_message_id=message_id)
        return await self._submitter.submit(job, queue_bound=queue_bound)

    async def _check_foreign_grid(self, job: Job) -> Job:
        """A grid this bot never saw (``/upscale`` of a task made elsewhere, its buttons): make
        sure it exists, and learn its prompt and options, before paying."""
        assert job.parent_task_id is not None
        task = await grids.finished_grid(self._ctx.client, job.parent_task_id)
        if isinstance(task, str):
            return await fail(self._ctx, job, task)
        problem = kind_named(job.kind).parent_problem(job, task)
        if problem is not None:
            return await fail(self._ctx, job, problem)
        if task.prompt:
            job = await self._ctx.store.update(job.id, prompt=task.prompt, options=task.options)
        return job

    async def _not_sendable_yet(self, kind: str, image_index: int | None) -> Refused | None:
        """The refusal of a kind that cannot be sent yet, by its own rule (V2/V3 while the
        index base of variations is not known)."""
        reason = await kind_named(kind).may_send(self._ctx.call(None), image_index)
        return None if reason is None else Refused(reason, whole=True)

    async def show_grid(
        self, task_id: str, *, requester_id: int, guild_id: int | None, channel_id: int
    ) -> str | None:
        """Post the four images of a finished generation with its buttons, within the member's
        re-posts of the hour here; the error if not. Raises NotServed where the bot spends
        nothing (a record-info call and four downloads are the owner's too)."""
        ctx = self._ctx
        await ctx.spending.server(guild_id)
        try:
            # Counted whatever it shows: a task that does not exist costs a look-up, a post
            # made to fail four downloads, and another server's task must cost the same.
            await self._reposts.take(requester_id, guild_id)
        except RepostsUsed as used:
            log.info("grid re-post refused: %d an hour used user=%s", used.limit, requester_id)
            return texts.reposts_used(used.limit, used.next_at)
        grid = await ctx.store.by_upstream(task_id)
        if grid is not None and grid.guild_id != guild_id:
            log.info("grid re-post refused: task=%s is another server's", task_id)
            return texts.unknown_task()
        return await grids.show_grid(
            ctx.client,
            ctx.publisher,
            task_id,
            requester_id=requester_id,
            guild_id=guild_id,
            channel_id=channel_id,
        )

    async def made_for(self, task_id: str, guild_id: int | None) -> int | None:
        """Whom the bot made the grid (or image) of ``task_id`` for in this server; None for a
        task it did not make here (made elsewhere, or in another server: unknown here)."""
        grid = await self._ctx.store.by_upstream(task_id)
        return grid.requester_id if grid is not None and grid.guild_id == guild_id else None


def _made(parent: Job, product: Product) -> bool:
    """Whether the bot's job ``parent`` made a result of ``product``."""
    return registered(parent.kind) and kind_named(parent.kind).product is product


def _number(image_index: int | None) -> str:
    """The button's number (U2, V2) of an image index, for log lines; "-" for 🔄."""
    return "-" if image_index is None else str(image_index + 1)
