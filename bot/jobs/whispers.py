"""Notes to a requester that only they see, kept while their interaction can still answer.

An interaction token lives 15 minutes; after that nothing can reach the clicker privately, so
an expired follow-up is dropped rather than tried. The follow-up is stored with the job (the
store deletes it when the job ends), so whichever process works on the job — the one that took
the click, or one that took the job over — can tell the requester; this process keeps the ones
it was given in memory too, so telling costs no query.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.jobs.store import FollowUp, JobStore

log = logging.getLogger(__name__)

Send = Callable[[FollowUp, str], Awaitable[None]]


class Whispers:
    def __init__(self, store: JobStore, send: Send) -> None:
        self._store = store
        self._send = send
        self._live: dict[str, FollowUp] = {}

    def remember(self, job_id: str, follow_up: FollowUp | None) -> None:
        if follow_up is not None and follow_up.alive:
            self._live[job_id] = follow_up

    async def tell(self, job_id: str, label: str, text: str) -> None:
        """Say ``text`` to the requester of the job while they can hear it; nothing otherwise."""
        follow_up = await self._find(job_id, label)
        if follow_up is None:
            return
        try:
            await self._send(follow_up, text)
        except Exception:
            log.exception("could not tell the requester of %s", label)

    async def take(self, job_id: str, label: str) -> FollowUp | None:
        """The job's follow-up for a last word, if still alive; forgotten here either way."""
        follow_up = await self._find(job_id, label)
        self.forget(job_id)
        return follow_up

    def forget(self, job_id: str) -> None:
        self._live.pop(job_id, None)

    async def _find(self, job_id: str, label: str) -> FollowUp | None:
        follow_up = self._live.get(job_id)
        if follow_up is None:
            try:
                follow_up = await self._store.follow_up(job_id)
            except Exception:
                log.warning("could not read how to reach the requester of %s", label)
                return None
        return follow_up if follow_up is not None and follow_up.alive else None
