"""Which process works on which job, when several share one PostgreSQL store.

Every unfinished job is worked on (submitted, polled, waited out, posted) by the one process
that holds its lease in ``leases``. A process renews its leases every third of their
length; one that dies or hangs stops renewing, and once a lease has run out any other process
takes the job over where it stood. A process that takes a callback for a job another one holds
rings that one's doorbell through PostgreSQL's NOTIFY. On SQLite (one process) there are no
leases: every job is this process's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from bot.jobs.coordination import Coordination, JobListener

log = logging.getLogger(__name__)

LEASE_SECONDS = 20.0
# The length of a process's owner id (bot.jobs.pace puts it at the head of its turns' ids).
OWNER_CHARS = 16


def new_owner() -> str:
    """Who a process is in ``leases``, for as long as it runs: random at each start."""
    return secrets.token_hex(OWNER_CHARS // 2)


class JobLeases:
    def __init__(
        self, coordination: Coordination, ttl: float | None, owner: str | None = None
    ) -> None:
        self._store = coordination
        # None: leases are off (SQLite), every claim succeeds.
        self.ttl = ttl
        self.owner = owner or new_owner()
        self._held: set[str] = set()
        self._listener: JobListener | None = None

    @property
    def enabled(self) -> bool:
        return self.ttl is not None

    def holds(self, job_id: str) -> bool:
        return self.ttl is None or job_id in self._held

    def held(self) -> set[str]:
        """The jobs this process holds a lease on (a copy: they change while it is read)."""
        return set(self._held)

    async def claim(self, job_id: str) -> bool:
        """Take (or keep) the lease on ``job_id``; False while another live process holds it."""
        if self.ttl is None:
            return True
        if await self._store.claim_lease(job_id, self.owner, ttl=self.ttl):
            self._held.add(job_id)
            return True
        return False

    def terms(self) -> tuple[str, float] | None:
        """What JobStore.create leases a new job with (None: leases are off)."""
        return None if self.ttl is None else (self.owner, self.ttl)

    def created(self, job_id: str) -> None:
        """``job_id`` was stored with this process's lease (see terms)."""
        if self.ttl is not None:
            self._held.add(job_id)

    async def release(self, job_id: str) -> None:
        """Give the lease back; if the store cannot be told, it runs out by itself."""
        if self.ttl is not None and job_id in self._held:
            self._held.discard(job_id)
            try:
                await self._store.release_leases(self.owner, [job_id])
            except Exception:
                log.warning("could not give back the lease of job=%s; it runs out", job_id)

    async def renew(self) -> set[str]:
        """Extend every lease held; the job ids whose lease was lost (taken over meanwhile)."""
        if self.ttl is None or not self._held:
            return set()
        asked = set(self._held)
        held = await self._store.renew_leases(self.owner, asked, ttl=self.ttl)
        # Jobs are taken and end while the renewal is under way: only one that was asked
        # about, and is still held, was lost.
        lost = (asked - held) & self._held
        self._held -= lost
        return lost

    async def notify(self, job_id: str) -> None:
        """Ring ``job_id``'s holder, whichever process it is (PostgreSQL's NOTIFY)."""
        await self._store.notify_job(job_id)

    async def listen(self, on_job: Callable[[str], None], on_gap: Callable[[], None]) -> None:
        """Hear other processes' rings; again after the connection was lost, when ``on_gap``
        is called first (what was rung meanwhile was not heard)."""
        if self.ttl is None or (self._listener is not None and not self._listener.lost):
            return
        if self._listener is not None:
            log.warning("lost the connection that hears callbacks taken elsewhere; listening again")
            await self._listener.stop()
            self._listener = None
            on_gap()
        self._listener = await self._store.listen_jobs(on_job)

    async def close(self) -> None:
        """Give every lease back (a standby takes the jobs at once) and stop listening."""
        if self.ttl is None:
            return
        held, self._held = self._held, set()
        try:
            await self._store.release_leases(self.owner, held)
        except Exception:
            log.warning("could not give back %d job leases; they run out by themselves", len(held))
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
