"""The job lifecycle over loopback HTTP: sandbox API + listener + store + tracker."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bot.jobs import texts
from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.servers import Servers
from bot.jobs.spending import Rules, Spending
from bot.jobs.store import Job, JobState
from bot.jobs.tracker import Tracker
from bot.jobs.types import CALLBACK_PATH, DeliveryError, Outcome, PollPolicy, Refused
from tests.jobs.conftest import Rig
from tests.names import JobKind

CHANNEL = 555
USER = 42


async def upscale(tracker: Tracker, parent: str, index: int, user: int = USER, **kw: object):
    return await tracker.request_on_grid(
        JobKind.UPSCALE,
        parent_task_id=parent,
        image_index=index,
        requester_id=user,
        guild_id=1,
        channel_id=CHANNEL,
        grid_message_id=kw.pop("grid_message_id", 777),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def recorded_click(rig: Rig, parent: str, index: int) -> Job:
    return await rig.recorded(JobKind.UPSCALE, parent, index, user=USER)


async def job_state(rig: Rig, job_id: str) -> JobState:
    job = await rig.store.get(job_id)
    assert job is not None
    return job.state


async def test_callback_path_confirms_with_record_info_and_delivers_once(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    outcome = await upscale(tracker, parent, 1)
    assert outcome.created and outcome.job.state is JobState.SUBMITTED

    calls = [c for c in rig.sandbox.calls if c.endpoint == "generateUpscale"]
    assert len(calls) == 1
    body = calls[0].body
    assert body["taskId"] == parent and body["imageIndex"] == 1
    assert body["callBackUrl"] == f"{rig.listener_url}{CALLBACK_PATH}{outcome.job.callback_secret}"
    assert "waterMark" not in body

    record_calls_before = rig.sandbox.count("record-info")
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    job = await rig.store.get(outcome.job.id)
    assert job is not None and job.state is JobState.DELIVERED
    assert job.result_message_id is not None
    assert len(job.result_urls) == 1 and job.result_urls[0].endswith("_0_0.png")
    # The callback only rang the bell: record-info was asked before posting.
    assert rig.sandbox.count("record-info") > record_calls_before
    assert [j.id for j in rig.publisher.delivered] == [job.id]
    assert job.prompt is None or job.prompt == "a red fox in snow"


async def test_repeated_callbacks_post_nothing_twice(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    outcome = await upscale(tracker, rig.grid(), 0)
    task_id = outcome.job.upstream_task_id
    rig.sandbox.complete(task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    for attempt in (2, 3):
        rig.sandbox.resend_callback(task_id)
        attempts = await rig.sandbox.wait_for_callback(task_id, n=attempt)
        assert attempts[-1].status == 200
    await tracker.wait_idle()
    assert len(rig.publisher.delivered) == 1


async def test_polling_path_without_public_url(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=False)
    outcome = await upscale(tracker, rig.grid(), 3)
    body = next(c.body for c in rig.sandbox.calls if c.endpoint == "generateUpscale")
    assert "callBackUrl" not in body
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    assert await job_state(rig, outcome.job.id) is JobState.DELIVERED
    assert rig.sandbox.callback_attempts == []


async def test_late_callback_is_covered_by_polling(rig: Rig) -> None:
    # Callbacks are expected but never come (the sandbox has no URL to call: it was lost).
    tracker = rig.tracker(callbacks=True)
    outcome = await upscale(tracker, rig.grid(), 2)
    rig.listener.tracker = None  # the listener answers 503: the vendor's callback is lost
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    assert await job_state(rig, outcome.job.id) is JobState.DELIVERED


async def test_unknown_secret_is_404_and_changes_nothing(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    outcome = await upscale(tracker, rig.grid(), 0)
    body = {"code": 200, "msg": "success", "data": {"taskId": outcome.job.upstream_task_id}}
    async with aiohttp.ClientSession() as http:
        for secret in ("x" * 32, "not/valid", "A" * 100):
            url = f"{rig.listener_url}{CALLBACK_PATH}{secret}"
            async with http.post(url, json=body) as response:
                assert response.status == 404
    assert await job_state(rig, outcome.job.id) is JobState.SUBMITTED
    assert rig.publisher.delivered == []


async def test_callback_naming_another_task_is_ignored(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True, poll=rig_poll_never())
    outcome = await upscale(tracker, rig.grid(), 0)
    other = rig.grid("another")
    url = f"{rig.listener_url}{CALLBACK_PATH}{outcome.job.callback_secret}"
    body = {"code": 200, "msg": "success", "data": {"taskId": other, "resultUrls": []}}
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        assert response.status == 409
    job = await rig.store.get(outcome.job.id)
    assert job is not None and job.upstream_task_id == outcome.job.upstream_task_id
    assert job.state is JobState.SUBMITTED


def rig_poll_never() -> PollPolicy:
    return PollPolicy(first_with_callback=3600, interval=3600, steady_for=0, max_interval=3600)


async def test_concurrent_clicks_make_one_api_call(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    outcomes = await asyncio.gather(*(upscale(tracker, parent, 1, user=u) for u in range(30)))
    assert sum(o.created for o in outcomes) == 1
    assert rig.sandbox.count("generateUpscale") == 1
    job_ids = {o.job.id for o in outcomes}
    assert len(job_ids) == 1
    # A different image of the same grid is a different job.
    other = await upscale(tracker, parent, 2)
    assert other.created and rig.sandbox.count("generateUpscale") == 2


async def test_click_after_delivery_points_to_the_result(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    first = await upscale(tracker, parent, 0)
    rig.sandbox.complete(first.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    again = await upscale(tracker, parent, 0, user=7)
    assert not again.created
    assert again.job.state is JobState.DELIVERED and again.job.result_message_id is not None
    assert rig.sandbox.count("generateUpscale") == 1


async def test_api_refusal_fails_the_job_tells_the_user_and_allows_a_retry(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    rig.sandbox.fail_next("generateUpscale", 402)
    follow_up = rig.publisher.follow_up()
    outcome = await upscale(tracker, parent, 0, follow_up=follow_up)
    assert outcome.failed
    assert "out of credits" in (outcome.job.error or "")
    assert rig.publisher.whispered == [outcome.job.error]
    retry = await upscale(tracker, parent, 0)
    assert retry.created and retry.job.state is JobState.SUBMITTED


async def test_every_refusal_that_took_nothing_is_said_plainly_at_once(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    reasons = {}
    for code in (401, 402, 404, 422, 501, 505):
        rig.sandbox.fail_next("generateUpscale", code)
        outcome = await upscale(tracker, parent, 0)
        assert outcome.failed, code
        reasons[code] = outcome.job.error
    assert len(set(reasons.values())) == len(reasons)
    assert rig.sandbox.count("generateUpscale") == len(reasons)


async def test_failed_task_is_reported(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    outcome = await upscale(tracker, rig.grid(), 0)
    rig.sandbox.fail(outcome.job.upstream_task_id, "upscale exploded")
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    job = await rig.store.get(outcome.job.id)
    assert job is not None and job.state is JobState.FAILED
    assert "upscale exploded" in (job.error or "")
    assert rig.publisher.delivered == []


async def test_deadline_fails_a_job_with_no_outcome(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=False, deadline=0.3)
    outcome = await upscale(tracker, rig.grid(), 0)
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    job = await rig.store.get(outcome.job.id)
    assert job is not None and job.state is JobState.FAILED
    assert "no result" in (job.error or "")


async def test_upscale_of_an_unknown_task_costs_nothing(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    outcome = await upscale(tracker, "0123456789abcdef0123456789abcdef", 0, grid_message_id=None)
    assert outcome.failed and "unknown" in (outcome.job.error or "")
    assert rig.sandbox.count("generateUpscale") == 0


async def test_upscale_of_a_foreign_task_takes_its_prompt(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid("a lighthouse at dusk")
    outcome = await upscale(tracker, parent, 3, grid_message_id=None)
    assert outcome.job.state is JobState.SUBMITTED
    assert outcome.job.prompt == "a lighthouse at dusk"


async def test_a_live_job_of_another_server_is_neither_told_nor_paid_again(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True, max_jobs_per_user=1)
    parent = rig.grid("made outside the bot")

    async def click(index: int, user: int, guild: int) -> Outcome:
        return await tracker.request_on_grid(
            JobKind.UPSCALE,
            parent_task_id=parent,
            image_index=index,
            requester_id=user,
            guild_id=guild,
            channel_id=CHANNEL,
            grid_message_id=None,
        )

    first = await click(0, USER, guild=1)
    # In the same server a second click is told of the job, as ever.
    assert (await click(0, USER + 1, guild=1)).job.id == first.job.id
    with pytest.raises(Refused) as elsewhere:
        await click(0, USER + 2, guild=2)
    assert elsewhere.value.reason == texts.asked_elsewhere(JobKind.UPSCALE)
    # Over his own limit, a member of the other server hears of that limit, not of the job.
    await click(1, USER + 3, guild=2)
    with pytest.raises(Refused) as limited:
        await click(0, USER + 3, guild=2)
    assert limited.value.reason == texts.too_many_running(1)
    assert rig.sandbox.count("generateUpscale") == 2


async def test_recovery_after_restart_delivers_submitted_jobs_once(rig: Rig) -> None:
    first = rig.tracker(callbacks=False, poll=rig_poll_never())
    parent = rig.grid()
    jobs = [(await upscale(first, parent, i)).job for i in range(3)]
    await first.close()  # the bot stops; its watchers die with it
    for job in jobs:
        rig.sandbox.complete(job.upstream_task_id)

    second = rig.tracker(callbacks=False)
    assert await second.recover() == 3
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 3)
    for job in jobs:
        assert await job_state(rig, job.id) is JobState.DELIVERED
    assert sorted(j.id for j in rig.publisher.delivered) == sorted(j.id for j in jobs)
    assert rig.sandbox.count("generateUpscale") == 3


async def test_recovery_submits_a_recorded_but_unsent_click(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    # The click was recorded, then the bot died before the API call.
    job = await recorded_click(rig, parent, 1)
    assert await tracker.recover() == 1
    # The grid is marked once the API has answered and the task id is stored.
    await rig.publisher.wait_for(lambda: len(rig.publisher.marked) == 1)
    assert rig.sandbox.count("generateUpscale") == 1
    current = await rig.store.get(job.id)
    assert current is not None
    rig.sandbox.complete(current.upstream_task_id or "")
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    assert await job_state(rig, job.id) is JobState.DELIVERED


async def test_crash_after_the_api_call_is_completed_by_its_callback(rig: Rig) -> None:
    """The API took the upscale but the bot died before saving the task id: the callback,
    which carries the job's secret, still finds the job, and nothing is submitted again."""
    tracker = rig.tracker(callbacks=True, poll=rig_poll_never())
    parent = rig.grid()
    job = await recorded_click(rig, parent, 0)
    claimed = await rig.store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
    assert claimed is not None
    # What the dead bot had sent:
    task_id = await rig.post_to_api(
        "generateUpscale",
        {"taskId": parent, "imageIndex": 0, "callBackUrl": tracker.callback_url(job)},
    )
    assert await tracker.recover() == 1
    rig.sandbox.complete(task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    current = await rig.store.get(job.id)
    assert current is not None and current.state is JobState.DELIVERED
    assert current.upstream_task_id == task_id
    assert rig.sandbox.count("generateUpscale") == 1


async def test_delivery_is_retried_then_given_up_with_a_reason(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    rig.publisher.delivery_errors = [
        DeliveryError("discord hiccup", retry=True),
        DeliveryError("the result file is not an image", retry=False),
    ]
    outcome = await upscale(tracker, rig.grid(), 0)
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1, timeout=10)
    job = await rig.store.get(outcome.job.id)
    assert job is not None and job.state is JobState.FAILED
    assert job.error == "the result file is not an image"


async def test_imagine_generates_and_delivers_four_images(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True)
    outcome = await tracker.request_imagine(
        prompt="a castle on a cloud",
        options={"speed": "turbo", "aspect_ratio": "16:9", "version": "7"},
        requester_id=USER,
        guild_id=1,
        channel_id=CHANNEL,
        status_message_id=9,
    )
    body = next(c.body for c in rig.sandbox.calls if c.endpoint == "generate")
    assert body["taskType"] == "mj_txt2img" and body["prompt"] == "a castle on a cloud"
    assert body["speed"] == "turbo" and body["aspectRatio"] == "16:9" and body["version"] == "7"
    assert rig.publisher.statuses == []  # the /imagine reply already is the status message
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    delivered = rig.publisher.delivered[0]
    assert len(delivered.result_urls) == 4


async def test_watermark_is_passed_with_every_upscale(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=False, watermark="my-server")
    parent = rig.grid()
    await upscale(tracker, parent, 0)
    await upscale(tracker, parent, 1)
    bodies = [c.body for c in rig.sandbox.calls if c.endpoint == "generateUpscale"]
    assert [b["waterMark"] for b in bodies] == ["my-server", "my-server"]


async def test_a_secret_without_this_bots_tag_is_404_even_when_a_job_has_it(rig: Rig) -> None:
    """The tag is checked before the store: a job from before tagged secrets (or a forgery of
    the right shape) is not looked up; polling finishes such a job."""
    tracker = rig.tracker(callbacks=True)
    parent = rig.grid()
    untagged = await rig.store.create(
        kind=JobKind.UPSCALE,
        parent_task_id=parent,
        image_index=2,
        requester_id=USER,
        guild_id=1,
        channel_id=CHANNEL,
        grid_message_id=777,
        deadline_seconds=60,
    )
    assert await rig.store.by_secret(untagged.callback_secret) == untagged
    body = {"code": 200, "msg": "success", "data": {"taskId": parent}}
    forged = rig.callback_secrets.new()[:-1] + "A"
    async with aiohttp.ClientSession() as http:
        for secret in (untagged.callback_secret, forged):
            url = f"{rig.listener_url}{CALLBACK_PATH}{secret}"
            async with http.post(url, json=body) as response:
                assert response.status == 404
    assert await job_state(rig, untagged.id) is JobState.REQUESTED

    assert await tracker.recover() == 1
    await rig.publisher.wait_for(lambda: len(rig.publisher.marked) == 1)
    current = await rig.store.get(untagged.id)
    assert current is not None and current.upstream_task_id
    rig.sandbox.complete(current.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    assert await job_state(rig, untagged.id) is JobState.DELIVERED
    attempts = await rig.sandbox.wait_for_callback(current.upstream_task_id)
    assert [a.status for a in attempts][:1] == [404]


async def test_after_the_bot_token_changes_jobs_in_flight_finish_by_polling(rig: Rig) -> None:
    first = rig.tracker(callbacks=True, poll=rig_poll_never())
    outcome = await upscale(first, rig.grid(), 0)
    await first.close()

    rig.callback_secrets = CallbackSecrets.from_token("another-token-" * 4)
    second = rig.tracker(callbacks=True)
    assert await second.recover() == 1
    task_id = outcome.job.upstream_task_id or ""
    rig.sandbox.complete(task_id)
    attempts = await rig.sandbox.wait_for_callback(task_id)
    assert attempts[0].status == 404
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    assert await job_state(rig, outcome.job.id) is JobState.DELIVERED
    assert rig.sandbox.count("generateUpscale") == 1


async def test_a_job_that_waited_while_its_server_was_closed_is_never_sent(rig: Rig) -> None:
    # The owner closed the server (or dropped it from ALLOWED_GUILD_IDS) while a click waited
    # for its turn or for a restart: nothing of it is paid yet, so nothing is.
    servers = Servers(rig.store.engine, allowed=())
    spending = Spending(rig.store.ledger, Rules(), servers=servers)
    tracker = rig.tracker(callbacks=True, spending=spending)
    job = await recorded_click(rig, rig.grid(), 1)
    await rig.store.update(job.id, created_at=time.time() - 60)
    assert await tracker.recover() == 1
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    assert rig.sandbox.count("generateUpscale") == 0
    assert await job_state(rig, job.id) is JobState.FAILED
    assert "has not enabled it in this server" in rig.publisher.failures[0][1]
    assert await rig.store.ledger.member_uses(1, USER, 0) == {
        "generation": 0,
        "upscale": 0,
        "video": 0,
    }


async def ring_by_callback(rig: Rig, job: Job) -> None:
    """The vendor's callback for ``job``, as it posts it; returns once the bot answered."""
    url = f"{rig.listener_url}{CALLBACK_PATH}{job.callback_secret}"
    body = {"code": 200, "msg": "success", "data": {"taskId": job.upstream_task_id}}
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        assert response.status == 200


def asked_about(rig: Rig, job: Job) -> int:
    """How many times record-info was asked about ``job``'s task."""
    return sum(
        1
        for call in rig.sandbox.calls
        if call.endpoint == "record-info" and call.body.get("taskId") == job.upstream_task_id
    )


async def test_a_task_just_taken_is_not_asked_about_before_its_callback(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True, poll=rig_poll_never())
    outcome = await upscale(tracker, rig.grid(), 0)
    assert outcome.created and outcome.job.state is JobState.SUBMITTED
    await asyncio.sleep(0.3)
    # A task the API took a moment ago is not done: asking would be a request and a read for
    # nothing, on every job.
    assert asked_about(rig, outcome.job) == 0
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.delivered) == 1)
    assert asked_about(rig, outcome.job) == 1


