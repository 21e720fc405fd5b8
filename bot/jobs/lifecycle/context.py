"""What every part of the lifecycle shares: the store, the API client, the publisher, the
leases, the settings, the jobs in hand, and the count of steps a shutdown must wait for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.image_inputs import ImageInputs
from bot.jobs.kinds import Call
from bot.jobs.leases import JobLeases
from bot.jobs.spending import Spending
from bot.jobs.store import Job, JobStore
from bot.jobs.throttle import Pace
from bot.jobs.types import CALLBACK_PATH, Publisher, TrackerSettings
from bot.jobs.vary_index import VaryIndex
from bot.jobs.whispers import Whispers
from bot.metrics import Recorder
from bot.midjourney.client import MidjourneyClient
from bot.tasks import BackgroundTasks


@dataclass(eq=False)
class Context:
    store: JobStore
    client: MidjourneyClient
    publisher: Publisher
    # Its callback_base without a trailing slash (the tracker trims it).
    settings: TrackerSettings
    secrets: CallbackSecrets
    # Several processes on one store (PostgreSQL) each work on the jobs they lease.
    leases: JobLeases
    # Daily allowances and the credit budget; without, uses are counted but not limited.
    spending: Spending
    metrics: Recorder
    whispers: Whispers
    throttle: Pace
    vary_index: VaryIndex
    # generateVideoExtend's index base, learnt apart.
    extend_index: VaryIndex
    background: BackgroundTasks
    # The images members gave /imagine, served to the API (bot.jobs.image_inputs).
    inputs: ImageInputs
    # Told each time the API took a paid request (the low-credit watch reads credits then).
    on_submitted: Callable[[], None] | None = None
    # Jobs a start of this process has in hand, from before their INSERT to the end of
    # `Intake.start`: by callback secret, which is known before the store makes the job's id.
    # The sweep leaves them, and watched ones, alone.
    in_hand: set[str] = field(default_factory=set, init=False)
    closing: bool = field(default=False, init=False)
    # Steps that must not be cut off by a shutdown: a paid call awaiting its answer, a post.
    busy_steps: int = field(default=0, init=False)
    # Set while no such step runs: what a shutdown's grace waits for.
    quiet: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.quiet.set()

    @property
    def callbacks_enabled(self) -> bool:
        return self.settings.callback_base is not None

    def callback_url(self, job: Job) -> str | None:
        base = self.settings.callback_base
        if base is None:
            return None
        return f"{base}{CALLBACK_PATH}{job.callback_secret}"

    def call(self, job: Job | None, second: int | None = None) -> Call:
        """What a kind's paid call (or its check before one, with no job yet) may use."""
        return Call(
            self.client,
            None if job is None else self.callback_url(job),
            self.settings.watermark,
            self.vary_index,
            second,
            self.inputs,
            self.settings.callback_base,
            self.settings.video_quality,
            self.settings.video_batch,
            self.extend_index,
        )

    async def notify(self, job_id: str) -> None:
        """Ring the doorbell of a job another process may hold."""
        await self.leases.notify(job_id)

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        self.busy_steps += 1
        self.quiet.clear()
        try:
            yield
        finally:
            self.busy_steps -= 1
            if self.busy_steps == 0:
                self.quiet.set()
