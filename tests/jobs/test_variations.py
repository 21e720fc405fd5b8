"""V1–V4 and 🔄 through the tracker, over loopback HTTP, against a sandbox that numbers the images
of generateVary from 0 and one that numbers them from 1 (the vendors' docs say both)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.jobs.coordination import Coordination
from bot.jobs.store import JobState, JobStore
from bot.jobs.throttle import SubmitThrottle
from bot.jobs.tracker import Tracker
from bot.jobs.types import Outcome, PollPolicy, Refused
from bot.jobs.vary_index import FACT
from tests.conftest import RunningSandbox, StartSandbox
from tests.jobs.conftest import Rig
from tests.names import JobKind

CHANNEL = 555
USER = 42


@pytest.fixture(params=[0, 1], ids=["vary-from-0", "vary-from-1"])
async def sandbox(request: pytest.FixtureRequest, start_sandbox: StartSandbox) -> RunningSandbox:
    """The rig's sandbox, once for each numbering of generateVary's imageIndex."""
    return await start_sandbox(vary_index_base=request.param)


async def on_grid(
    tracker: Tracker, kind: JobKind, parent: str, index: int | None, user: int = USER
) -> Outcome:
    return await tracker.request_on_grid(
        kind,
        parent_task_id=parent,
        image_index=index,
        requester_id=user,
        guild_id=1,
        channel_id=CHANNEL,
        grid_message_id=777,
    )


def vary_calls(rig: Rig) -> list[int]:
    """The imageIndex of every generateVary the API received, in order."""
    return [c.body["imageIndex"] for c in rig.sandbox.calls if c.endpoint == "generateVary"]


async def finish(rig: Rig, outcome: Outcome, delivered: int) -> None:
    assert outcome.job.upstream_task_id is not None
    rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == delivered)


@pytest.mark.parametrize("number", [1, 4])
async def test_v1_or_v4_varies_the_clicked_image_and_teaches_the_base(
    rig: Rig, number: int, caplog: pytest.LogCaptureFixture
) -> None:
    base = rig.sandbox.vary_index_base
    tracker = rig.tracker()
    parent = rig.grid("a red fox")
    credits = rig.sandbox.credits
    caplog.set_level(logging.INFO, logger="bot.jobs.vary_index")
    outcome = await on_grid(tracker, JobKind.VARY, parent, number - 1)
    assert outcome.created and outcome.job.state is JobState.SUBMITTED
    task = rig.sandbox.task(outcome.job.upstream_task_id or "")
    # The picture varied is the one clicked, whichever way the API numbers them.
    assert (task.parent_task_id, task.image_index) == (parent, number - 1)
    # The safe value first: right under one base, refused (nothing taken) under the other.
    safe = 0 if number == 1 else 4
    assert vary_calls(rig) == ([safe] if safe - (number - 1) == base else [safe, number - 1 + base])
    assert rig.sandbox.credits == credits - rig.sandbox.vary_cost
    assert await Coordination(rig.store.database).api_fact(FACT) == str(base)
    assert f"vary index base learned: {base}" in caplog.text
    await finish(rig, outcome, 1)
    job = rig.publisher.delivered[0]
    assert job.kind == JobKind.VARY and len(job.result_urls) == 4
    assert job.prompt == "a red fox"
    assert rig.publisher.marked == [job.id]


async def test_v2_and_v3_wait_until_the_base_is_known_and_cost_nothing(rig: Rig) -> None:
    base = rig.sandbox.vary_index_base
    tracker = rig.tracker()
    parent = rig.grid()
    credits = rig.sandbox.credits
    for index in (1, 2):
        with pytest.raises(Refused, match="V1 or V4 teaches it"):
            await on_grid(tracker, JobKind.VARY, parent, index)
    assert vary_calls(rig) == [] and rig.sandbox.credits == credits
    assert await rig.store.unfinished() == []

    await finish(rig, await on_grid(tracker, JobKind.VARY, parent, 0), 1)
    # Learned once, it holds for every button, and for a tracker started later on the store.
    restarted = rig.tracker()
    v2 = await on_grid(restarted, JobKind.VARY, parent, 1)
    assert vary_calls(rig)[-1] == 1 + base
    assert rig.sandbox.task(v2.job.upstream_task_id or "").image_index == 1


async def test_a_configured_base_is_used_without_learning(rig: Rig) -> None:
    base = rig.sandbox.vary_index_base
    tracker = rig.tracker(vary_index_base=base)
    outcome = await on_grid(tracker, JobKind.VARY, rig.grid(), 2)
    assert vary_calls(rig) == [2 + base]
    assert rig.sandbox.task(outcome.job.upstream_task_id or "").image_index == 2
    assert await Coordination(rig.store.database).api_fact(FACT) is None


async def test_the_other_process_learned_base_is_used(rig: Rig) -> None:
    base = rig.sandbox.vary_index_base
    other = await JobStore.open(rig.database_url)
    try:
        assert await Coordination(other.database).learn_api_fact(FACT, str(base)) == str(base)
    finally:
        await other.close()
    outcome = await on_grid(rig.tracker(), JobKind.VARY, rig.grid(), 3)
    assert vary_calls(rig) == [3 + base]
    assert rig.sandbox.task(outcome.job.upstream_task_id or "").image_index == 3


async def test_a_grid_that_cannot_be_varied_fails_and_teaches_nothing(rig: Rig) -> None:
    tracker = rig.tracker()
    running = await on_grid(tracker, JobKind.REROLL, rig.grid(), None)
    # The re-roll's own grid is still running: every index of it is refused alike.
    assert running.job.upstream_task_id is not None
    credits = rig.sandbox.credits
    outcome = await on_grid(tracker, JobKind.VARY, running.job.upstream_task_id, 0)
    assert outcome.failed
    assert "still" in (outcome.job.error or "")
    # Base 0: "still generating" does not say it is about the index, so nothing else is tried.
    # Base 1: 0 is out of range, then 1 meets the same refusal as any index would.
    assert len(vary_calls(rig)) == 1 + rig.sandbox.vary_index_base
    assert rig.sandbox.credits == credits
    assert await Coordination(rig.store.database).api_fact(FACT) is None


async def test_concurrent_clicks_on_one_variation_make_one_job(rig: Rig) -> None:
    tracker = rig.tracker()
    parent = rig.grid()
    outcomes = await asyncio.gather(
        *(on_grid(tracker, JobKind.VARY, parent, 0, user=n) for n in range(20)),
        *(on_grid(tracker, JobKind.REROLL, parent, None, user=n) for n in range(20)),
    )
    created = [o for o in outcomes if o.created]
    assert sorted(o.job.kind for o in created) == [JobKind.REROLL, JobKind.VARY]
    assert {o.job.id for o in outcomes} == {o.job.id for o in created}
    assert rig.sandbox.count("generate") == 1
    # One V1 job: one call under base 0, the refused safe value and the right one under base 1.
    assert vary_calls(rig) == ([0] if rig.sandbox.vary_index_base == 0 else [0, 1])
    for outcome in created:
        assert outcome.job.upstream_task_id is not None
        rig.sandbox.complete(outcome.job.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 2)
    # Done, the same buttons make another set: a new paid job each.
    again = await on_grid(tracker, JobKind.VARY, parent, 0)
    assert again.created and again.job.id not in {o.job.id for o in created}
    assert (await on_grid(tracker, JobKind.REROLL, parent, None)).created


async def test_reroll_generates_the_grids_prompt_and_options_again(rig: Rig) -> None:
    tracker = rig.tracker()
    imagined = await tracker.request_imagine(
        prompt="a blue whale",
        options={"speed": "turbo", "aspect_ratio": "16:9", "version": "6.1"},
        requester_id=USER,
        guild_id=1,
        channel_id=CHANNEL,
        status_message_id=None,
    )
    await finish(rig, imagined, 1)
    grid = imagined.job.upstream_task_id or ""
    outcome = await on_grid(tracker, JobKind.REROLL, grid, None, user=7)
    bodies = [c.body for c in rig.sandbox.calls if c.endpoint == "generate"]
    assert len(bodies) == 2
    assert {k: v for k, v in bodies[1].items() if k != "callBackUrl"} == {
        "taskType": "mj_txt2img",
        "prompt": "a blue whale",
        "speed": "turbo",
        "aspectRatio": "16:9",
        "version": "6.1",
    }
    await finish(rig, outcome, 2)
    job = rig.publisher.delivered[1]
    assert (job.kind, job.requester_id, len(job.result_urls)) == (JobKind.REROLL, 7, 4)


async def test_reroll_of_a_grid_made_elsewhere_reads_its_prompt(rig: Rig) -> None:
    tracker = rig.tracker()
    parent = rig.sandbox.add_generation(prompt="a green owl", speed="relaxed", aspectRatio="2:3")
    outcome = await on_grid(tracker, JobKind.REROLL, parent, None)
    body = next(c.body for c in rig.sandbox.calls if c.endpoint == "generate")
    assert (body["prompt"], body["speed"], body["aspectRatio"]) == ("a green owl", "relaxed", "2:3")
    assert outcome.job.prompt == "a green owl"


async def test_reroll_of_an_unknown_grid_fails_before_paying(rig: Rig) -> None:
    credits = rig.sandbox.credits
    outcome = await on_grid(rig.tracker(), JobKind.REROLL, "no-such-task-1234", None)
    assert outcome.failed and rig.sandbox.count("generate") == 0
    assert rig.sandbox.credits == credits


async def test_a_variation_counts_as_a_generation_and_is_refused_past_the_limit(
    rig: Rig,
) -> None:
    tracker = rig.tracker(max_jobs_per_user=1)
    parent = rig.grid()
    await on_grid(tracker, JobKind.REROLL, parent, None)
    with pytest.raises(Refused, match="job running"):
        await on_grid(tracker, JobKind.VARY, parent, 0)
    assert vary_calls(rig) == []


async def test_the_second_try_of_v1_waits_its_turn_at_the_vendors_pace(rig: Rig) -> None:
    now, slept = [0.0], []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    # No room to queue: an accepted click's second value must wait its turn all the same.
    throttle = SubmitThrottle(1, 10.0, max_waiting=0, clock=lambda: now[0], sleep=sleep)
    outcome = await on_grid(rig.tracker(throttle=throttle), JobKind.VARY, rig.grid(), 0)
    assert outcome.job.state is JobState.SUBMITTED
    # Under base 1 the refused 0 was a request too: the 1 that follows waits for the pace.
    assert slept == ([] if rig.sandbox.vary_index_base == 0 else [10.0])


async def test_recovery_submits_recorded_variations_and_rerolls_once(rig: Rig) -> None:
    base = rig.sandbox.vary_index_base
    parent = rig.grid()
    # Recorded, then the bot died before the API calls; V3 waits for the base, so it is known.
    await Coordination(rig.store.database).learn_api_fact(FACT, str(base))
    jobs = [
        await rig.recorded(JobKind.VARY, parent, 2),
        await rig.recorded(JobKind.REROLL, parent, None),
    ]
    tracker = rig.tracker()
    assert await tracker.recover() == 2
    await rig.publisher.wait_for(lambda: len(rig.publisher.marked) == 2)
    assert vary_calls(rig) == [2 + base] and rig.sandbox.count("generate") == 1
    for job in jobs:
        current = await rig.store.get(job.id)
        assert current is not None and current.upstream_task_id
        rig.sandbox.complete(current.upstream_task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 2)
    assert sorted(j.kind for j in rig.publisher.delivered) == [JobKind.REROLL, JobKind.VARY]


async def test_a_variation_sent_before_a_crash_is_never_sent_again(rig: Rig) -> None:
    """The API took V1 but the bot died before saving the task id: the callback, which
    carries the job's secret, still finds the job, and nothing is submitted again."""
    tracker = rig.tracker(poll=PollPolicy(first_with_callback=60.0))
    parent = rig.grid()
    job = await rig.recorded(JobKind.VARY, parent, 0)
    assert await rig.store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTING)
    # What the dead bot had sent (the right value for this sandbox's numbering):
    task_id = await rig.post_to_api(
        "generateVary",
        {
            "taskId": parent,
            "imageIndex": rig.sandbox.vary_index_base,
            "callBackUrl": tracker.callback_url(job),
        },
    )
    assert await tracker.recover() == 1
    rig.sandbox.complete(task_id)
    await rig.publisher.wait_for(lambda: len(rig.publisher.tidied) == 1)
    current = await rig.store.get(job.id)
    assert current is not None and current.state is JobState.DELIVERED
    assert current.upstream_task_id == task_id
    assert len(vary_calls(rig)) == 1


