"""Which ``imageIndex`` generateVary wants for V1–V4: 0–3 or 1–4. The vendors' docs say both
(the schema 0–3, the endpoint's notes 1–4), and a wrong guess would vary another picture than
the one clicked, and be paid for.

A value that is right under one base and out of range under the other is safe to send: an
out-of-range index is answered 422, which takes nothing. V1 sent as 0 is image 1 under base 0
and refused under base 1; V4 sent as 4 is image 4 under base 1 and refused under base 0. So while
the base is unknown, V1 and V4 go out that way, and what the API answers teaches the base:

- the safe value accepted proves its base;
- the safe value refused as out of range (a 422 whose message names the index or a range), then
  the other base's value for the same grid accepted, proves the other base: whatever else makes
  the API refuse a variation (the grid unknown, still running, failed, not a generation)
  refuses every index of that grid alike;
- a 422 that does not say it is about the index (a flagged image, a proxy's bare 422), or both
  values refused, proves nothing: the click fails with the API's reason, nothing taken, nothing
  learned.

V2 and V3 (1 and 2, 2 and 3: in range under both) are refused before anything is stored or paid
until the base is known. What was learned is kept in the store (``api_facts``), so it survives
restarts and every process sharing the store goes by the first value learned. The setting
``MJ_VARY_INDEX_BASE`` (0 or 1) decides instead, for an operator who knows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from bot.jobs.coordination import Coordination
from bot.midjourney.errors import ApiError
from bot.midjourney.models import GRID_SIZE

log = logging.getLogger(__name__)

FACT = "vary_index_base"
BASES = (0, 1)
VALIDATION_REFUSED = 422
# How a refusal says it is about the value of imageIndex (the sandbox: "imageIndex must be an
# integer from 1 to 4"); the vendors do not document their wording, so any mention will do.
_ABOUT_THE_INDEX = re.compile(r"index|range", re.IGNORECASE)


def out_of_range(exc: ApiError) -> bool:
    """Whether a refusal says the imageIndex sent is not one the API accepts."""
    return exc.code == VALIDATION_REFUSED and _ABOUT_THE_INDEX.search(exc.msg) is not None


class Sent(NamedTuple):
    """A paid call's task id, and the base its acceptance proved (None: nothing learned). The
    base is learned (``VaryIndex.learn``) only once the task id is kept: a store failure while
    learning must not lose a paid task."""

    task_id: str
    teaches: int | None = None


class BaseUnknown(Exception):
    """V2 or V3 asked for while the index base is not known yet."""


class TryOther(Exception):
    """The safe value was refused as out of range (nothing taken): send ``value`` next."""

    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(f"imageIndex {value} next")


class VaryIndex:
    def __init__(self, coordination: Coordination, configured: int | None = None) -> None:
        if configured is not None and configured not in BASES:
            raise ValueError(f"the index base is 0 or 1, not {configured!r}")
        self._store = coordination
        self._configured = configured
        self._learned: int | None = None

    async def base(self) -> int | None:
        """0 or 1 when known (set, or learned by any process sharing the store), else None."""
        if self._configured is not None:
            return self._configured
        if self._learned is None:
            self._learned = _base(await self._store.api_fact(FACT))
        return self._learned

    async def learned(self) -> int | None:
        """What the store holds as learned, whatever the setting says."""
        return _base(await self._store.api_fact(FACT))

    async def can_send(self, image_index: int) -> bool:
        """Whether a variation of image ``image_index`` (0–3) can be asked for now."""
        return image_index in (0, GRID_SIZE - 1) or await self.base() is not None

    async def send(
        self,
        image_index: int,
        call: Callable[[int], Awaitable[str]],
        label: str,
        *,
        second: int | None = None,
    ) -> Sent:
        """``call`` (the API request, given the imageIndex to send) for image ``image_index``
        (0–3), and the base its answer teaches while the base is unknown. Raises BaseUnknown for
        V2/V3 then; TryOther when the safe value was refused as out of range, to be sent again
        (at its turn) with ``second`` = its value; and the API's error when it refuses."""
        base = await self.base()
        if base is not None:
            try:
                return Sent(await call(image_index + base))
            except ApiError as exc:
                if out_of_range(exc):
                    # Every V-click after this is suspect: the operator has to look.
                    log.error(
                        "vary index %d refused as out of range %s although the base is %d (%s): "
                        "check MJ_VARY_INDEX_BASE and the api_facts table: %s",
                        image_index + base,
                        label,
                        base,
                        "set" if self._configured is not None else "learned",
                        exc,
                    )
                raise
        if image_index == 0:
            safe_base, other_base = 0, 1
        elif image_index == GRID_SIZE - 1:
            safe_base, other_base = 1, 0
        else:
            raise BaseUnknown(image_index)
        if second == image_index + other_base:
            return Sent(await call(second), other_base)
        try:
            task_id = await call(image_index + safe_base)
        except ApiError as exc:
            if not out_of_range(exc):
                raise
            log.info(
                "vary index %d refused %s: %s; base %d next",
                image_index + safe_base,
                label,
                exc,
                other_base,
            )
            raise TryOther(image_index + other_base) from exc
        return Sent(task_id, safe_base)

    async def learn(self, base: int, label: str) -> None:
        """Keep ``base``, which an accepted call proved. A store that fails here loses nothing
        paid: the next V1 or V4 sends a safe value again and teaches it."""
        try:
            stored = await self._store.learn_api_fact(FACT, str(base))
        except Exception as exc:
            log.warning(
                "could not store vary index base %d %s (%s); the next V1 or V4 teaches it",
                base,
                label,
                type(exc).__name__,
            )
            return
        self._learned = _base(stored)
        if self._learned is None:
            log.error("api_facts holds %r for %s, neither 0 nor 1: it is not used", stored, FACT)
        elif self._learned != base:
            log.warning(
                "vary index base %d seen %s, but base %s was learned before and stays",
                base,
                label,
                stored,
            )
        else:
            log.info("vary index base learned: %d %s", base, label)


def _base(stored: str | None) -> int | None:
    return int(stored) if stored in ("0", "1") else None
