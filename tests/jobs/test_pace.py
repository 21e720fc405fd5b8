"""The vendor's pace as the vendor sees it: when the submissions arrive at the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from bot.jobs.coordination import Coordination
from bot.jobs.database import Database
from bot.jobs.leases import LEASE_SECONDS, new_owner
from bot.jobs.pace import IN_FLIGHT_POLL, SharedPace
from bot.jobs.store import JobStore
from bot.jobs.throttle import SubmitThrottle
from bot.jobs.tracker import Tracker
from tests.jobs.conftest import Rig, crowded_windows, postgres_schema

RATE, PER = 5, 1.0


async def thirty_at_once(rig: Rig, trackers: list[Tracker]) -> None:
    """30 generations asked for at once, spread over ``trackers``: all sent, none crowded."""
    outcomes = await asyncio.gather(
        *(
            trackers[n % len(trackers)].request_imagine(
                prompt=f"lighthouse {n}",
                options={"speed": "fast"},
                requester_id=n,
                guild_id=1,
                channel_id=555,
                status_message_id=None,
            )
            for n in range(30)
        )
    )
    assert all(o.job.upstream_task_id for o in outcomes)
    assert rig.sandbox.count("generate") == 30
    assert crowded_windows(rig.sandbox, ("generate",), RATE, PER) == []


async def test_no_window_at_the_api_holds_more_than_the_pace(rig: Rig) -> None:
    """30 generations at once, paced to 5 a second. Counted from each turn's grant, the
    requests went out a little after their grants, by however long their jobs took to be
    written, and the API saw 6 in less than a second; counted until each answer, never."""
    rig.sandbox.answer_delay = 0.02
    await thirty_at_once(rig, [rig.tracker(throttle=SubmitThrottle(RATE, PER, max_waiting=100))])


async def test_three_processes_on_postgresql_keep_the_pace_together(rig: Rig) -> None:
    """Three trackers, each with its own store engine (as three processes would have), share
    one API key: every one paces to 5 a second alone, and together they still send 5."""
    rig.sandbox.answer_delay = 0.02
    async with postgres_schema("pace_test") as engine:
        trackers = []
        for _ in range(3):
            made, owner = engine(), new_owner()
            local = SubmitThrottle(RATE, PER, max_waiting=100)
            pace = SharedPace(made, local, RATE, PER, owner=owner)
            trackers.append(
                rig.tracker(
                    store=JobStore(Database(made)),
                    throttle=pace,
                    lease_seconds=LEASE_SECONDS,
                    lease_owner=owner,
                )
            )
        await thirty_at_once(rig, trackers)
        for tracker in trackers:
            await tracker.close()


class Waited(Exception):
    """What the recording sleep raises: the wait it was asked for is all the test needs."""


async def test_a_429_met_by_one_process_pauses_every_process() -> None:
    async with postgres_schema("pace_test") as engine:
        met = SharedPace(
            engine(), SubmitThrottle(9, PER, max_waiting=9), RATE, PER, owner=new_owner()
        )
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            raise Waited

        other = SharedPace(
            engine(),
            SubmitThrottle(9, PER, max_waiting=9),
            RATE,
            PER,
            owner=new_owner(),
            sleep=sleep,
        )
        met.pause(30.0)
        await met.paused()
        # Before: the other process knew nothing of the 429 and sent at once.
        with pytest.raises(Waited):
            await other.acquire()
        assert len(waits) == 1 and 29.0 < waits[0] <= 30.0


async def test_a_turn_in_flight_counts_until_its_process_is_gone() -> None:
    """A turn whose answer is not in yet counts for as long as its process holds a live lease,
    however long that takes (a slow pool checkout, a pause); once the process is gone (its
    leases ran out), no more. Before: a turn granted more than 60 s ago stopped counting even
    while its process lived, and its paid call went out beside ``rate`` others."""
    async with postgres_schema("pace_test") as engine:
        now = time.time()

        def clock() -> float:
            return now

        def pace(
            owner: str, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        ) -> SharedPace:
            # A local throttle that never holds anyone back: the shared turns are under test.
            local = SubmitThrottle(9, 60.0, max_waiting=9)
            return SharedPace(engine(), local, 1, 10.0, owner=owner, clock=clock, sleep=sleep)

        slow = new_owner()
        # The slow process works on a job: its lease is live until a minute and a half from now.
        assert await Coordination(Database(engine())).claim_lease("its job", slow, ttl=90.0)
        await pace(slow).acquire()
        now += 61.0
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            raise Waited

        with pytest.raises(Waited):
            await pace(new_owner(), sleep).acquire()
        assert waits == [IN_FLIGHT_POLL]
        # The slow process died: its lease runs out, and its turn stops counting.
        now += 30.0
        turn = await asyncio.wait_for(pace(new_owner()).acquire(), timeout=5)
        await turn.done()
