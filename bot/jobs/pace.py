"""The vendor's pace shared by every process on one PostgreSQL store.

The vendor allows ``MJ_SUBMIT_RATE`` new tasks per 10 s per API key, whichever process sends
them. Each process keeps its own queue (SubmitThrottle: arrival order, the bound, the "queued
behind N" note); at its turn a submission also takes a turn in the table ``submit_turns``, under
an advisory lock, and only while fewer than ``rate`` rows are in flight or were answered within
the window. Times are the database's clock, the one clock every process shares. A row stays in
flight until its answer is in, however long that takes (a slow pool checkout, a pause), for as
long as its process lives: its id starts with the process's lease owner, and it stops counting
only once that owner holds no live lease in ``leases`` (its process died; one frozen for longer
than its leases counts as gone, as it does for its jobs). A 429 is about the API
key, not the process that met it: its pause is written as ``rate`` turns that run until the
pause ends, which hold back every process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.jobs.leases import OWNER_CHARS
from bot.jobs.tables import leases, submit_turns
from bot.jobs.throttle import PaceTurn, SubmitThrottle

log = logging.getLogger(__name__)

# The transaction-scoped advisory lock the turns are taken under (distinct from the schema's and
# the admission locks).
PACE_LOCK = 0x6D6A_5041_4345_0001
# How often a submission looks again while every turn is in flight (no answer time to wait for).
IN_FLIGHT_POLL = 0.05
# How often the answer of a turn is written again after the store refused it.
ANSWER_RETRY = 1.0

_NOW = sa.select(sa.func.extract("epoch", sa.func.clock_timestamp()))


class SharedPace:
    def __init__(
        self,
        engine: AsyncEngine,
        local: SubmitThrottle,
        rate: int,
        per: float,
        *,
        owner: str,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if len(owner) != OWNER_CHARS:
            raise ValueError(f"a lease owner is {OWNER_CHARS} characters, not {owner!r}")
        self._engine = engine
        self._local = local
        self._rate = rate
        self._per = per
        self._owner = owner
        self._turns = itertools.count()
        # None: the database's clock, the one every process shares (tests set their own).
        self._clock = clock
        self._sleep = sleep
        self._pausing: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Task[None]] = set()
        self._taking = asyncio.Lock()

    @property
    def waiting(self) -> int:
        return self._local.waiting

    def busy(self) -> bool:
        return self._local.busy()

    def full(self) -> bool:
        return self._local.full()

    def _new_id(self) -> str:
        """A turn's id: this process's lease owner, then a count of its turns (the table has no
        owner column, and create_all cannot add one to a table that exists)."""
        return f"{self._owner}{next(self._turns) % 2**32:08x}"

    async def _now(self, conn: AsyncConnection) -> float:
        if self._clock is not None:
            return self._clock()
        return float((await conn.execute(_NOW)).scalar_one())

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
                now = await self._now(conn)
                # Answered a window before the pause ends, each holds its slot until then; the
                # grant in the future keeps them from being taken as stale meanwhile.
                until = now + seconds
                await conn.execute(
                    submit_turns.insert(),
                    [
                        {
                            "id": self._new_id(),
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
        # One of this process's submissions at a time waits on the pace's lock: each waiting
        # one would hold a pooled connection the writes after a paid answer need.
        async with self._taking:
            return await self._take_turn()

    async def _take_turn(self) -> str:
        turn_id = self._new_id()
        while True:
            async with self._engine.begin() as conn:
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PACE_LOCK)))
                now = await self._now(conn)
                # A turn's process is gone when it holds no live lease (its job's, its shards'):
                # only then may a turn still in flight stop counting.
                owner_alive = (
                    sa.select(leases.c.name)
                    .where(
                        leases.c.owner == sa.func.substr(submit_turns.c.id, 1, OWNER_CHARS),
                        leases.c.until >= now,
                    )
                    .exists()
                )
                await conn.execute(
                    submit_turns.delete().where(
                        sa.or_(
                            submit_turns.c.answered_at <= now - self._per,
                            sa.and_(submit_turns.c.answered_at.is_(None), ~owner_alive),
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

    def _answer_later(self, turn_id: str) -> None:
        # A turn in flight counts for as long as this process lives: one whose answer was never
        # written would hold a slot of every process's pace until then.
        task = asyncio.ensure_future(self._answer_until_written(turn_id))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer_until_written(self, turn_id: str) -> None:
        while True:
            await asyncio.sleep(ANSWER_RETRY)
            try:
                await self._answered(turn_id)
            except Exception:
                continue
            return

    async def _answered(self, turn_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                submit_turns.update()
                .where(submit_turns.c.id == turn_id)
                .values(answered_at=await self._now(conn))
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
            # A failure here must not undo the request it paced (its task id is still to be
            # kept). Until written, the turn counts: slower, never faster than the pace.
            log.warning(
                "could not record the answer of pace turn %s; retrying", self._id, exc_info=True
            )
            pace._answer_later(self._id)
        finally:
            await self._local.done()
