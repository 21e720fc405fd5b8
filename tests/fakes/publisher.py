"""A stand-in for the Discord side of the tracker (its Publisher port), recording every call.

The tracker's own tests use it to watch the lifecycle without a Discord; the real
DiscordPublisher is exercised end to end against the Discord double.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.jobs.store import Job
from bot.jobs.types import FollowUp
from bot.midjourney.models import Task


@dataclass
class RecordingPublisher:
    statuses: list[str] = field(default_factory=list)
    delivered: list[Job] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)
    tidied: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    whispered: list[str] = field(default_factory=list)
    # The token of the follow-up each whisper went to.
    whispered_to: list[str] = field(default_factory=list)
    grids: list[Task] = field(default_factory=list)
    # Errors the next deliver() calls raise, in order (any exception: a bug of the post too).
    delivery_errors: list[Exception] = field(default_factory=list)
    # When set, deliver() waits for it: a post that is under way.
    delivery_gate: asyncio.Event | None = None
    delivering: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def post_status(self, job: Job) -> int | None:
        self.statuses.append(job.id)
        await self._notify()
        return next(self._ids)

    async def mark_grid(self, job: Job) -> None:
        self.marked.append(job.id)
        await self._notify()

    async def deliver(self, job: Job) -> int:
        if self.delivery_errors:
            raise self.delivery_errors.pop(0)
        if self.delivery_gate is not None:
            self.delivering += 1
            await self._notify()
            await self.delivery_gate.wait()
        self.delivered.append(job)
        await self._notify()
        return next(self._ids)

    async def tidy_up(self, job: Job) -> None:
        self.tidied.append(job.id)
        await self._notify()

    async def announce_failure(self, job: Job, reason: str, follow_up: FollowUp | None) -> None:
        self.failures.append((job.id, reason))
        if follow_up is not None:
            await self.whisper(follow_up, reason)
        await self._notify()

    async def whisper(self, follow_up: FollowUp, text: str) -> None:
        self.whispered.append(text)
        self.whispered_to.append(follow_up.token)
        await self._notify()

    async def post_grid(
        self, task: Task, *, requester_id: int, guild_id: int | None, channel_id: int
    ) -> int:
        self.grids.append(task)
        return next(self._ids)

    def follow_up(self) -> FollowUp:
        """A follow-up alive for a minute; what it is told lands in ``whispered``."""
        return FollowUp(1, f"token-{next(self._ids)}", time.time() + 60)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Until ``predicate()`` holds; raises TimeoutError otherwise."""

        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(until(), timeout)
