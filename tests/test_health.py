"""GET /healthz: the health decision (injected clock), its cost, and the real bot's answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.health import (
    GATEWAY_GRACE_SECONDS,
    STORE_CACHE_SECONDS,
    HealthMonitor,
    HealthReport,
    iso_time,
)
from bot.jobs.stats import JobStats
from bot.jobs.store import JobState, JobStore
from bot.web import Listener
from tests.harness import Harness, click, imagine, submitted
from tests.names import JobKind


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStore:
    """count_unfinished as the monitor sees it: a number, an error, or no answer."""

    def __init__(self, jobs: int = 0) -> None:
        self.jobs = jobs
        self.error: Exception | None = None
        self.hang = False
        self.calls = 0

    async def count_unfinished(self) -> int:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return self.jobs


def monitor(clock: FakeClock, store: FakeStore | None = None, **options: Any) -> HealthMonitor:
    health = HealthMonitor(clock=clock, **options)
    if store is not None:
        health.watch_store(store.count_unfinished)
    return health


async def fresh_check(health: HealthMonitor, clock: FakeClock) -> HealthReport:
    """A check that asks the store again rather than reusing the last answer."""
    clock.advance(STORE_CACHE_SECONDS)
    return await health.check()


# -- the decision ---------------------------------------------------------------------------------


async def test_connected_with_a_store_answering_is_healthy() -> None:
    clock, store = FakeClock(), FakeStore(jobs=3)
    health = monitor(clock, store)
    health.gateway_up()
    report = await health.check()
    assert report.http_status == 200
    assert report.body() == {
        "ok": True,
        "status": "ok",
        "gateway_connected": True,
        "gateway_down_seconds": None,
        "store_reachable": True,
        "jobs_in_flight": 3,
    }


async def test_gateway_down_30_s_is_still_healthy_but_says_so() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    health.gateway_up()
    health.gateway_down()
    clock.advance(30)
    report = await health.check()
    assert report.http_status == 200
    assert report.healthy and report.status == "reconnecting"
    assert report.gateway_connected is False
    assert report.body()["gateway_down_seconds"] == 30.0


async def test_gateway_down_61_s_is_503() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    health.gateway_up()
    health.gateway_down()
    clock.advance(GATEWAY_GRACE_SECONDS)
    assert (await health.check()).http_status == 200  # a minute exactly: not longer than one
    clock.advance(1)
    report = await health.check()
    assert report.http_status == 503
    assert report.status == "gateway down" and report.body()["ok"] is False
    assert report.gateway_down_seconds == 61
    # A resume makes it healthy at once; the next outage counts from its own start.
    health.gateway_up()
    assert (await health.check()).status == "ok"
    health.gateway_down()
    clock.advance(10)
    assert (await health.check()).status == "reconnecting"


async def test_repeated_disconnects_count_from_the_first() -> None:
    # discord.py dispatches a disconnect for every failed reconnection attempt as well.
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    health.gateway_up()
    health.gateway_down()
    for _ in range(4):
        clock.advance(20)
        health.gateway_down()
    assert (await health.check()).status == "gateway down"


async def test_store_failing_is_503() -> None:
    clock, store = FakeClock(), FakeStore(jobs=2)
    health = monitor(clock, store)
    health.gateway_up()
    store.error = OSError("connection refused")
    report = await health.check()
    assert report.http_status == 503
    assert report.status == "store unreachable"
    assert (report.store_reachable, report.jobs_in_flight) == (False, None)
    assert report.gateway_connected is True
    store.error = None
    assert (await fresh_check(health, clock)).body()["jobs_in_flight"] == 2


async def test_store_not_answering_within_the_timeout_is_503() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store, store_timeout=0.05)
    health.gateway_up()
    store.hang = True
    report = await asyncio.wait_for(health.check(), timeout=2)
    assert report.http_status == 503 and report.status == "store unreachable"


async def test_both_problems_are_named() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    health.gateway_up()
    health.gateway_down()
    clock.advance(GATEWAY_GRACE_SECONDS + 1)
    store.error = RuntimeError("gone")
    report = await health.check()
    assert report.http_status == 503
    assert report.status == "gateway down; store unreachable"


async def test_before_the_first_connection_it_is_starting_then_down() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    report = await health.check()
    assert report.http_status == 503 and report.status == "starting"
    assert report.gateway_connected is False and report.store_reachable is True
    clock.advance(GATEWAY_GRACE_SECONDS + 1)
    assert (await health.check()).status == "gateway down"
    health.gateway_up()
    assert (await health.check()).status == "ok"


async def test_without_a_store_yet_the_store_is_unreachable() -> None:
    clock = FakeClock()
    health = monitor(clock)
    health.gateway_up()
    report = await health.check()
    assert report.http_status == 503 and report.status == "store unreachable"


async def test_a_store_outage_logs_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    health.gateway_up()
    # The driver's message is not repeated: it may quote connection details.
    store.error = OSError("could not connect to postgresql://bot:hunter2@db")
    with caplog.at_level(logging.INFO, logger="bot.health"):
        for _ in range(3):
            await fresh_check(health, clock)
        store.error = None
        for _ in range(2):
            await fresh_check(health, clock)
    assert caplog.messages == [
        "health check: job store unreachable (OSError)",
        "health check: job store reachable again",
    ]
    assert "hunter2" not in caplog.text


# -- the cost -------------------------------------------------------------------------------------


async def test_checks_within_a_second_share_one_query() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store)
    health.gateway_up()
    reports = await asyncio.gather(*(health.check() for _ in range(50)))
    assert {r.http_status for r in reports} == {200}
    assert store.calls == 1
    clock.advance(STORE_CACHE_SECONDS / 2)
    await health.check()
    assert store.calls == 1
    clock.advance(STORE_CACHE_SECONDS / 2)
    await health.check()
    assert store.calls == 2


async def test_concurrent_checks_wait_for_one_slow_query() -> None:
    clock, store = FakeClock(), FakeStore()
    health = monitor(clock, store, store_timeout=0.05)
    health.gateway_up()
    store.hang = True
    reports = await asyncio.wait_for(
        asyncio.gather(*(health.check() for _ in range(20))), timeout=2
    )
    assert {r.status for r in reports} == {"store unreachable"}
    assert store.calls == 1


async def test_count_unfinished_is_one_count_of_the_open_states(tmp_path: Path) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/health.sqlite3")
    try:
        assert await JobStats(store.database).count_unfinished() == 0
        ids = []
        for n in range(6):
            job = await store.create(
                kind=JobKind.IMAGINE,
                requester_id=n,
                guild_id=1,
                channel_id=2,
                deadline_seconds=60,
                prompt="p",
            )
            ids.append(job.id)
        moves = [
            JobState.SUBMITTING,
            JobState.SUBMITTED,
            JobState.SUCCEEDED,
            JobState.DELIVERED,
            JobState.FAILED,
        ]
        for job_id, state in zip(ids[1:], moves, strict=True):
            assert await store.transition(job_id, (JobState.REQUESTED,), state) is not None
        # requested, submitting, submitted, succeeded: four; delivered and failed are done.
        assert await JobStats(store.database).count_unfinished() == 4
    finally:
        await store.close()


def test_iso_time() -> None:
    assert iso_time(None) is None
    assert iso_time(0) == "1970-01-01T00:00:00Z"
    assert iso_time(1738324800.75) == "2025-01-31T12:00:00Z"


# -- the listener ---------------------------------------------------------------------------------


class FixedHealth:
    def __init__(self, report: HealthReport) -> None:
        self.report = report

    async def check(self) -> HealthReport:
        return self.report


@pytest.mark.parametrize("healthy", [True, False])
async def test_listener_answers_with_the_report(http: aiohttp.ClientSession, healthy: bool) -> None:
    report = HealthReport(
        healthy=healthy,
        status="ok" if healthy else "gateway down",
        gateway_connected=healthy,
        gateway_down_seconds=None if healthy else 75.04,
        store_reachable=True,
        jobs_in_flight=5,
    )
    listener = Listener()
    listener.health = FixedHealth(report)
    port = await listener.start("127.0.0.1", 0)
    try:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == (200 if healthy else 503)
            assert await response.json() == {**report.body(), "last_callback_at": None}
        listener.last_callback_at = 0.0
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            body = await response.json()
            assert body["last_callback_at"] == "1970-01-01T00:00:00Z"
            assert body["gateway_down_seconds"] == (None if healthy else 75.0)
    finally:
        await listener.close()


# -- the real bot against the Discord double ------------------------------------------------------


Get = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


async def until(get: Get, check: Callable[[int, dict[str, Any]], bool]) -> dict[str, Any]:
    """Ask /healthz until ``check`` holds (the bot sees gateway events a moment after they
    happen); the last body."""
    for _ in range(200):
        status, body = await get()
        if check(status, body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"/healthz never satisfied the check; last: {status} {body}")


async def test_healthz_of_the_real_bot_follows_gateway_store_and_callbacks(
    harness: Harness, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    double, sandbox = harness.double, harness.sandbox
    # Production limits, a clock the test moves: a minute passes without waiting for it.
    clock = FakeClock()
    harness.bot_options["health"] = HealthMonitor(clock=clock)
    alice = double.add_user("alice")
    async with harness.running() as app:
        url = f"http://127.0.0.1:{app.services.listen_port}/healthz"

        async def get() -> tuple[int, dict[str, Any]]:
            async with http.get(url) as response:
                return response.status, await response.json()

        body = await until(get, lambda status, body: status == 200)
        assert body == {
            "ok": True,
            "status": "ok",
            "gateway_connected": True,
            "gateway_down_seconds": None,
            "store_reachable": True,
            "jobs_in_flight": 0,
            "last_callback_at": None,
        }

        # The sandbox calls the bot back when the generation is done.
        grid = await imagine(double, alice, "a lighthouse at dusk")
        body = await until(get, lambda _, body: body["last_callback_at"] is not None)
        assert body["last_callback_at"].endswith("Z")
        # An upscale still running is a job in flight.
        sandbox.task_seconds = None
        await click(double, grid, 1, alice)
        await submitted(double, grid, 1)
        clock.advance(STORE_CACHE_SECONDS)
        assert (await get())[1]["jobs_in_flight"] == 1

        # Keep the double from answering the bot's RESUME until the test lets it, so the outage
        # lasts as long as the test needs.
        resume = double._resume
        release = asyncio.Event()

        async def held_resume(*args: Any) -> None:
            await release.wait()
            await resume(*args)

        monkeypatch.setattr(double, "_resume", held_resume)
        await double.drop_gateway()
        body = await until(get, lambda _, body: body["gateway_connected"] is False)
        assert (body["ok"], body["status"], body["store_reachable"]) == (True, "reconnecting", True)
        status, body = await get()
        assert status == 200

        clock.advance(GATEWAY_GRACE_SECONDS + 1)
        status, body = await get()
        assert status == 503
        assert (body["ok"], body["status"], body["gateway_connected"]) == (
            False,
            "gateway down",
            False,
        )
        assert body["gateway_down_seconds"] >= GATEWAY_GRACE_SECONDS + 1

        release.set()
        await double.wait_until_connected()
        body = await until(get, lambda status, _: status == 200)
        assert (body["status"], body["gateway_connected"]) == ("ok", True)


async def test_a_standby_is_healthy_and_says_so() -> None:
    clock = FakeClock()
    health = monitor(clock, FakeStore())
    health.gateway_standby()
    clock.advance(GATEWAY_GRACE_SECONDS * 3)
    report = await health.check()
    assert report.healthy and report.status == "standby"


async def test_a_shard_let_go_is_no_outage_but_a_shard_down_is() -> None:
    clock = FakeClock()
    health = monitor(clock, FakeStore())
    health.gateway_up(0)
    health.gateway_up(1)
    # Shard 1 went to another process: its session closed on purpose, its disconnect event after.
    health.gateway_left(1)
    health.gateway_down(1)
    clock.advance(GATEWAY_GRACE_SECONDS + 1)
    assert (await health.check()).status == "ok"
    # Shard 0 drops and does not come back: that is an outage, whatever the other shards do.
    health.gateway_down(0)
    clock.advance(GATEWAY_GRACE_SECONDS + 1)
    report = await health.check()
    assert not report.healthy and report.status == "gateway down"
    health.gateway_up(0)
    assert (await health.check()).status == "ok"
