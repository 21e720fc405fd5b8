"""The image pool's guarantees: at most its workers at once, decoded pixels within the budget,
a slot held until its thread is done even when the caller went away. No test on time."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import Callable, Iterator

import PIL.Image
import pytest

from bot.delivery.fit import reencode
from bot.delivery.pool import ImagePool, PixelBudget


class Gate:
    """Work that blocks its thread until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.started = 0

    def work(self, value: int) -> int:
        with self._lock:
            self.now += 1
            self.started += 1
            self.most = max(self.most, self.now)
        self.release.wait(10)
        with self._lock:
            self.now -= 1
        return value * 2


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_no_more_threads_than_workers_and_every_result_comes_back() -> None:
    pool, gate = ImagePool(workers=2), Gate()
    calls = [asyncio.create_task(pool.run(gate.work, n)) for n in range(6)]
    await until(lambda: gate.started == 2, "two threads at work")
    # The others queue in the pool, not in threads.
    await asyncio.sleep(0.05)
    assert gate.started == 2 and pool.running == 2
    gate.release.set()
    assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8, 10]
    assert gate.most == 2
    assert pool.running == 0


async def test_a_failure_reaches_the_caller_and_frees_the_slot() -> None:
    pool = ImagePool(workers=1)

    def broken() -> None:
        raise ValueError("bad picture")

    with pytest.raises(ValueError, match="bad picture"):
        await pool.run(broken)
    assert pool.running == 0
    assert await pool.run(lambda: "next") == "next"


async def test_a_cancelled_caller_keeps_the_slot_until_its_thread_is_done() -> None:
    pool, gate = ImagePool(workers=1), Gate()
    first = asyncio.create_task(pool.run(gate.work, 1))
    await until(lambda: gate.started == 1, "the first thread at work")
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    second = asyncio.create_task(pool.run(gate.work, 2))
    await asyncio.sleep(0.05)
    # The thread of the cancelled call still runs: the next one waits for its slot.
    assert gate.started == 1 and pool.running == 1
    gate.release.set()
    assert await second == 4
    assert gate.most == 1 and pool.running == 0


def test_pixels_beyond_the_budget_wait_for_a_release() -> None:
    budget = PixelBudget(100)
    entered = threading.Event()

    def second() -> None:
        with budget.reserve(60):
            entered.set()

    with budget.reserve(60):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.05)
        assert budget.in_use == 60
    waiter.join(10)
    assert entered.is_set() and budget.in_use == 0


def test_an_image_larger_than_the_budget_runs_alone() -> None:
    budget = PixelBudget(100)
    with budget.reserve(10_000):
        assert budget.in_use == 100
    with budget.reserve(30), budget.reserve(30):
        assert budget.in_use == 60
    assert budget.in_use == 0


class Recording(PixelBudget):
    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self.reserved: list[int] = []

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        self.reserved.append(pixels)
        with super().reserve(pixels):
            yield


def noisy_png(width: int, height: int) -> bytes:
    picture = PIL.Image.merge("RGB", [PIL.Image.effect_noise((width, height), 60)] * 3)
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def test_a_reencode_reserves_its_pixels_and_gives_them_back() -> None:
    budget = Recording(10**9)
    data = noisy_png(640, 480)
    assert reencode(data, len(data) // 2, budget) is not None
    assert budget.reserved == [640 * 480]
    assert budget.in_use == 0


def test_a_refused_image_reserves_nothing() -> None:
    budget = Recording(10**9)
    with pytest.raises(Exception, match="not decodable"):
        reencode(b"\x89PNG\r\n\x1a\n" + b"junk" * 100, 1000, budget)
    assert budget.reserved == [] and budget.in_use == 0


async def test_reencodes_through_the_pool_share_its_budget() -> None:
    pool = ImagePool(workers=2, max_pixels=10**9)
    budget = Recording(10**9)
    pool.budget = budget
    data = noisy_png(512, 512)
    results = await asyncio.gather(
        *(pool.run(reencode, data, len(data) // 2, pool.budget) for _ in range(4))
    )
    assert all(r is not None for r in results)
    assert budget.reserved == [512 * 512] * 4 and budget.in_use == 0


def test_the_reencoded_bytes_are_those_pillow_encodes_in_memory() -> None:
    # The JPEG goes through a scratch file (the encoder then leaves the GIL): same bytes.
    data = noisy_png(300, 200)
    fitted = reencode(data, len(data) // 2)
    assert fitted is not None
    with PIL.Image.open(io.BytesIO(data)) as source:
        expected = io.BytesIO()
        source.convert("RGB").save(expected, "JPEG", quality=90, optimize=True)
    assert fitted == expected.getvalue()
