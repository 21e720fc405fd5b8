"""Image work off the event loop, bounded: a few threads at a time, and a cap on the decoded
pixels they hold, so that a burst of large results neither freezes the loop nor blows the
memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

# One CPU is left to the event loop (acks, callbacks, lease renewals); Pillow releases the GIL
# while it decodes, resizes and encodes, so more threads than CPUs would only take it away.
WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
# Two of the largest Midjourney upscales (4096 px) decoded at once, about 130 MiB as RGB with
# a smaller copy each; an image alone may be larger (up to fit.MAX_PIXELS).
MAX_PIXELS_IN_FLIGHT = 2 * 4096 * 4096


class PixelBudget:
    """Decoded pixels in flight across threads: a thread reserves an image's pixels before it
    decodes it and waits while they would pass the cap. An image larger than the whole cap
    waits until it is alone."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the pixel cap must be positive")
        self.cap = cap
        self._used = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._changed:
            return self._used

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        cost = max(0, min(pixels, self.cap))
        with self._changed:
            self._changed.wait_for(lambda: self._used + cost <= self.cap)
            self._used += cost
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._changed.notify_all()


class ImagePool:
    """Runs image work in threads, at most ``workers`` at a time (the rest queue here, holding
    only their compressed bytes), with the ``budget`` their decoding reserves from.

    A caller cancelled while its work runs gets its CancelledError at once, but the thread's
    slot is given back only when the thread is done: the bound holds for threads, not callers.
    Build it inside the running event loop or before; use it from one loop.
    """

    def __init__(self, workers: int = WORKERS, max_pixels: int = MAX_PIXELS_IN_FLIGHT) -> None:
        if workers < 1:
            raise ValueError("an image pool needs at least one worker")
        self.workers = workers
        self.budget = PixelBudget(max_pixels)
        self._slots = asyncio.Semaphore(workers)
        self._running = 0

    @property
    def running(self) -> int:
        """Slots taken now: work handed to a thread and not yet done (for tests)."""
        return self._running

    async def run(self, func: Callable[..., T], /, *args: object) -> T:
        await self._slots.acquire()
        self._running += 1
        try:
            work = asyncio.ensure_future(asyncio.to_thread(func, *args))
        except BaseException:
            self._done()
            raise
        work.add_done_callback(self._finished)
        return await asyncio.shield(work)

    def _finished(self, work: asyncio.Future[Any]) -> None:
        # Retrieved here, so that the failure of work whose caller went away is not logged as
        # never retrieved; the caller that is still there gets it through the shield.
        if not work.cancelled():
            work.exception()
        self._done()

    def _done(self) -> None:
        self._running -= 1
        self._slots.release()
