"""The real bot process SIGKILLed at each step of a 🎬 video: the video is paid once and posted
once after the restart, whichever step the kill cut (see tests/test_process_faults.py for the
rig: a bot subprocess against the Discord double and a sandbox served by the test)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from bot.jobs.store import Job, JobState
from bot.jobs.tables import jobs
from tests.fakes.discord_double import StoredMessage
from tests.test_process_faults import (
    CHANNEL_POST,
    PROMPT,
    Rig,
    click,
    delivered_once,
    make_grid,
    posting,
    rig,
)

# The rig fixture of the upscale's process faults, used here too.
__all__ = ["rig"]
LOW = "🎬 Animate (low motion)"


async def upscaled(r: Rig, user: int) -> tuple[StoredMessage, str]:
    """U1 of a new grid, delivered; its message and the upscale's task id."""
    grid, task = await make_grid(r, user)
    await click(r, grid, task, 1, user)
    upscale = await delivered_once(r, task, 1, user)
    assert upscale.upstream_task_id is not None
    message = r.double.message(upscale.result_message_id or 0)
    return message, upscale.upstream_task_id


async def animate(r: Rig, message: StoredMessage, user: int) -> None:
    button = message.button(label=LOW)
    assert button.custom_id is not None
    handle = await r.double.click(message.id, button.custom_id, user)
    ack = await handle.wait_ack()
    assert ack.accepted


async def animation(r: Rig, upscale: str) -> Job | None:
    """The animation of ``upscale``, in whatever state (a delivered one holds no twin key)."""
    query = sa.select(jobs).where(jobs.c.kind == "animate_low", jobs.c.parent_task_id == upscale)
    async with r.store.engine.connect() as conn:
        rows = (await conn.execute(query)).fetchall()
    assert len(rows) <= 1
    return Job.from_row(rows[0]) if rows else None


async def video_in(r: Rig, upscale: str, state: JobState) -> Job:
    """Until the animation's row, read from the database file, is in ``state``."""

    job: Job | None = None
    for _ in range(500):
        job = await animation(r, upscale)
        if job is not None and job.state is state:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {state} after 10 s (failed if None): {job}")


def videos(r: Rig, user: int) -> list[StoredMessage]:
    return [
        m
        for m in r.double.messages(ephemeral=False)
        if " - Video (" in m.content and f"<@{user}>" in m.content
    ]


async def posted_once(r: Rig, upscale: str, user: int) -> Job:
    """One paid video, one message with the sandbox's file, the row delivered."""
    job = await video_in(r, upscale, JobState.DELIVERED)
    [message] = videos(r, user)
    assert job.result_message_id == message.id
    assert job.upstream_task_id is not None
    [(_, data)] = message.attachments
    assert data == r.sandbox.video_bytes_of(job.upstream_task_id, 0)
    assert len([t for t in r.sandbox.tasks() if t.is_video]) == 1
    return job


def quick(r: Rig) -> None:
    r.sandbox.video_seconds = 1.0


async def test_killed_while_the_video_call_was_answered(rig: Rig) -> None:
    alice = rig.double.add_user("alice")
    quick(rig)
    await rig.bot.start()
    message, upscale = await upscaled(rig, alice)
    rig.sandbox.task_seconds = None
    answer = rig.sandbox.hold("generate")
    await animate(rig, message, alice)
    await rig.sandbox.wait_held(answer)
    job = await video_in(rig, upscale, JobState.SUBMITTING)
    assert job.upstream_task_id is None

    await rig.bot.killed()
    # Taken and charged; the bot never learnt the task id.
    [video] = [t for t in rig.sandbox.tasks() if t.is_video]
    await rig.bot.start()
    rig.sandbox.complete(video.task_id)
    job = await posted_once(rig, upscale, alice)
    assert job.upstream_task_id == video.task_id


async def test_killed_while_the_video_was_being_made(rig: Rig) -> None:
    alice = rig.double.add_user("alice")
    quick(rig)
    await rig.bot.start()
    message, upscale = await upscaled(rig, alice)
    rig.sandbox.task_seconds = None
    await animate(rig, message, alice)
    job = await video_in(rig, upscale, JobState.SUBMITTED)
    assert job.upstream_task_id is not None

    await rig.bot.killed()
    rig.sandbox.complete(job.upstream_task_id)
    await rig.bot.start()
    await posted_once(rig, upscale, alice)


async def test_killed_while_the_video_was_downloading(rig: Rig) -> None:
    alice = rig.double.add_user("alice")
    quick(rig)
    await rig.bot.start()
    message, upscale = await upscaled(rig, alice)
    rig.sandbox.task_seconds = None
    await animate(rig, message, alice)
    # Held after the sandbox fetched the upscale to animate (a file too), before the video.
    job = await video_in(rig, upscale, JobState.SUBMITTED)
    assert job.upstream_task_id is not None
    download = rig.sandbox.hold("files")
    rig.sandbox.complete(job.upstream_task_id)
    await rig.sandbox.wait_held(download)
    await video_in(rig, upscale, JobState.SUCCEEDED)

    await rig.bot.killed()
    assert videos(rig, alice) == []
    await rig.bot.start()
    await posted_once(rig, upscale, alice)


async def test_killed_after_the_video_was_posted_before_it_was_recorded(rig: Rig) -> None:
    alice = rig.double.add_user("alice")
    quick(rig)
    await rig.bot.start()
    message, upscale = await upscaled(rig, alice)
    post = rig.double.hold_responses("POST", CHANNEL_POST, where=posting(f"**{PROMPT}** - Video ("))
    await animate(rig, message, alice)
    sent = await post.wait_held()
    [first] = videos(rig, alice)
    job = await video_in(rig, upscale, JobState.SUCCEEDED)
    assert sent.body["nonce"] == job.id

    await rig.bot.killed()
    await rig.bot.start()
    job = await posted_once(rig, upscale, alice)
    # Sent again with the same nonce: Discord took it as the message it had.
    assert job.result_message_id == first.id
