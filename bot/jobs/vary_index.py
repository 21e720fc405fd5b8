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

generateVideoExtend's ``index`` (which video of a batch) is just as undocumented, and learnt by a
second ``VaryIndex`` (``EXTEND_FACT``, ``MJ_EXTEND_INDEX_BASE``) the same way. A batch may hold
fewer than four videos, and whether the API checks an index against the batch or against 0–3 is
not documented either: so only the first video (0) is always safe, and the last one of four (4
under base 1, refused under base 0 whichever way the API checks); every other waits for the base.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from bot.jobs import texts
from bot.jobs.coordination import Coordination
from bot.midjourney.errors import ApiError
from bot.midjourney.models import GRID_SIZE

log = logging.getLogger(__name__)

FACT = "vary_index_base"
EXTEND_FACT = "extend_index_base"
BASES = (0, 1)
VALIDATION_REFUSED = 422
# How a refusal says it is about the value of imageIndex (the sandbox: "imageIndex must be an
# integer from 1 to 4"); the vendors do not document their wording, so any mention will do.
_ABOUT_THE_INDEX = re.compile(r"index|range", re.IGNORECASE)


def out_of_range(exc: ApiError) -> bool:
    """Whether a refusal says the imageIndex sent is not one the API accepts."""
    return exc.code == VALIDATION_REFUSED and _ABOUT_THE_INDEX.search(exc.msg) is not None


class Sent(NamedTuple):
    """A paid call's task id, and the base its acceptance proved (None: nothing learned) to
    ``learner`` (None: generateVary's). The base is learned (``VaryIndex.learn``) only once the
    task id is kept: a store failure while learning must not lose a paid task."""

    task_id: str
    teaches: int | None = None
    learner: VaryIndex | None = None


class BaseUnknown(Exception):
    """An index that is not safe to send (V2, V3) asked for while the base is not known yet;
    ``reason`` says so to the requester."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TryOther(Exception):
    """The safe value was refused as out of range (nothing taken): send ``value`` next."""

    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(f"imageIndex {value} next")


class VaryIndex:
    """The index base of one endpoint: ``fact`` is its row in api_facts, ``what`` names it in
    log lines, ``setting`` is the setting that fixes it and ``unknown`` what a refused
    requester is told."""

    def __init__(
        self,
        coordination: Coordination,
        configured: int | None = None,
        *,
        fact: str = FACT,
        what: str = "vary index",
        setting: str = "MJ_VARY_INDEX_BASE",
        unknown: Callable[[int], str] = texts.vary_base_unknown,
    ) -> None:
        if configured is not None and configured not in BASES:
            raise ValueError(f"the index base is 0 or 1, not {configured!r}")
        self._store = coordination
        self._configured = configured
        self._learned: int | None = None
        self._fact = fact
        self._what = what
        self._setting = setting
        # The requester's words for item n (1–4) refused while the base is unknown.
        self.unknown = unknown

    async def base(self) -> int | None:
        """0 or 1 when known (set, or learned by any process sharing the store), else None."""
        if self._configured is not None:
            return self._configured
        if self._learned is None:
            self._learned = _base(await self._store.api_fact(self._fact))
        return self._learned

    async def learned(self) -> int | None:
        """What the store holds as learned, whatever the setting says."""
        return _base(await self._store.api_fact(self._fact))

    async def can_send(self, image_index: int, count: int = GRID_SIZE) -> bool:
        """Whether item ``image_index`` (0–3) of ``count`` can be asked for now."""
        return _safe(image_index, count) or await self.base() is not None

    async def send(
        self,
        image_index: int,
        call: Callable[[int], Awaitable[str]],
        label: str,
        *,
        second: int | None = None,
        count: int = GRID_SIZE,
    ) -> Sent:
        """``call`` (the API request, given the imageIndex to send) for image ``image_index``
        (0–3) of ``count``, and the base its answer teaches while the base is unknown. Raises
        BaseUnknown for an index not safe to send then (V2, V3); TryOther when the safe value
        was refused as out of range, to be sent again (at its turn) with ``second`` = its
        value; and the API's error when it refuses."""
        base = await self.base()
        if base is not None:
            try:
                return Sent(await call(image_index + base))
            except ApiError as exc:
                if out_of_range(exc):
                    # Every click after this is suspect: the operator has to look.
                    log.error(
                        "%s %d refused as out of range %s although the base is %d (%s): "
                        "check %s and the api_facts table: %s",
                        self._what,
                        image_index + base,
                        label,
                        base,
                        "set" if self._configured is not None else "learned",
                        self._setting,
                        exc,
                    )
                raise
        if not _safe(image_index, count):
            raise BaseUnknown(self.unknown(image_index + 1))
        safe_base, other_base = (0, 1) if image_index == 0 else (1, 0)
        if second == image_index + other_base:
            return Sent(await call(second), other_base, self)
        try:
            task_id = await call(image_index + safe_base)
        except ApiError as exc:
            if not out_of_range(exc):
                raise
            log.info(
                "%s %d refused %s: %s; base %d next",
                self._what,
                image_index + safe_base,
                label,
                exc,
                other_base,
            )
            raise TryOther(image_index + other_base) from exc
        return Sent(task_id, safe_base, self)

    async def learn(self, base: int, label: str) -> None:
        """Keep ``base``, which an accepted call proved. A store that fails here loses nothing
        paid: the next V1 or V4 sends a safe value again and teaches it."""
        try:
            stored = await self._store.learn_api_fact(self._fact, str(base))
        except Exception as exc:
            log.warning(
                "could not store %s base %d %s (%s); the next safe index sent teaches it",
                self._what,
                base,
                label,
                type(exc).__name__,
            )
            return
        self._learned = _base(stored)
        if self._learned is None:
            log.error(
                "api_facts holds %r for %s, neither 0 nor 1: it is not used", stored, self._fact
            )
        elif self._learned != base:
            log.warning(
                "%s base %d seen %s, but base %s was learned before and stays",
                self._what,
                base,
                label,
                stored,
            )
        else:
            log.info("%s base learned: %d %s", self._what, base, label)


def extend_index(coordination: Coordination, configured: int | None = None) -> VaryIndex:
    """generateVideoExtend's index base (``MJ_EXTEND_INDEX_BASE``), learnt apart from vary's."""
    return VaryIndex(
        coordination,
        configured,
        fact=EXTEND_FACT,
        what="extend index",
        setting="MJ_EXTEND_INDEX_BASE",
        unknown=texts.extend_base_unknown,
    )


def _safe(index: int, count: int) -> bool:
    """Whether item ``index`` of ``count`` is right under one base and refused under the other
    whatever the API checks it against (its items, or 0–3): the first, and the last of four."""
    return index == 0 or (index == GRID_SIZE - 1 and count == GRID_SIZE)


def _base(stored: str | None) -> int | None:
    return int(stored) if stored in ("0", "1") else None
