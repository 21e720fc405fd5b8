"""Background tasks that a part of the bot starts and must stop when it closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundTasks:
    """Keeps the tasks it starts referenced until they end (the event loop holds only weak
    references, so an unreferenced task can be collected midway), logs the ones that fail, and
    cancels and awaits whatever is left at ``close``."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        # The coroutine itself becomes the task, so a task cancelled at shutdown before it ran
        # is closed cleanly rather than left "never awaited".
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._log.error("background step %s failed", task.get_name(), exc_info=error)

    async def close(self, *also: asyncio.Task[Any]) -> None:
        """Cancel every task still running (and ``also``), and wait until all have ended."""
        pending = [*self._tasks, *also]
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
