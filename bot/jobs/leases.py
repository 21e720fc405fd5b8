"""Which process works on which job, when several share one PostgreSQL store.

Every unfinished job is worked on (submitted, polled, waited out, posted) by the one process
that holds its lease in ``job_leases``. A process renews its leases every third of their
length; one that dies or hangs stops renewing, and once a lease has run out any other process
takes the job over where it stood. A process that takes a callback for a job another one holds
rings that one's doorbell through PostgreSQL's NOTIFY. On SQLite (one process) there are no
leases: every job is this process's.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from bot.jobs.store import JobStore

log = logging.getLogger(__name__)

LEASE_SECONDS = 20.0


class JobLeases:
    def __init__(self, store: JobStore, ttl: float | None) -> None:
        self._store = store
        # None: leases are off (SQLite), every claim succeeds.
        self.ttl = ttl
        self.owner = secrets.token_hex(8)
        self._held: set[str] = set()
        self._stop_listening: Callable[[], Awaitable[None]] | None = None

    @property
    def enabled(self) -> bool:
        return self.ttl is not None

    def holds(self, job_id: str) -> bool:
        return self.ttl is None or job_id in self._held

    async def claim(self, job_id: str) -> bool:
        """Take (or keep) the lease on ``job_id``; False while another live process holds it."""
        if self.ttl is None:
            return True
        if await self._store.claim_job(job_id, self.owner, now=time.time(), ttl=self.ttl):
            self._held.add(job_id)
            return True
        return False

    async def release(self, job_id: str) -> None:
        if self.ttl is not None and job_id in self._held:
            self._held.discard(job_id)
            await self._store.release_jobs(self.owner, [job_id])

    async def renew(self) -> set[str]:
        """Extend every lease held; the job ids whose lease was lost (taken over meanwhile)."""
        if self.ttl is None or not self._held:
            return set()
        held = await self._store.renew_jobs(self.owner, self._held, now=time.time(), ttl=self.ttl)
        lost = self._held - held
        self._held -= lost
        return lost

    async def listen(self, on_job: Callable[[str], None]) -> None:
        if self.ttl is not None and self._stop_listening is None:
            self._stop_listening = await self._store.listen_jobs(on_job)

    async def close(self) -> None:
        """Give every lease back (a standby takes the jobs at once) and stop listening."""
        if self.ttl is None:
            return
        held, self._held = self._held, set()
        try:
            await self._store.release_jobs(self.owner, held)
        except Exception:
            log.warning("could not give back %d job leases; they run out by themselves", len(held))
        if self._stop_listening is not None:
            await self._stop_listening()
            self._stop_listening = None
