"""What the job lifecycle shares with the parts around it: the tracker's answers and errors,
what it needs from the Discord side (Publisher), how often it polls, how it tries again, and
the numbers it is built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from bot.jobs import texts
from bot.jobs.store import FollowUp as FollowUp
from bot.jobs.store import Job, JobState
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.midjourney.models import Task

CALLBACK_PATH = "/callbacks/midjourney/"
# How often a process without leases (SQLite) looks for its stranded jobs; with leases, it
# looks at each renewal. Also the least time between two restarts of a watcher that crashes.
SWEEP_SECONDS = 10.0


class CallbackVerdict(StrEnum):
    """What became of a callback, for the listener's answer."""

    ACCEPTED = "accepted"
    # No job has this secret.
    UNKNOWN = "unknown"
    # The job's secret, but the body names another task than the job's own: ignored.
    MISMATCH = "mismatch"


class Refused(Exception):
    """The request was not taken at all (nothing stored, nothing paid); ``reason`` says why:
    a clause the caller builds its sentence around, or with ``whole`` a sentence of its own."""

    def __init__(self, reason: str, *, whole: bool = False) -> None:
        self.reason = reason
        self.whole = whole
        super().__init__(reason)

    def sentence(self, lead: str) -> str:
        """The refusal for the requester: ``lead`` is what was not done ("Not started")."""
        return f"❌ {self.reason}." if self.whole else f"❌ {lead}: {self.reason}."


class NotServed(Refused):
    """Refused because the bot spends nothing where it was asked: a server its owner has not
    allowed, or outside servers. Never answered with another job (a duplicate's), only this."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, whole=True)


class UnknownTask(Refused):
    """A task this bot made in another server: refused in the very words a task the API does
    not know fails with (no lead, no full stop), so that the two cannot be told apart."""

    def __init__(self) -> None:
        super().__init__(texts.unknown_task(), whole=True)

    def sentence(self, lead: str) -> str:
        return f"❌ {self.reason}"


class DeliveryError(Exception):
    """The result could not be posted; ``reason`` is for the requester, ``retry`` says if later
    attempts may succeed (a Discord outage) or not (a result image that is not an image)."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        self.reason = reason
        self.retry = retry
        super().__init__(reason)


class Publisher(Protocol):
    """What the tracker needs from the Discord side (bot.delivery implements it)."""

    async def post_status(self, job: Job) -> int | None: ...

    async def deliver(self, job: Job) -> int: ...

    async def mark_grid(self, job: Job) -> None: ...

    async def tidy_up(self, job: Job) -> None: ...

    async def announce_failure(self, job: Job, reason: str, follow_up: FollowUp | None) -> None: ...

    async def whisper(self, follow_up: FollowUp, text: str) -> None:
        """Tell the requester ``text`` privately, through their interaction's follow-up."""
        ...

    async def post_grid(
        self, task: Task, *, requester_id: int, guild_id: int | None, channel_id: int
    ) -> int: ...


@dataclass(frozen=True)
class PollPolicy:
    """How often record-info is asked while a job waits.

    With callbacks the first poll waits long enough for a callback to arrive; without them it
    polls every ``interval`` for a while, then backs off to ``max_interval``.
    """

    first_with_callback: float = 90.0
    interval: float = 5.0
    steady_for: float = 60.0
    factor: float = 1.5
    max_interval: float = 30.0

    def next_delay(self, waited: float, previous: float | None, *, callbacks: bool) -> float:
        if previous is None:
            return self.first_with_callback if callbacks else self.interval
        if waited < self.steady_for:
            return self.interval
        return min(self.max_interval, previous * self.factor)


@dataclass(frozen=True)
class RetryPolicy:
    """How the tracker tries again: a submission the API refused without taking it, and the
    write that keeps what must not be lost while the store fails."""

    # Pauses before resending a submission the API refused without taking it (429, no
    # connection); then the job fails.
    submit_delays: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)
    # Pauses between tries of the write that keeps a paid task's id while the store fails (a
    # restart, a failover, a lock); the last one repeats until the job's deadline.
    keep_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)

    def resend_after(self, exc: ApiError | ApiUnreachable, resent: int) -> float | None:
        """The pause before sending again a submission refused with ``exc`` that was sent
        again ``resent`` times already; None when it is not sent again: the refusal may hide a
        task (or took nothing but is final), or the tries are used up."""
        if not exc.retryable or resent >= len(self.submit_delays):
            return None
        return self.submit_delays[resent]

    def keep_after(self, failures: int) -> float:
        """The pause after the ``failures``-th failed try (from 1) of a write that must not be
        lost."""
        if not self.keep_delays:
            return 0.0
        return self.keep_delays[min(failures, len(self.keep_delays)) - 1]


@dataclass(frozen=True)
class TrackerSettings:
    """The numbers (and the one address) a tracker is built with."""

    # PUBLIC_URL: where the API calls back; None polls only.
    callback_base: str | None
    deadline_seconds: float
    watermark: str | None = None
    # MJ_VARY_INDEX_BASE: how generateVary counts images, when set rather than learned.
    vary_index_base: int | None = None
    # MJ_EXTEND_INDEX_BASE: how generateVideoExtend counts the videos of a batch.
    extend_index_base: int | None = None
    # VIDEO_QUALITY and VIDEO_BATCH_SIZE: what a 🎬 click asks for.
    video_quality: str = "sd"
    video_batch: int = 1
    max_jobs_per_user: int | None = None
    grid_reposts_per_hour: int | None = None
    # IMAGE_INPUT_DAYS: how long the images members gave /imagine are served to the API.
    image_input_days: float = 7
    # Tries of a post that may succeed later, before it waits for the next ring.
    delivery_retries: int = 3
    poll: PollPolicy = field(default_factory=PollPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sweep_seconds: float = SWEEP_SECONDS


@dataclass(frozen=True)
class Outcome:
    """What became of a request, for the cog to tell the person who asked."""

    job: Job
    created: bool

    @property
    def failed(self) -> bool:
        return self.job.state is JobState.FAILED
