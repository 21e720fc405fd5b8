"""Paces new paid submissions to the vendor's rate, in arrival order, with a bounded queue.

The vendor allows about 20 new tasks per 10 s per account and answers the excess with 429
rather than queueing it; waiting here costs nothing, while a 429 costs a retry and a delay.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable


class QueueFull(Exception):
    """More submissions are waiting than the queue holds."""


class SubmitThrottle:
    """At most ``rate`` acquisitions per ``per`` seconds, first come first served.

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
        self._granted: deque[float] = deque()
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

    def delay(self) -> float:
        """Seconds a submission arriving now would wait, not counting those already queued."""
        now = self._clock()
        while self._granted and self._granted[0] <= now - self._per:
            self._granted.popleft()
        wait = self._paused_until - now
        if len(self._granted) >= self._rate:
            wait = max(wait, self._granted[0] + self._per - now)
        return max(wait, 0.0)

    def busy(self) -> bool:
        """True when a submission arriving now would have to wait."""
        return self._waiting > 0 or self.delay() > 0

    def full(self) -> bool:
        """True when a submission arriving now would have to wait and the queue has no room."""
        return self._waiting >= self._max_waiting and self.busy()

    def pause(self, seconds: float) -> None:
        """Hold every submission for ``seconds`` (after the vendor said it is rate limited)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self, *, bounded: bool = True) -> None:
        """Wait for this submission's turn; QueueFull when ``bounded`` and the queue is full."""
        if bounded and self.full():
            raise QueueFull(f"{self._waiting} submissions are already waiting")
        self._waiting += 1
        try:
            async with self._turn:
                while (wait := self.delay()) > 0:
                    await self._sleep(wait)
                self._granted.append(self._clock())
        finally:
            self._waiting -= 1
