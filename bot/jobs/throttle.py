"""Paces new paid submissions to the vendor's rate, in arrival order, with a bounded queue.

The vendor allows about 20 new tasks per 10 s per account and answers the excess with 429
rather than queueing it; waiting here costs nothing, while a 429 costs a retry and a delay.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

# The vendor's documented pace: about 20 new tasks per 10 s per account.
SUBMIT_WINDOW_SECONDS = 10.0
VENDOR_RATE = 20


class QueueFull(Exception):
    """More submissions are waiting than the queue holds."""


class PaceTurn(Protocol):
    """One submission's place in the pace: it counts from when it was granted, as in flight,
    until ``done()`` (its answer came back, or it was not sent), then for ``per`` seconds more.
    A second ``done()`` does nothing."""

    async def done(self) -> None: ...


class Pace(Protocol):
    """What the tracker needs of a pacer: this process' one (SubmitThrottle) or the one shared
    by every process on a PostgreSQL store (bot.jobs.pace.SharedPace)."""

    @property
    def waiting(self) -> int: ...

    def busy(self) -> bool: ...

    def full(self) -> bool: ...

    def pause(self, seconds: float) -> None: ...

    async def acquire(self, *, bounded: bool = True) -> PaceTurn: ...


class Turn:
    """A turn of this process' SubmitThrottle."""

    def __init__(self, throttle: SubmitThrottle) -> None:
        self._throttle: SubmitThrottle | None = throttle

    async def done(self) -> None:
        if self._throttle is not None:
            self._throttle._done()
            self._throttle = None


class SubmitThrottle:
    """At most ``rate`` submissions per ``per`` seconds at the vendor's side, first come first
    served.

    The vendor counts a request when it arrives, which is at the latest when its answer comes
    back: a turn therefore counts from its grant until its answer, and for ``per`` seconds after
    that. Counted from the grant alone, a request sent late (its job written first, a slow
    connection) and one sent early a window later reached the vendor within less than ``per``.
    ``clock`` and ``sleep`` are injectable so the pacing can be checked without waiting.
    """

    def __init__(
        self,
        rate: int,
        per: float,
        *,
        max_waiting: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 1 or per <= 0 or max_waiting < 0:
            raise ValueError("rate and per must be positive, max_waiting not negative")
        self._rate = rate
        self._per = per
        self._max_waiting = max_waiting
        self._clock = clock
        self._sleep = sleep
        # When each answer of the last ``per`` seconds came back, oldest first.
        self._answered: deque[float] = deque()
        self._in_flight = 0
        self._landed = asyncio.Event()
        self._paused_until = 0.0
        self._waiting = 0
        # asyncio.Lock wakes its waiters in the order they came: the queue is fair.
        self._turn = asyncio.Lock()

    @property
    def waiting(self) -> int:
        """Submissions waiting for their turn now."""
        return self._waiting

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    def delay(self) -> float | None:
        """Seconds a submission arriving now would wait, not counting those already queued;
        None while every slot is in flight (it waits for an answer, then knows)."""
        now = self._clock()
        while self._answered and self._answered[0] <= now - self._per:
            self._answered.popleft()
        wait = self._paused_until - now
        if len(self._answered) + self._in_flight >= self._rate:
            if not self._answered:
                return None
            wait = max(wait, self._answered[0] + self._per - now)
        return max(wait, 0.0)

    def busy(self) -> bool:
        """True when a submission arriving now would have to wait."""
        return self._waiting > 0 or self.delay() != 0

    def full(self) -> bool:
        """True when a submission arriving now would have to wait and the queue has no room."""
        return self._waiting >= self._max_waiting and self.busy()

    def pause(self, seconds: float) -> None:
        """Hold every submission for ``seconds`` (after the vendor said it is rate limited)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self, *, bounded: bool = True) -> Turn:
        """Wait for this submission's turn; QueueFull when ``bounded`` and the queue is full.
        The caller sends, then calls ``done()`` on the turn once the answer is in."""
        if bounded and self.full():
            raise QueueFull(f"{self._waiting} submissions are already waiting")
        self._waiting += 1
        try:
            async with self._turn:
                while (wait := self.delay()) != 0:
                    if wait is None:
                        self._landed.clear()
                        await self._landed.wait()
                    else:
                        await self._sleep(wait)
                self._in_flight += 1
        finally:
            self._waiting -= 1
        return Turn(self)

    def _done(self) -> None:
        self._in_flight -= 1
        self._answered.append(self._clock())
        self._landed.set()
