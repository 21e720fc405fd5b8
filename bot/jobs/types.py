"""What the job lifecycle shares with the parts around it: the tracker's answers and errors,
what it needs from the Discord side (Publisher), and how often it polls."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bot.jobs import texts
from bot.jobs.store import FollowUp as FollowUp
from bot.jobs.store import Job, JobState
from bot.midjourney.models import Task

CALLBACK_PATH = "/callbacks/midjourney/"


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
class Outcome:
    """What became of a request, for the cog to tell the person who asked."""

    job: Job
    created: bool

    @property
    def failed(self) -> bool:
        return self.job.state is JobState.FAILED
