"""Several processes on one PostgreSQL store: each job is worked on by the one process holding
its lease, a stopped or dead process's jobs are taken over, a callback taken by any process
reaches the job. Each "process" is a tracker with store engines of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.coordination import Coordination
from bot.jobs.database import Database
from bot.jobs.leases import JobLeases
from bot.jobs.store import FollowUp, JobState, JobStore
from bot.jobs.tables import leases
from bot.jobs.tracker import Tracker
from bot.jobs.types import Outcome, PollPolicy
from tests.conftest import Serve
from tests.fakes.publisher import RecordingPublisher
from tests.jobs.conftest import Rig, postgres_schema

LEASE = 0.6
# The lease of a process whose jobs must stay its own in the test: renewed every second, it
# cannot run out by a busy machine's delay.
STEADY = 3.0
# Polling soon enough that a job is seen to finish within the test's patience.
POLL = PollPolicy(first_with_callback=0.3, interval=0.05, steady_for=1.0, max_interval=0.2)


@pytest.fixture
async def engine() -> AsyncIterator[Callable[[], AsyncEngine]]:
    async with postgres_schema("leases_test") as make:
        yield make


async def process(
    rig: Rig,
    engine: Callable[[], AsyncEngine],
    *,
    callbacks: bool = False,
    poll: PollPolicy = POLL,
    publisher: RecordingPublisher | None = None,
    lease: float = LEASE,
) -> tuple[Tracker, RecordingPublisher]:
    """A started "process": its own store (and publisher unless given), leases on, recovery
    run."""
    publisher = publisher or RecordingPublisher()
    tracker = rig.tracker(
        store=JobStore(Database(engine())),
        publisher=publisher,
        lease_seconds=lease,
        callbacks=callbacks,
        poll=poll,
    )
    await tracker.recover()
    return tracker, publisher


async def imagine(tracker: Tracker, prompt: str, follow_up: FollowUp | None = None) -> Outcome:
    outcome = await tracker.request_imagine(
        prompt=prompt,
        options={"speed": "fast"},
        requester_id=1,
        guild_id=1,
        channel_id=555,
        status_message_id=None,
        follow_up=follow_up,
    )
    assert outcome.job.state is JobState.SUBMITTED and outcome.job.upstream_task_id
    return outcome


def killed(tracker: Tracker, *, watchers: bool = True) -> None:
    """Every coroutine of ``tracker`` stops where it stands, nothing given back: as when its
    process is killed (without ``watchers``: only its renewals stop, as when it hangs on the
    way to the database and its watchers come back to life later)."""
    owner = tracker.lease_owner
    for task in asyncio.all_tasks():
        name = task.get_name()
        if name == f"keep-{owner}" or (watchers and name.startswith(f"watch-{owner}-")):
            task.cancel()


async def lease_owner(engine: Callable[[], AsyncEngine], job_id: str) -> str | None:
    async with engine().connect() as conn:
        query = sa.select(leases.c.owner).where(leases.c.name == job_id)
        return (await conn.execute(query)).scalar_one_or_none()


async def test_only_the_process_that_took_a_job_works_on_it(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    first, first_posts = await process(rig, engine, lease=STEADY)
    _second, second_posts = await process(rig, engine)
    outcome = await imagine(first, "one owner")
    # Several renewals pass; the second process never takes the job up.
    await asyncio.sleep(LEASE * 2)
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await first_posts.wait_for(lambda: len(first_posts.delivered) == 1)
    await first.wait_idle()
    assert second_posts.delivered == [] and second_posts.marked == []


async def test_a_stopped_process_gives_its_jobs_to_another_at_once(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    # The first one's lease would last a minute: only giving it back hands the job over soon.
    first, first_posts = await process(rig, engine, lease=60.0)
    _second, second_posts = await process(rig, engine)
    outcome = await imagine(first, "handed over")
    await first.close()
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await second_posts.wait_for(lambda: len(second_posts.delivered) == 1, timeout=10)
    assert first_posts.delivered == []
    assert [j.id for j in second_posts.delivered] == [outcome.job.id]
    assert rig.sandbox.count("generate") == 1


async def test_a_dead_processs_jobs_are_taken_over_once_its_leases_run_out(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    first, first_posts = await process(rig, engine)
    # The two survivors post through one publisher, to count their posts together.
    second, survivors_posts = await process(rig, engine)
    third, _ = await process(rig, engine, publisher=survivors_posts)
    outcomes = [await imagine(first, f"orphan {n}") for n in range(4)]
    killed(first)
    for outcome in outcomes:
        rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await survivors_posts.wait_for(lambda: len(survivors_posts.delivered) == 4, timeout=15)
    await second.wait_idle()
    await third.wait_idle()
    delivered = [j.id for j in survivors_posts.delivered]
    # Each posted once, by one of the survivors, none submitted again.
    assert sorted(delivered) == sorted(o.job.id for o in outcomes)
    assert first_posts.delivered == []
    assert rig.sandbox.count("generate") == 4


async def test_the_requester_hears_of_a_failure_from_the_process_that_took_the_job_over(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    first, first_posts = await process(rig, engine)
    _second, second_posts = await process(rig, engine)
    clicker = first_posts.follow_up()
    outcome = await imagine(first, "told from afar", follow_up=clicker)
    killed(first)
    rig.sandbox.fail(outcome.job.upstream_task_id or "", "Banned prompt")
    await second_posts.wait_for(lambda: len(second_posts.failures) == 1, timeout=15)
    # The follow-up came with the job, through the store: the clicker's own interaction.
    assert second_posts.whispered_to == [clicker.token]
    assert "Banned prompt" in second_posts.whispered[0]
    assert first_posts.whispered == []
    # The job ended: the token is not kept any longer than it is needed.
    assert await JobStore(Database(engine())).follow_up(outcome.job.id) is None


async def test_a_callback_taken_by_another_process_rings_the_owner(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    # The owner would not poll for a minute: only the callback can tell it in time.
    owner, owner_posts = await process(
        rig, engine, callbacks=True, poll=PollPolicy(first_with_callback=60.0), lease=STEADY
    )
    other, other_posts = await process(rig, engine, callbacks=True)
    outcome = await imagine(owner, "rung from afar")
    # The owner does not ask about a task it has just sent: it sleeps until rung.
    rig.listener.tracker = other  # the load balancer sent the vendor's callback elsewhere
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await owner_posts.wait_for(lambda: len(owner_posts.delivered) == 1, timeout=10)
    assert other_posts.delivered == []


async def test_a_callback_taken_elsewhere_before_the_owner_watches_rings_it(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    """The vendor's callback reaches another process while the owner's paid call is still
    waiting for its answer: the owner, not watching the job yet, is told by NOTIFY, and its
    watcher, once started, looks at once rather than at its first poll (a minute here)."""
    owner, owner_posts = await process(
        rig, engine, callbacks=True, poll=PollPolicy(first_with_callback=60.0), lease=STEADY
    )
    other, _ = await process(rig, engine, callbacks=True)
    hold = rig.sandbox.hold("generate")
    asking = asyncio.create_task(imagine(owner, "rung before it watched"))
    await rig.sandbox.wait_held(hold)
    (task,) = rig.sandbox.tasks()
    rig.listener.tracker = other
    rig.sandbox.complete(task.task_id)
    await rig.sandbox.wait_for_callback(task.task_id)
    # Time for the NOTIFY to reach the owner before its answer does (were it later, the watcher
    # would be rung as it is at any time: this test would pass without showing anything).
    await asyncio.sleep(0.3)
    hold.release()
    outcome = await asking
    assert outcome.job.state is JobState.SUBMITTED
    await owner_posts.wait_for(lambda: len(owner_posts.delivered) == 1, timeout=10)


async def test_a_process_that_lost_a_lease_does_not_post_what_the_new_holder_posts(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    hung, hung_posts = await process(rig, engine)
    taker, taker_posts = await process(rig, engine, lease=STEADY)
    outcome = await imagine(hung, "who posts")
    killed(hung, watchers=False)
    # The lease runs out and the other process takes the job (it then watches it too).
    async with asyncio.timeout(10):
        # The database has no event to wait on: look at each renewal's pace.
        while await lease_owner(engine, outcome.job.id) != taker.lease_owner:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await taker_posts.wait_for(lambda: len(taker_posts.delivered) == 1, timeout=10)
    await hung.wait_idle()
    await taker.wait_idle()
    assert hung_posts.delivered == []


async def test_a_result_read_before_the_new_holder_posted_it_is_not_posted_again(
    rig: Rig, engine: Callable[[], AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    hung, hung_posts = await process(rig, engine)
    taker, taker_posts = await process(rig, engine, lease=STEADY)
    outcome = await imagine(hung, "read before the post")
    job_id = outcome.job.id
    killed(hung, watchers=False)
    async with asyncio.timeout(10):
        while await lease_owner(engine, job_id) != taker.lease_owner:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    # The order that posted twice: the hung process's watcher finds the result to post, the
    # taker posts it and lets the lease go, then the hung one claims the lease and posts what
    # it had read. The taker posts once the hung one is claiming; the claim goes through once
    # the taker has let go.
    claiming = asyncio.Event()
    taker_posts.delivery_gate = claiming
    leases = hung._ctx.leases
    claim = leases.claim

    async def claim_after_the_taker(job: str) -> bool:
        claiming.set()
        async with asyncio.timeout(10):
            while await lease_owner(engine, job) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return await claim(job)

    monkeypatch.setattr(leases, "claim", claim_after_the_taker)
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await taker_posts.wait_for(lambda: len(taker_posts.delivered) == 1, timeout=10)
    await hung.wait_idle()
    await taker.wait_idle()
    assert hung_posts.delivered == []
    # And the lease the hung process claimed on the finished job is given back.
    assert await lease_owner(engine, job_id) is None


async def test_a_lease_kept_on_a_finished_job_is_given_back_by_the_sweep(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    owner, posts = await process(rig, engine, lease=STEADY)
    outcome = await imagine(owner, "ended")
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    await posts.wait_for(lambda: len(posts.delivered) == 1, timeout=10)
    await owner.wait_idle()
    assert await lease_owner(engine, outcome.job.id) is None
    # Claimed after the job's end by a watcher that then crashed (its read of the job failed).
    assert await owner._ctx.leases.claim(outcome.job.id)
    await owner.sweep()
    assert await lease_owner(engine, outcome.job.id) is None
    assert outcome.job.id not in owner._ctx.leases.held()


async def test_a_lost_listening_connection_is_made_again(
    rig: Rig, engine: Callable[[], AsyncEngine]
) -> None:
    owner, owner_posts = await process(
        rig, engine, callbacks=True, poll=PollPolicy(first_with_callback=60.0), lease=STEADY
    )
    other, other_posts = await process(rig, engine, callbacks=True)
    outcome = await imagine(owner, "heard again")
    # The database drops the connections that LISTEN (a restart, a proxy's idle timeout).
    async with engine().connect() as conn:
        dropped = await conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
        )
        assert len(dropped.fetchall()) >= 2  # this test's two, and any a test left
    rig.listener.tracker = other
    rig.sandbox.complete(outcome.job.upstream_task_id or "")
    # Within a renewal the owner listens again, and rings its jobs for what it missed.
    await owner_posts.wait_for(lambda: len(owner_posts.delivered) == 1, timeout=10)
    assert other_posts.delivered == []


async def test_a_job_put_back_after_a_429_is_sent_by_the_process_that_adopted_it(
    rig: Rig, engine: Callable[[], AsyncEngine], serve: Serve
) -> None:
    """A process hangs while its paid call is under way; another adopts the job (it is
    ``submitting``: only watched). The first wakes to a 429, which proves nothing was taken,
    and puts the job back to ``requested``. Before: the adopter only watched it and the first
    waited out its pause (a minute here; it may as well die in it), so nothing sent it until
    its deadline. Whoever holds a ``requested`` job sends it."""
    arrived, answer = asyncio.Event(), asyncio.Event()

    async def rate_limited(_request: web.Request) -> web.Response:
        arrived.set()
        await answer.wait()
        return web.json_response({"code": 429, "msg": "too many requests", "data": None})

    front = web.Application()
    front.router.add_post("/api/v1/mj/generate", rate_limited)
    hung = rig.tracker(
        store=JobStore(Database(engine())),
        publisher=RecordingPublisher(),
        lease_seconds=LEASE,
        callbacks=False,
        poll=POLL,
        api_base=await serve(front),
        submit_retry_delays=(60.0,),
    )
    await hung.recover()
    taker, taker_posts = await process(rig, engine, lease=STEADY)
    request = asyncio.create_task(
        hung.request_imagine(
            prompt="put back",
            options={"speed": "fast"},
            requester_id=1,
            guild_id=1,
            channel_id=555,
            status_message_id=None,
        )
    )
    await asyncio.wait_for(arrived.wait(), timeout=5)
    [job] = await hung.store.unfinished()
    killed(hung, watchers=False)
    async with asyncio.timeout(10):
        # The database has no event to wait on: look at each renewal's pace.
        while await lease_owner(engine, job.id) != taker.lease_owner:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    answer.set()
    await rig.sandbox.wait_for_call("generate", 1, timeout=10)
    [task] = rig.sandbox.tasks()
    rig.sandbox.complete(task.task_id)
    await taker_posts.wait_for(lambda: len(taker_posts.delivered) == 1, timeout=10)
    assert [j.id for j in taker_posts.delivered] == [job.id]
    assert rig.sandbox.count("generate") == 1
    request.cancel()
    await taker.wait_idle()


class RenewsSlowly(Coordination):
    """A store whose renewal lets other work of the process run while it is under way, as any
    database round trip does (a click storm makes new jobs meanwhile, jobs end meanwhile)."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def renew_leases(self, owner: str, names: Collection[str], *, ttl: float) -> set[str]:
        asked = list(names)
        if self.meanwhile is not None:
            await self.meanwhile()
        return await super().renew_leases(owner, asked, ttl=ttl)


async def test_jobs_taken_or_ended_during_a_renewal_are_not_lost(
    engine: Callable[[], AsyncEngine],
) -> None:
    store = RenewsSlowly(Database(engine()))
    leases = JobLeases(store, ttl=STEADY)
    assert await leases.claim("ends-meanwhile")

    async def meanwhile() -> None:
        assert await leases.claim("new-meanwhile")
        await leases.release("ends-meanwhile")

    store.meanwhile = meanwhile
    # Before: the new job was counted as lost (its watcher cancelled), and so was the one that
    # ended (its last words cut off).
    assert await leases.renew() == set()
    assert leases.holds("new-meanwhile")
    assert await lease_owner(engine, "new-meanwhile") == leases.owner
