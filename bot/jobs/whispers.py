"""Notes to a requester that only they see, kept while their interaction can still answer.

An interaction token lives 15 minutes; after that nothing can reach the clicker privately, so
an expired whisper is dropped rather than tried.
"""

from __future__ import annotations

import logging
import time

from bot.jobs.types import Whisper

log = logging.getLogger(__name__)


class Whispers:
    def __init__(self) -> None:
        self._live: dict[str, tuple[Whisper, float]] = {}

    def remember(self, job_id: str, whisper: Whisper | None, until: float) -> None:
        if whisper is not None and until > time.time():
            self._live[job_id] = (whisper, until)

    async def tell(self, job_id: str, label: str, text: str) -> None:
        """Say ``text`` to the requester of the job while they can hear it; nothing otherwise."""
        entry = self._live.get(job_id)
        if entry is None or entry[1] <= time.time():
            return
        try:
            await entry[0](text)
        except Exception:
            log.exception("could not tell the requester of %s", label)

    def take(self, job_id: str) -> Whisper | None:
        """The job's whisper for a last word, if still alive; forgotten either way."""
        entry = self._live.pop(job_id, None)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    def forget(self, job_id: str) -> None:
        self._live.pop(job_id, None)
