"""The vendor's pace shared by every process on one PostgreSQL store.

The vendor allows ``MJ_SUBMIT_RATE`` new tasks per 10 s per API key, whichever process sends
them. Each process keeps its own queue (SubmitThrottle: arrival order, the bound, the "queued
behind N" note); at its turn a submission also takes a turn in the table ``submit_turns``, under
an advisory lock, and only while fewer than ``rate`` rows are in flight or were answered within
the window. Times are the database's clock, the one clock every process shares. A row stays in
flight until its answer is in; one left so by a process that died counts until ``stale``
seconds after its grant (longer than a request can take), then no more. A 429 is about the API
key, not the process that met it: its pause is written as ``rate`` turns that run until the
pause ends, which hold back every process.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.tables import submit_turns
from bot.jobs.throttle import PaceTurn, SubmitThrottle

log = logging.getLogger(__name__)

# The transaction-scoped advisory lock the turns are taken under (distinct from the schema's and
# the admission locks).
PACE_LOCK = 0x6D6A_5041_4345_0001
# More than the API client's 30 s timeout plus the window.
STALE_SECONDS = 60.0
# How often a submission looks again while every turn is in flight (no answer time to wait for).
IN_FLIGHT_POLL = 0.05

_NOW = sa.select(sa.func.extract("epoch", sa.func.clock_timestamp()))


class SharedPace:
    def __init__(
        self,
        engine: AsyncEngine,
        local: SubmitThrottle,
        rate: int,
        per: float,
        *,
        stale: float = STALE_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._engine = engine
        self._local = local
        self._rate = rate
        self._per = per
        self._stale = stale
        self._sleep = sleep
        self._pausing: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return self._local.waiting

    def busy(self) -> bool:
        return self._local.busy()

    def full(self) -> bool:
        return self._local.full()

    def pause(self, seconds: float) -> None:
        self._local.pause(seconds)
        task = asyncio.ensure_future(self._pause_all(seconds))
        self._pausing.add(task)
        task.add_done_callback(self._pausing.discard)

    async def paused(self) -> None:
        """Until every pause asked for is written for the other processes to see."""
        await asyncio.gather(*self._pausing)

    async def _pause_all(self, seconds: float) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PACE_LOCK)))
                now = float((await conn.execute(_NOW)).scalar_one())
                # Answered a window before the pause ends, each holds its slot until then; the
                # grant in the future keeps them from being taken as stale meanwhile.
                until = now + seconds
                await conn.execute(
                    submit_turns.insert(),
                    [
                        {
                            "id": secrets.token_hex(12),
                            "granted_at": until,
                            "answered_at": until - self._per,
                        }
                        for _ in range(self._rate)
                    ],
                )
        except Exception:
            log.warning("could not pause the other processes for %g s after a 429", seconds)

    async def acquire(self, *, bounded: bool = True) -> PaceTurn:
        local = await self._local.acquire(bounded=bounded)
        try:
            turn_id = await self._take()
        except BaseException:
            await local.done()
            raise
        return _SharedTurn(self, local, turn_id)

    async def _take(self) -> str:
        turn_id = secrets.token_hex(12)
        while True:
            async with self._engine.begin() as conn:
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PACE_LOCK)))
                now = float((await conn.execute(_NOW)).scalar_one())
                await conn.execute(
                    submit_turns.delete().where(
                        sa.or_(
                            submit_turns.c.answered_at <= now - self._per,
                            submit_turns.c.granted_at <= now - self._stale,
                        )
                    )
                )
                held = (await conn.execute(sa.select(submit_turns.c.answered_at))).scalars().all()
                if len(held) < self._rate:
                    await conn.execute(submit_turns.insert().values(id=turn_id, granted_at=now))
                    return turn_id
                answered = sorted(a for a in held if a is not None)
                wait = answered[0] + self._per - now if answered else IN_FLIGHT_POLL
            await self._sleep(max(wait, 0.001))

    async def _answered(self, turn_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                submit_turns.update()
                .where(submit_turns.c.id == turn_id)
                .values(answered_at=_NOW.scalar_subquery())
            )


class _SharedTurn:
    def __init__(self, pace: SharedPace, local: PaceTurn, turn_id: str) -> None:
        self._pace: SharedPace | None = pace
        self._local = local
        self._id = turn_id

    async def done(self) -> None:
        if self._pace is None:
            return
        pace, self._pace = self._pace, None
        try:
            await pace._answered(self._id)
        except Exception:
            # The turn then counts until it is stale: slower, never faster than the pace. A
            # failure here must not undo the request it paced (its task id is still to be kept).
            log.warning("could not record the answer of pace turn %s", self._id, exc_info=True)
        finally:
            await self._local.done()
