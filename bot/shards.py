"""Which Discord gateway shards this process runs, when several share one PostgreSQL store.

A shard is one gateway session; two sessions of one shard would both receive its guilds'
clicks and answer each twice. So each shard is run under a lease in the store's ``leases``
table, named ``shard:<id>/<count>``: a process takes free shards it may run (SHARD_IDS) up to
SHARDS_PER_PROCESS, renews its leases every third of their length, and a process that dies or
hangs stops renewing, so another (a standby, or one with room) takes its shards once the lease
has run out. A process that cannot renew in time stops its own sessions *before* its leases can
run out (two thirds of the way, by its own clock), so a shard never has two live owners. On
SQLite (one process) there are no leases: the process runs every shard it may, at once.

Nothing here knows discord.py: the bot asks ``step`` what to start and stop, and ``holds``
before it handles an interaction (a process that was frozen past its lease must not act on the
clicks it read late).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from bot.jobs.coordination import Coordination

log = logging.getLogger(__name__)

SHARD_LEASE_SECONDS = 12.0
PREFIX = "shard:"


def shard_of(guild_id: int | None, count: int) -> int:
    """The shard that carries ``guild_id``'s events (direct messages come on shard 0)."""
    return 0 if guild_id is None else (guild_id >> 22) % count


def lease_name(shard_id: int, count: int) -> str:
    return f"{PREFIX}{shard_id}/{count}"


class ShardLeases:
    def __init__(
        self,
        coordination: Coordination,
        *,
        owner: str,
        count: int,
        allowed: Sequence[int] | None,
        most: int | None,
        ttl: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = coordination
        self.owner = owner
        self.count = count
        self.allowed = sorted(set(allowed)) if allowed is not None else list(range(count))
        self.most = len(self.allowed) if most is None else min(most, len(self.allowed))
        # None: leases are off (SQLite, one process), every allowed shard is this process's.
        self.ttl = ttl
        self._clock = clock
        # Shard → until when (this process's clock) it may still act as the shard's owner.
        self._held: dict[int, float] = {}
        self._told_mismatch = False

    @property
    def period(self) -> float:
        """How often ``step`` should run."""
        return (self.ttl or SHARD_LEASE_SECONDS) / 3

    @property
    def held(self) -> list[int]:
        return sorted(self._held)

    def holds(self, shard_id: int) -> bool:
        """Whether this process may act on ``shard_id``'s events now."""
        until = self._held.get(shard_id)
        return until is not None and (self.ttl is None or self._clock() < until)

    def holds_guild(self, guild_id: int | None) -> bool:
        return self.holds(shard_of(guild_id, self.count))

    async def step(self) -> tuple[list[int], list[int]]:
        """Renew, give up what could not be kept, take what is free: (shards won, shards lost)."""
        if self.ttl is None:
            if self._held:
                return [], []
            self._held = {shard: float("inf") for shard in self.allowed[: self.most]}
            return self.held, []
        lost = await self._renew(self.ttl)
        won = await self._take(self.ttl) if len(self._held) < self.most else []
        return won, lost

    async def _renew(self, ttl: float) -> list[int]:
        started = self._clock()
        names = {lease_name(shard, self.count): shard for shard in self._held}
        try:
            kept = await self._store.renew_leases(self.owner, names, ttl=ttl)
        except Exception as exc:
            log.warning("could not renew the shard leases (%s); the shards stop if this lasts", exc)
            kept = None
        if kept is not None:
            for name, shard in names.items():
                if name in kept:
                    self._held[shard] = started + ttl * 2 / 3
        now = self._clock()
        lost = [shard for shard, until in self._held.items() if until <= now]
        if kept is not None:
            lost += [shard for name, shard in names.items() if name not in kept]
        for shard in set(lost):
            self._held.pop(shard, None)
        return sorted(set(lost))

    async def _take(self, ttl: float) -> list[int]:
        try:
            live = await self._store.live_leases(PREFIX)
        except Exception as exc:
            log.warning("could not read the shard leases (%s); trying again", exc)
            return []
        others = [name for name in live if not name.endswith(f"/{self.count}")]
        if others:
            # Two shard counts at once would split the servers two ways: some would be run
            # twice and some not at all. Stand by until the other count is gone.
            if not self._told_mismatch:
                log.error(
                    "other processes run shards of another SHARD_COUNT (%s) than this one (%d): "
                    "standing by; give every process the same SHARD_COUNT",
                    ", ".join(sorted(others)),
                    self.count,
                )
                self._told_mismatch = True
            return []
        self._told_mismatch = False
        won: list[int] = []
        for shard in self.allowed:
            if len(self._held) >= self.most:
                break
            name = lease_name(shard, self.count)
            if shard in self._held or name in live:
                continue
            started = self._clock()
            try:
                taken = await self._store.claim_lease(name, self.owner, ttl=ttl)
            except Exception as exc:
                log.warning("could not take the lease of shard %d (%s)", shard, exc)
                break
            if taken:
                self._held[shard] = started + ttl * 2 / 3
                won.append(shard)
        return won

    async def release(self, shards: Sequence[int]) -> None:
        """Give ``shards`` back (their sessions are closed): another process may take them now."""
        if self.ttl is None:
            return
        for shard in shards:
            self._held.pop(shard, None)
        try:
            await self._store.release_leases(
                self.owner, [lease_name(shard, self.count) for shard in shards]
            )
        except Exception:
            log.warning("could not give back the leases of shards %s; they run out", list(shards))