async def test_a_callback_while_record_info_is_asked_is_not_lost(rig: Rig) -> None:
    tracker = rig.tracker(callbacks=True, poll=rig_poll_never())
    outcome = await upscale(tracker, rig.grid(), 0)
    # An early callback (the vendor's retry, or one of a task still running) makes the watcher
    # ask; its answer, "not done yet", is kept back while the task finishes and calls back.
    hold = rig.sandbox.hold("record-info")
    await ring_by_callback(rig, outcome.job)
    await rig.sandbox.wait_held(hold)
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await ring_by_callback(rig, outcome.job)
    hold.release()
    # The second callback came while the first was being answered: it is not lost, and the
    # result is posted now, not at the next poll (an hour away here).
    await rig.publisher.wait_for(lambda: len(rig.publisher.delivered) == 1)
    assert asked_about(rig, outcome.job) == 2


async def test_a_task_answered_past_its_deadline_is_asked_about_before_it_expires(
    rig: Rig,
) -> None:
    """The paid call's answer (or the write of its task id) came late, its callback lost
    meanwhile: the job is past its deadline when first watched. It is not failed unseen: the
    task is asked about, found done, and posted."""
    tracker = rig.tracker(callbacks=True, poll=rig_poll_never(), deadline=2.0)
    hold = rig.sandbox.hold("generateUpscale")
    asking = asyncio.create_task(upscale(tracker, rig.grid(), 0))
    await rig.sandbox.wait_held(hold)
    task_id = rig.sandbox.tasks()[-1].task_id
    rig.listener.tracker = None  # the vendor's callback is refused (503), and given up
    rig.sandbox.complete(task_id)
    await asyncio.sleep(2.2)
    rig.listener.tracker = tracker
    hold.release()
    outcome = await asking
    # Tidied up after the post was stored as delivered.
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    assert await job_state(rig, outcome.job.id) is JobState.DELIVERED