async def test_a_refusal_that_does_not_name_the_index_teaches_nothing(rig: Rig) -> None:
    rig.sandbox.fail_next("generateVary", 422, "the image was flagged")
    credits = rig.sandbox.credits
    outcome = await on_grid(rig.tracker(), JobKind.VARY, rig.grid(), 0)
    assert outcome.failed and "flagged" in (outcome.job.error or "")
    # Not proof of the numbering: the other value is not tried, nothing is learned.
    assert vary_calls(rig) == [0] and rig.sandbox.credits == credits
    assert await Coordination(rig.store.database).api_fact(FACT) is None


async def test_a_wrong_setting_is_told_in_the_log_at_the_first_out_of_range(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    base = rig.sandbox.vary_index_base
    tracker = rig.tracker(vary_index_base=1 - base)
    # The one button whose value the wrong base puts out of range: V4 (4) or V1 (0).
    outcome = await on_grid(tracker, JobKind.VARY, rig.grid(), 3 if base == 0 else 0)
    assert outcome.failed and len(vary_calls(rig)) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("check MJ_VARY_INDEX_BASE" in e and "(set)" in e for e in errors), errors


async def test_a_crash_while_the_second_value_waits_its_turn_resubmits_it(rig: Rig) -> None:
    base = rig.sandbox.vary_index_base
    # The button that needs a second value under this sandbox's numbering.
    index = 0 if base == 1 else 3
    now, waiting = [0.0], asyncio.Event()

    async def sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()  # the turn never comes: the bot dies meanwhile

    throttle = SubmitThrottle(1, 10.0, max_waiting=10, clock=lambda: now[0], sleep=sleep)
    first = rig.tracker(throttle=throttle)
    parent = rig.grid()
    click = asyncio.create_task(on_grid(first, JobKind.VARY, parent, index))
    await asyncio.wait_for(waiting.wait(), timeout=5)
    [job] = await rig.store.unfinished()
    # The refusal took nothing: the job is not left looking as if it may have been paid.
    assert job.state is JobState.REQUESTED and len(vary_calls(rig)) == 1
    click.cancel()
    await first.close()

    second = rig.tracker()
    assert await second.recover() == 1
    await rig.publisher.wait_for(lambda: len(rig.publisher.marked) == 1)
    varied = [t for t in rig.sandbox.tasks() if t.task_type == "mj_vary"]
    assert [(t.parent_task_id, t.image_index) for t in varied] == [(parent, index)]
    # Learnt once the task id is kept, which the grid's mark (in the background) may precede.
    facts = Coordination(rig.store.database)
    for _ in range(500):
        if await facts.api_fact(FACT) is not None:
            break
        await asyncio.sleep(0.01)
    assert await facts.api_fact(FACT) == str(base)


async def test_a_reroll_recorded_before_its_prompt_was_known_reads_it_first(rig: Rig) -> None:
    parent = rig.sandbox.add_generation(prompt="a green owl", speed="turbo")
    job = await rig.recorded(JobKind.REROLL, parent, None, prompt=None)
    assert await rig.tracker().recover() == 1
    await rig.publisher.wait_for(lambda: len(rig.publisher.marked) == 1)
    body = next(c.body for c in rig.sandbox.calls if c.endpoint == "generate")
    assert (body["prompt"], body["speed"]) == ("a green owl", "turbo")
    current = await rig.store.get(job.id)
    assert current is not None and current.prompt == "a green owl"


async def test_a_grid_made_from_images_is_not_rerolled_as_text(rig: Rig) -> None:
    # Made outside the bot, from an image the sandbox need not fetch.
    parent = rig.sandbox.add_generation(
        prompt="in the style of this",
        taskType="mj_img2img",
        fileUrls=["https://example.com/a.png"],
    )
    outcome = await on_grid(rig.tracker(), JobKind.REROLL, parent, None)
    assert outcome.failed and "text prompt" in (outcome.job.error or "")
    assert rig.sandbox.count("generate") == 0
