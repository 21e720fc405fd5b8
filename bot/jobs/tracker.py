"""The job lifecycle: submit → wait (callback or poll) → confirm → deliver, and recovery at start.

The tracker knows nothing of discord.py: it stores plain ids and speaks to Discord through a
:class:`Publisher`. Every state change goes through the store's conditional transitions, so a
callback, a poll and a restart racing for one job leave exactly one outcome.

`Tracker` is the one face of the lifecycle; its parts are in ``bot.jobs.lifecycle``: the
intake (requests), the submitter (the paid call), the watcher (callbacks, polls, posts), the
keeper (recovery, leases, the sweep), and the finishing steps they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Callable

from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.coordination import Coordination
from bot.jobs.image_inputs import ImageInputs, KeptImage
from bot.jobs.leases import JobLeases
from bot.jobs.lifecycle.context import Context
from bot.jobs.lifecycle.intake import Intake
from bot.jobs.lifecycle.keeper import Keeper
from bot.jobs.lifecycle.submitter import Submitter
from bot.jobs.lifecycle.watcher import Watcher
from bot.jobs.spending import UNLIMITED, Spending
from bot.jobs.store import Job, JobStore
from bot.jobs.throttle import SUBMIT_WINDOW_SECONDS, VENDOR_RATE, Pace, SubmitThrottle
from bot.jobs.types import (
    CallbackVerdict,
    FollowUp,
    Outcome,
    Publisher,
    Refused,
    TrackerSettings,
)
from bot.jobs.vary_index import VaryIndex, extend_index
from bot.jobs.whispers import Whispers
from bot.metrics import Metrics, recorder
from bot.midjourney.client import MidjourneyClient
from bot.tasks import BackgroundTasks

log = logging.getLogger(__name__)


class Tracker:
    def __init__(
        self,
        store: JobStore,
        client: MidjourneyClient,
        publisher: Publisher,
        settings: TrackerSettings,
        *,
        callback_secrets: CallbackSecrets | None = None,
        throttle: Pace | None = None,
        spending: Spending | None = None,
        metrics: Metrics | None = None,
        on_submitted: Callable[[], None] | None = None,
        lease_seconds: float | None = None,
        lease_owner: str | None = None,
    ) -> None:
        base = settings.callback_base
        coordination = Coordination(store.database)
        self._ctx = Context(
            store=store,
            client=client,
            publisher=publisher,
            settings=dataclasses.replace(
                settings, callback_base=base.rstrip("/") if base else None
            ),
            # Without a shared key, only this tracker's own jobs are known: a restarted bot
            # needs the same key to recognise the callbacks of jobs made before (bot.app
            # derives it).
            secrets=callback_secrets or CallbackSecrets(secrets.token_bytes(32)),
            leases=JobLeases(coordination, lease_seconds, lease_owner),
            spending=spending or Spending(store.ledger, UNLIMITED),
            metrics=recorder(metrics),
            whispers=Whispers(store, publisher.whisper),
            throttle=throttle
            or SubmitThrottle(VENDOR_RATE, SUBMIT_WINDOW_SECONDS, max_waiting=100),
            vary_index=VaryIndex(coordination, settings.vary_index_base),
            extend_index=extend_index(coordination, settings.extend_index_base),
            background=BackgroundTasks(log),
            inputs=ImageInputs(store.engine, settings.image_input_days),
            on_submitted=on_submitted,
        )
        self._watcher = Watcher(self._ctx, send=self._send_requested)
        submitter = Submitter(self._ctx, watch=self._watcher.watch, answered=self._watcher.answered)
        self._intake = Intake(self._ctx, submitter)
        self._keeper = Keeper(self._ctx, self._intake, self._watcher)

    @property
    def store(self) -> JobStore:
        return self._ctx.store

    @property
    def lease_owner(self) -> str:
        """Who this process is in ``leases`` (its log lines and task names say so too)."""
        return self._ctx.leases.owner

    @property
    def vary_index(self) -> VaryIndex:
        return self._ctx.vary_index

    @property
    def extend_index(self) -> VaryIndex:
        return self._ctx.extend_index

    @property
    def callbacks_enabled(self) -> bool:
        return self._ctx.callbacks_enabled

    def callback_url(self, job: Job) -> str | None:
        return self._ctx.callback_url(job)

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
        """See Intake.request_on_grid: a grid's button, or the job that makes it a duplicate."""
        return await self._intake.request_on_grid(
            kind,
            parent_task_id=parent_task_id,
            image_index=image_index,
            requester_id=requester_id,
            guild_id=guild_id,
            channel_id=channel_id,
            grid_message_id=grid_message_id,
            role_ids=role_ids,
            follow_up=follow_up,
            upload_limit=upload_limit,
        )

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
        return await self._intake.request_imagine(
            prompt=prompt,
            options=options,
            requester_id=requester_id,
            guild_id=guild_id,
            channel_id=channel_id,
            status_message_id=status_message_id,
            role_ids=role_ids,
            follow_up=follow_up,
        )

    async def image_reference(
        self,
        *,
        guild_id: int | None,
        requester_id: int,
        content_type: str,
        data: bytes,
        link: str,
    ) -> str:
        """What a job's options name an image checked for /imagine by: kept by the bot and
        served to the API while the bot has a public address, else its Discord ``link``."""
        if not self.callbacks_enabled:
            return link
        return await self._ctx.inputs.keep(
            guild_id=guild_id, requester_id=requester_id, content_type=content_type, data=data
        )

    async def forget_images(self, references: tuple[str, ...]) -> None:
        """Delete the kept images of a request that was not taken."""
        await self._ctx.inputs.forget(references)

    async def image_input(self, name: str) -> KeptImage | None:
        """The kept image the listener serves as ``name``, None when unknown or expired."""
        return await self._ctx.inputs.read(name)

    async def preview(
        self, kind: str, *, requester_id: int, guild_id: int | None, role_ids: tuple[int, ...]
    ) -> Refused | None:
        """The refusal a request would meet now (shutting down, queue full, a limit), None if
        none: lets /imagine refuse privately before it posts its visible status line."""
        return await self._intake.preview(
            kind, requester_id=requester_id, guild_id=guild_id, role_ids=role_ids
        )

    async def show_grid(
        self, task_id: str, *, requester_id: int, guild_id: int | None, channel_id: int
    ) -> str | None:
        """See Intake.show_grid: a grid re-posted with its buttons; the error if not."""
        return await self._intake.show_grid(
            task_id, requester_id=requester_id, guild_id=guild_id, channel_id=channel_id
        )

    async def made_for(self, task_id: str, guild_id: int | None) -> int | None:
        """Whom the bot made the grid (or image) of ``task_id`` for in this server; None for a
        task it did not make here (made elsewhere, or in another server: unknown here)."""
        return await self._intake.made_for(task_id, guild_id)

    async def on_callback(self, secret: str, task_id: str | None) -> CallbackVerdict:
        """Record a callback for the job owning ``secret``; record-info decides, not its body."""
        return await self._watcher.on_callback(secret, task_id)

    async def recover(self) -> int:
        """See Keeper.recover: every unfinished job this process may take up; how many."""
        return await self._keeper.recover()

    async def sweep(self) -> None:
        """See Keeper.sweep: this process's stranded jobs moved on."""
        await self._keeper.sweep()

    async def close(self, grace: float = 0.0) -> None:
        """Stop taking work, give paid calls and posts under way up to ``grace`` seconds to
        finish, then stop every watcher; unfinished jobs resume at the next start."""
        ctx = self._ctx
        ctx.closing = True
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.quiet.wait(), timeout=grace)
        await ctx.background.close(*self._watcher.tasks())
        self._watcher.clear()
        await ctx.leases.close()

    async def wait_idle(self) -> None:
        """Until no job of this process is being watched (tests and shutdown use it)."""
        while watchers := self._watcher.tasks():
            await asyncio.gather(*watchers, return_exceptions=True)

    def _stranded(self, job_id: str, secret: str) -> bool:
        return self._keeper.stranded(job_id, secret)

    async def _send_requested(self, job: Job) -> Job:
        # A watcher that finds its job requested sends it, whatever the queue's bound.
        return await self._intake.begin(job, queue_bound=False, foreign=False)
