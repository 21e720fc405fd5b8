"""The listener's health check: is the gateway up, does the job store answer, how much is open.

Nothing here knows discord.py: the bot reports its gateway's ups and downs (``gateway_up`` from
its connect and resume events, ``gateway_down`` from its disconnect event) and hands over the
store's count of unfinished jobs. A check costs no API call and at most one small indexed query,
whose answer is reused for ``cache_seconds``, so a burst of probes makes one query.

Healthy (200) unless the gateway has been down longer than ``gateway_grace`` seconds (a short
outage is ridden out by discord.py's resume, and callbacks and deliveries go on meanwhile) or the
store does not answer within ``store_timeout`` seconds. Before the first connection the answer is
503 "starting": a bot that cannot see clicks yet is not ready for traffic, and container health
checks allow a start period for that. A process that runs no shard because others run them all
is healthy ("standby"): it serves callbacks and takes shards over when their process dies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

log = logging.getLogger(__name__)

GATEWAY_GRACE_SECONDS = 60.0
STORE_TIMEOUT_SECONDS = 2.0
STORE_CACHE_SECONDS = 1.0

Clock = Callable[[], float]
CountJobs = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class HealthReport:
    """One health check's findings; ``status`` is "ok", "reconnecting" (gateway down, within the
    grace), or the problems that make it unhealthy, joined by "; "."""

    healthy: bool
    status: str
    gateway_connected: bool
    gateway_down_seconds: float | None
    store_reachable: bool
    jobs_in_flight: int | None

    @property
    def http_status(self) -> int:
        return 200 if self.healthy else 503

    def body(self) -> dict[str, object]:
        down = self.gateway_down_seconds
        return {
            "ok": self.healthy,
            "status": self.status,
            "gateway_connected": self.gateway_connected,
            "gateway_down_seconds": None if down is None else round(down, 1),
            "store_reachable": self.store_reachable,
            "jobs_in_flight": self.jobs_in_flight,
        }


class HealthCheck(Protocol):
    """What the listener asks on GET /healthz."""

    async def check(self) -> HealthReport: ...


def iso_time(timestamp: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (``2025-01-31T12:00:00Z``); None stays None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class _StoreProbe:
    reachable: bool
    jobs: int | None
    at: float


class HealthMonitor:
    """The bot's health check. ``clock`` (monotonic seconds) and the limits are injectable so
    tests decide in milliseconds what production decides in a minute."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        gateway_grace: float = GATEWAY_GRACE_SECONDS,
        store_timeout: float = STORE_TIMEOUT_SECONDS,
        cache_seconds: float = STORE_CACHE_SECONDS,
    ) -> None:
        self._clock = clock
        self._grace = gateway_grace
        self._store_timeout = store_timeout
        self._cache_seconds = cache_seconds
        self._ever_connected = False
        self._started = clock()
        # Shard → since when its session is down; shards let go on purpose (their lease went
        # to another process) are no outage, nor is a standby that runs no shard at all.
        self._down: dict[int, float] = {}
        self._left: set[int] = set()
        self._standby = False
        self._count_jobs: CountJobs | None = None
        self._probe: _StoreProbe | None = None
        self._probing = asyncio.Lock()

    # -- what the bot reports -------------------------------------------------------------

    def gateway_up(self, shard: int = 0) -> None:
        self._ever_connected = True
        self._standby = False
        self._left.discard(shard)
        self._down.pop(shard, None)

    def gateway_down(self, shard: int = 0) -> None:
        if shard not in self._left:
            self._down.setdefault(shard, self._clock())

    def gateway_launching(self, shard: int) -> None:
        """``shard`` was taken and is connecting: down until its session is up."""
        self._left.discard(shard)
        self._down.setdefault(shard, self._clock())

    def down_for(self, shard: int) -> float | None:
        """Seconds ``shard`` has been without its session (connecting or dropped); None when
        it is up or was let go."""
        since = self._down.get(shard)
        return None if since is None else self._clock() - since

    def gateway_left(self, shard: int) -> None:
        """``shard``'s session was closed on purpose: another process runs it now."""
        self._left.add(shard)
        self._down.pop(shard, None)

    def gateway_standby(self) -> None:
        """This process runs no shard (another process runs them all): healthy, waiting."""
        self._standby = True

    def watch_store(self, count_jobs: CountJobs) -> None:
        """The store's count of unfinished jobs; a count answered is the store reachable."""
        self._count_jobs = count_jobs
        self._probe = None

    # -- the check --------------------------------------------------------------------------

    async def check(self) -> HealthReport:
        store = await self._store()
        down_for = None
        if self._down:
            down_for = max(0.0, self._clock() - min(self._down.values()))
        elif not self._ever_connected and not self._standby:
            down_for = max(0.0, self._clock() - self._started)
        problems: list[str] = []
        if down_for is not None:
            if not self._ever_connected and not self._standby:
                problems.append("starting" if down_for <= self._grace else "gateway down")
            elif down_for > self._grace:
                problems.append("gateway down")
        if not store.reachable:
            problems.append("store unreachable")
        if problems:
            status = "; ".join(problems)
        elif down_for is not None:
            status = "reconnecting"
        else:
            status = "standby" if self._standby else "ok"
        return HealthReport(
            healthy=not problems,
            status=status,
            gateway_connected=down_for is None,
            gateway_down_seconds=down_for,
            store_reachable=store.reachable,
            jobs_in_flight=store.jobs,
        )

    async def _store(self) -> _StoreProbe:
        # One probe at a time: checks arriving meanwhile wait for it and share its answer.
        async with self._probing:
            probe = self._probe
            if probe is not None and self._clock() - probe.at < self._cache_seconds:
                return probe
            self._probe = await self._probe_store(previous=probe)
            return self._probe

    async def _probe_store(self, previous: _StoreProbe | None) -> _StoreProbe:
        count = self._count_jobs
        why = "not open yet"
        jobs: int | None = None
        if count is not None:
            try:
                async with asyncio.timeout(self._store_timeout):
                    jobs = await count()
            except TimeoutError:
                why = f"no answer within {self._store_timeout:g} s"
            except Exception as exc:
                # The type only: a driver's message may quote connection details.
                why = type(exc).__name__
        probe = _StoreProbe(reachable=jobs is not None, jobs=jobs, at=self._clock())
        was_reachable = previous is None or previous.reachable
        if was_reachable and not probe.reachable and count is not None:
            log.warning("health check: job store unreachable (%s)", why)
        elif previous is not None and not previous.reachable and probe.reachable:
            log.info("health check: job store reachable again")
        return probe
