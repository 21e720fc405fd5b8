"""Which ``imageIndex`` generateVary wants for V1–V4: 0–3 or 1–4. The vendors' docs say both
(the schema 0–3, the endpoint's notes 1–4), and a wrong guess would vary another picture than
the one clicked, and be paid for.

A value that is right under one base and out of range under the other is safe to send: an
out-of-range index is answered 422, which takes nothing. V1 sent as 0 is image 1 under base 0
and refused under base 1; V4 sent as 4 is image 4 under base 1 and refused under base 0. So while
the base is unknown, V1 and V4 go out that way, and what the API answers teaches the base:

- the safe value accepted proves its base;
- the safe value refused, then the other base's value for the same grid accepted at once, proves
  the other base: whatever else makes the API refuse a variation (the grid unknown, still
  running, failed, not a generation) refuses every index of that grid alike;
- both refused proves nothing; the click fails with the API's reason, nothing taken.

V2 and V3 (1 and 2, 2 and 3: in range under both) are refused before anything is stored or paid
until the base is known. What was learned is kept in the store (``api_facts``), so it survives
restarts and every process sharing the store goes by the first value learned. The setting
``MJ_VARY_INDEX_BASE`` (0 or 1) decides instead, for an operator who knows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.jobs.store import JobStore
from bot.midjourney.errors import ApiError
from bot.midjourney.models import GRID_SIZE

log = logging.getLogger(__name__)

FACT = "vary_index_base"
BASES = (0, 1)
VALIDATION_REFUSED = 422


class BaseUnknown(Exception):
    """V2 or V3 asked for while the index base is not known yet."""


class VaryIndex:
    def __init__(self, store: JobStore, configured: int | None = None) -> None:
        if configured is not None and configured not in BASES:
            raise ValueError(f"the index base is 0 or 1, not {configured!r}")
        self._store = store
        self._configured = configured
        self._learned: int | None = None

    async def base(self) -> int | None:
        """0 or 1 when known (set, or learned by any process sharing the store), else None."""
        if self._configured is not None:
            return self._configured
        if self._learned is None:
            stored = await self._store.api_fact(FACT)
            self._learned = int(stored) if stored in ("0", "1") else None
        return self._learned

    async def can_send(self, image_index: int) -> bool:
        """Whether a variation of image ``image_index`` (0–3) can be asked for now."""
        return image_index in (0, GRID_SIZE - 1) or await self.base() is not None

    async def send(
        self,
        image_index: int,
        call: Callable[[int], Awaitable[str]],
        label: str,
        *,
        pace: Callable[[], Awaitable[None]],
    ) -> str:
        """``call`` (the API request, given the imageIndex to send) for image ``image_index``
        (0–3), learning the base on the way while it is unknown; raises BaseUnknown for V2/V3
        then, and the API's error when it refuses. A second request waits for ``pace`` (the
        vendor's rate counts requests, whatever became of them)."""
        base = await self.base()
        if base is not None:
            return await call(image_index + base)
        if image_index == 0:
            safe_base, other_base = 0, 1
        elif image_index == GRID_SIZE - 1:
            safe_base, other_base = 1, 0
        else:
            raise BaseUnknown(image_index)
        try:
            task_id = await call(image_index + safe_base)
        except ApiError as exc:
            if exc.code != VALIDATION_REFUSED:
                raise
            log.info(
                "vary index %d refused %s: %s; trying base %d",
                image_index + safe_base,
                label,
                exc,
                other_base,
            )
            await pace()
            task_id = await call(image_index + other_base)
            await self._learn(other_base, label)
            return task_id
        await self._learn(safe_base, label)
        return task_id

    async def _learn(self, base: int, label: str) -> None:
        stored = await self._store.learn_api_fact(FACT, str(base))
        self._learned = int(stored)
        if self._learned != base:
            log.warning(
                "vary index base %d seen %s, but base %s was learned before and stays",
                base,
                label,
                stored,
            )
        else:
            log.info("vary index base learned: %d %s", base, label)
