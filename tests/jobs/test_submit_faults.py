"""Upstream faults at submission, pacing, per-user limits and shutdown, over loopback HTTP."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from bot.jobs.store import JobState
from bot.jobs.throttle import SubmitThrottle
from bot.jobs.types import CALLBACK_PATH, CallbackVerdict, Refused
from tests.jobs.conftest import Rig
from tests.jobs.test_tracker import USER, job_state, recorded_click, upscale
from tests.names import JobKind


class FrozenClock:
    """Time that moves only when the test says so, for a throttle that never frees by luck."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def short_nap(_seconds: float) -> None:
    await asyncio.sleep(0.005)


def frozen_throttle(clock: FrozenClock, *, rate: int, max_waiting: int) -> SubmitThrottle:
    return SubmitThrottle(rate, 10.0, max_waiting=max_waiting, clock=clock, sleep=short_nap)


async def test_rate_limited_submission_is_retried_and_taken_once(rig: Rig) -> None:
    tracker = rig.tracker()
    rig.sandbox.fail_next("generateUpscale", 429)
    rig.sandbox.fail_next("generateUpscale", 429)
    outcome = await upscale(tracker, rig.grid(), 2)
    assert outcome.job.state is JobState.SUBMITTED
    assert outcome.job.upstream_task_id is not None
    assert rig.sandbox.count("generateUpscale") == 3
    assert rig.publisher.failures == []


async def test_rate_limiting_that_does_not_end_fails_after_bounded_retries(rig: Rig) -> None:
    tracker = rig.tracker(submit_retry_delays=(0.01, 0.01))
    for _ in range(5):
        rig.sandbox.fail_next("generateUpscale", 429)
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.failed
    assert "busy" in (outcome.job.error or "")
    assert rig.sandbox.count("generateUpscale") == 3


async def wait_state(rig: Rig, job_id: str, state: JobState) -> None:
    for _ in range(500):
        if await job_state(rig, job_id) is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} is {await job_state(rig, job_id)}, not {state}")


