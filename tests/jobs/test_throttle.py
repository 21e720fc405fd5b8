"""The submission pacer, on a clock that moves only when someone sleeps: no real waiting."""

from __future__ import annotations

import asyncio

import pytest

from bot.jobs.throttle import QueueFull, SubmitThrottle


class SleepyClock:
    """A clock whose sleep() moves time forward instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def done_at_once(pacer: SubmitThrottle) -> None:
    await (await pacer.acquire()).done()


def throttle(clock: SleepyClock, rate: int = 20, per: float = 10.0, waiting: int = 100):
    return SubmitThrottle(rate, per, max_waiting=waiting, clock=clock, sleep=clock.sleep)


async def test_twenty_in_ten_seconds_then_each_waits_for_a_slot() -> None:
    clock = SleepyClock()
    pacer = throttle(clock)
    granted: list[float] = []
    for _ in range(45):
        await (await pacer.acquire(bounded=False)).done()
        granted.append(clock.now)
    assert granted[:20] == [0.0] * 20
    # No window of 10 s ever holds more than 20 grants.
    for i in range(len(granted) - 20):
        assert granted[i + 20] - granted[i] >= 10.0
    assert granted[20] == pytest.approx(10.0)
    assert granted[40] == pytest.approx(20.0)


async def test_waiters_are_served_in_the_order_they_came() -> None:
    clock = SleepyClock()
    pacer = throttle(clock, rate=1, per=1.0)
    order: list[int] = []

    async def submit(n: int) -> None:
        await (await pacer.acquire()).done()
        order.append(n)

    await asyncio.gather(*(submit(n) for n in range(8)))
    assert order == list(range(8))


async def test_the_queue_is_bounded_and_says_so_before_anyone_waits() -> None:
    clock = SleepyClock()
    pacer = throttle(clock, rate=1, per=60.0, waiting=2)
    await (await pacer.acquire()).done()
    assert pacer.busy() and not pacer.full()
    # Blocked forever unless the clock moves: this clock moves only inside sleep().
    first = asyncio.create_task(done_at_once(pacer))
    second = asyncio.create_task(done_at_once(pacer))
    await asyncio.sleep(0)
    assert pacer.waiting == 2 and pacer.full()
    with pytest.raises(QueueFull):
        await pacer.acquire()
    await asyncio.gather(first, second)
    assert pacer.waiting == 0


async def test_work_accepted_earlier_may_queue_beyond_the_bound() -> None:
    clock = SleepyClock()
    pacer = throttle(clock, rate=1, per=5.0, waiting=0)
    await (await pacer.acquire()).done()
    with pytest.raises(QueueFull):
        await pacer.acquire()
    await (await pacer.acquire(bounded=False)).done()
    assert clock.now == pytest.approx(5.0)


async def test_a_pause_after_rate_limiting_holds_everyone() -> None:
    clock = SleepyClock()
    pacer = throttle(clock)
    await (await pacer.acquire()).done()
    pacer.pause(7.0)
    assert pacer.delay() == pytest.approx(7.0)
    await (await pacer.acquire()).done()
    assert clock.now == pytest.approx(7.0)
    # A shorter pause does not cut a longer one short.
    pacer.pause(3.0)
    pacer.pause(1.0)
    assert pacer.delay() == pytest.approx(3.0)


def test_nonsense_settings_are_refused() -> None:
    for rate, per, waiting in ((0, 10.0, 5), (20, 0.0, 5), (20, 10.0, -1)):
        with pytest.raises(ValueError):
            SubmitThrottle(rate, per, max_waiting=waiting)


async def test_a_turn_counts_until_its_answer_and_for_the_window_after() -> None:
    """The vendor counts a request when it arrives, at the latest when its answer comes: a
    request sent late after its grant must not let the next window's first one come early."""
    clock = SleepyClock()
    pacer = throttle(clock, rate=2, per=10.0)
    slow, quick = await pacer.acquire(), await pacer.acquire()
    await quick.done()
    clock.now = 3.0  # the slow one's answer takes 3 s
    await slow.done()
    await slow.done()  # a second done() changes nothing
    granted = []
    for _ in range(2):
        await (await pacer.acquire()).done()
        granted.append(clock.now)
    # The quick one's slot frees at 10 s, the slow one's at 13 s, not at 10.
    assert granted == [pytest.approx(10.0), pytest.approx(13.0)]


async def test_with_every_slot_in_flight_the_next_waits_for_an_answer() -> None:
    clock = SleepyClock()
    pacer = throttle(clock, rate=1, per=10.0)
    flying = await pacer.acquire()
    assert pacer.delay() is None and pacer.busy()
    waiter = asyncio.create_task(done_at_once(pacer))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done() and clock.slept == []
    await flying.done()
    await waiter
    assert clock.now == pytest.approx(10.0)