async def known_grid(rig: Rig, task_id: str) -> None:
    """Store ``task_id`` as a grid this bot generated, so no record-info is needed to upscale it."""
    grid = await rig.store.create(
        kind=JobKind.IMAGINE, requester_id=1, guild_id=1, channel_id=1, deadline_seconds=60
    )
    await rig.store.transition(
        grid.id, (JobState.REQUESTED,), JobState.DELIVERED, upstream_task_id=task_id
    )


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_connection_is_retried_once_the_api_is_back(rig: Rig) -> None:
    port = _unused_port()
    tracker = rig.tracker(api_base=f"http://127.0.0.1:{port}", submit_retry_delays=(0.05,) * 40)
    parent = rig.grid()
    await known_grid(rig, parent)
    click = asyncio.create_task(upscale(tracker, parent, 1))
    # Nothing listens yet: wait until the tracker has put the job back to wait for a retry.
    await rig.publisher.wait_for(lambda: len(rig.publisher.statuses) == 1)
    await wait_state(rig, rig.publisher.statuses[0], JobState.REQUESTED)
    runner = web.AppRunner(rig.sandbox.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        outcome = await asyncio.wait_for(click, 5)
    finally:
        await runner.cleanup()
    assert outcome.job.state is JobState.SUBMITTED
    assert rig.sandbox.count("generateUpscale") == 1
    assert rig.publisher.failures == []


@pytest.mark.parametrize("code", [500, 455])
async def test_answer_that_may_hide_a_created_task_is_never_resent(rig: Rig, code: int) -> None:
    tracker = rig.tracker(deadline=0.6)
    follow_up = rig.publisher.follow_up()
    rig.sandbox.fail_next("generateUpscale", code)
    outcome = await upscale(tracker, rig.grid(), 3, follow_up=follow_up)
    assert outcome.job.state is JobState.SUBMITTING
    assert any("may have started" in text for text in rig.publisher.whispered)

    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    _, reason = rig.publisher.failures[0]
    assert "unknown" in reason
    assert rig.sandbox.count("generateUpscale") == 1
    assert await job_state(rig, outcome.job.id) is JobState.FAILED
    # It may have been paid: it stays counted against the requester's daily allowance.
    assert (await rig.store.ledger.member_uses(1, USER, 0.0))["upscale"] == 1


@pytest.mark.parametrize("code", [400, 422, 402])
async def test_a_request_the_api_did_not_take_is_given_back(rig: Rig, code: int) -> None:
    tracker = rig.tracker()
    rig.sandbox.fail_next("generateUpscale", code)
    outcome = await upscale(tracker, rig.grid(), 1)
    assert outcome.job.state is JobState.FAILED
    assert (await rig.store.ledger.member_uses(1, USER, 0.0))["upscale"] == 0


async def test_a_task_that_failed_at_midjourney_is_given_back(rig: Rig) -> None:
    tracker = rig.tracker()
    rig.sandbox.task_seconds = None
    outcome = await upscale(tracker, rig.grid(), 2)
    assert (await rig.store.ledger.member_uses(1, USER, 0.0))["upscale"] == 1
    assert outcome.job.upstream_task_id is not None
    rig.sandbox.fail(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    assert (await rig.store.ledger.member_uses(1, USER, 0.0))["upscale"] == 0


async def test_task_created_behind_a_500_is_delivered_by_its_callback(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    tracker = rig.tracker(deadline=30)
    rig.sandbox.fail_next("generateUpscale", 500)
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.job.state is JobState.SUBMITTING
    # The vendor did create the task after all and calls back with its id.
    created = rig.grid("the task the 500 hid")
    url = f"{rig.listener_url}{CALLBACK_PATH}{outcome.job.callback_secret}"
    body = {"code": 200, "msg": "success", "data": {"taskId": created, "resultUrls": []}}
    async with http.post(url, json=body) as response:
        assert response.status == 200
    await wait_state(rig, outcome.job.id, JobState.DELIVERED)
    job = await rig.store.get(outcome.job.id)
    assert job is not None and job.upstream_task_id == created
    assert len(rig.publisher.delivered) == 1
    assert rig.sandbox.count("generateUpscale") == 1


async def test_submissions_are_paced_queued_in_order_and_refused_when_the_queue_is_full(
    rig: Rig,
) -> None:
    clock = FrozenClock()
    tracker = rig.tracker(throttle=frozen_throttle(clock, rate=2, max_waiting=2))
    follow_up = rig.publisher.follow_up()
    grids = [rig.grid(f"grid {n}") for n in range(5)]
    clicks = [
        asyncio.create_task(upscale(tracker, grid, 0, user=100 + n, follow_up=follow_up))
        for n, grid in enumerate(grids)
    ]
    # Two go at once, two wait their turn, the fifth is told the queue is full.
    await rig.sandbox.wait_for_call("generateUpscale", 2)
    await rig.publisher.wait_for(
        lambda: (
            sum("Queued" in t for t in rig.publisher.whispered) == 2
            and sum("already waiting" in t for t in rig.publisher.whispered) == 1
        )
    )
    assert rig.sandbox.count("generateUpscale") == 2

    clock.now += 10
    results = await asyncio.gather(*clicks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, Refused)]
    failed = [r for r in results if not isinstance(r, Exception) and r.failed]
    submitted = [r for r in results if not isinstance(r, Exception) and not r.failed]
    assert len(refused) + len(failed) == 1
    assert len(submitted) == 4
    assert rig.sandbox.count("generateUpscale") == 4


async def test_a_full_queue_refuses_before_anything_is_stored(rig: Rig) -> None:
    clock = FrozenClock()
    throttle = frozen_throttle(clock, rate=1, max_waiting=1)
    tracker = rig.tracker(throttle=throttle)
    first = await upscale(tracker, rig.grid("a"), 0, user=1)
    waiting = asyncio.create_task(upscale(tracker, rig.grid("b"), 0, user=2))
    for _ in range(200):
        if throttle.waiting == 1:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(Refused, match="already waiting"):
        await upscale(tracker, rig.grid("c"), 0, user=3)
    assert len(rig.publisher.statuses) == 2
    clock.now += 10
    second = await waiting
    assert first.job.state is second.job.state is JobState.SUBMITTED


async def test_jobs_recovered_at_start_queue_even_beyond_the_bound(rig: Rig) -> None:
    jobs = [await recorded_click(rig, rig.grid(f"g{n}"), 0) for n in range(3)]
    clock = FrozenClock()
    tracker = rig.tracker(throttle=frozen_throttle(clock, rate=1, max_waiting=0))
    assert await tracker.recover() == 3
    # A turn counts from its answer: the clock moves once the job has recorded it.
    for n in (1, 2, 3):
        await rig.sandbox.wait_for_call("generateUpscale", n)
        for _ in range(500):
            states = [await job_state(rig, job.id) for job in jobs]
            if states.count(JobState.SUBMITTED) == n:
                break
            await asyncio.sleep(0.01)
        assert states.count(JobState.SUBMITTED) == n, states
        clock.now += 10
    assert rig.sandbox.count("generateUpscale") == 3


async def test_a_user_has_at_most_the_set_number_of_jobs_in_flight(rig: Rig) -> None:
    tracker = rig.tracker(max_jobs_per_user=2)
    parent = rig.grid()
    one = await upscale(tracker, parent, 0)
    await upscale(tracker, parent, 1)
    with pytest.raises(Refused, match="already have 2 jobs"):
        await upscale(tracker, parent, 2)
    # A click on an image already being upscaled is a duplicate, not a refusal.
    again = await upscale(tracker, parent, 0)
    assert not again.created and again.job.id == one.job.id
    # Someone else is not held back by this user's jobs.
    other = await upscale(tracker, parent, 2, user=7)
    assert other.created and not other.failed

    assert one.job.upstream_task_id is not None
    rig.sandbox.complete(one.job.upstream_task_id)
    # Posted is not yet finished: the job counts until its move to DELIVERED is stored.
    await wait_state(rig, one.job.id, JobState.DELIVERED)
    third = await upscale(tracker, parent, 3)
    assert third.created and not third.failed
    assert rig.sandbox.count("generateUpscale") == 4


async def test_concurrent_clicks_of_one_user_never_pass_the_limit(rig: Rig) -> None:
    tracker = rig.tracker(max_jobs_per_user=3)
    grids = [rig.grid(f"g{n}") for n in range(10)]
    results = await asyncio.gather(
        *(upscale(tracker, grid, 0) for grid in grids), return_exceptions=True
    )
    taken = [r for r in results if not isinstance(r, BaseException)]
    assert len(taken) == 3
    assert all(isinstance(r, Refused) for r in results if isinstance(r, BaseException))
    assert rig.sandbox.count("generateUpscale") == 3


async def test_shutdown_refuses_new_work_and_lets_a_post_under_way_finish(rig: Rig) -> None:
    tracker = rig.tracker()
    gate = asyncio.Event()
    rig.publisher.delivery_gate = gate
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.job.upstream_task_id is not None
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: rig.publisher.delivering == 1)

    closing = asyncio.create_task(tracker.close(grace=5))
    await asyncio.sleep(0)
    with pytest.raises(Refused, match="restarting"):
        await upscale(tracker, rig.grid("late"), 0)
    assert not closing.done()
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert await job_state(rig, outcome.job.id) is JobState.DELIVERED


async def test_shutdown_grace_is_bounded_and_the_job_resumes_later(rig: Rig) -> None:
    tracker = rig.tracker()
    rig.publisher.delivery_gate = asyncio.Event()
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.job.upstream_task_id is not None
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: rig.publisher.delivering == 1)

    await asyncio.wait_for(tracker.close(grace=0.1), 5)
    assert await job_state(rig, outcome.job.id) is JobState.SUCCEEDED

    rig.publisher.delivery_gate = None
    restarted = rig.tracker()
    assert await restarted.recover() == 1
    await wait_state(rig, outcome.job.id, JobState.DELIVERED)


async def test_polling_rides_out_record_info_errors_until_the_task_is_done(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=False)
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.job.upstream_task_id is not None
    faults = (500, 455, 429, 401, 502)
    for code in faults:
        rig.sandbox.fail_next("record-info", code)
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await wait_state(rig, outcome.job.id, JobState.DELIVERED)
    assert rig.sandbox.count("record-info") >= len(faults) + 1
    assert rig.publisher.failures == []


async def test_a_callback_during_shutdown_is_kept_for_the_next_start(rig: Rig) -> None:
    tracker = rig.tracker()
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.job.upstream_task_id is not None
    await tracker.close()
    rig.sandbox.complete(outcome.job.upstream_task_id)
    # The listener may still take a callback after the watchers stopped: no error, no work.
    verdict = await tracker.on_callback(outcome.job.callback_secret, outcome.job.upstream_task_id)
    assert verdict is CallbackVerdict.ACCEPTED
    assert await job_state(rig, outcome.job.id) is JobState.SUBMITTED

    restarted = rig.tracker()
    await restarted.recover()
    await wait_state(rig, outcome.job.id, JobState.DELIVERED)
