"""The real bot process killed (SIGKILL) at each step of an upscale, and stopped (SIGTERM).

Each test runs what ``python -m bot`` runs in a subprocess, against the Discord double and a
sandbox API both served by the test process, so they outlive the bot and count what it did. The
bot is held at a step by holding an answer it waits for (a post, a download, the API's reply),
and killed once the job's row in the SQLite file shows the step: no step depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.grid import parse_upscale_custom_id, upscale_custom_id
from bot.jobs.store import Job, JobState, JobStore
from bot.midjourney.sandbox import SandboxAPI
from bot.services import SHUTDOWN_GRACE_SECONDS
from tests.conftest import StartSandbox
from tests.fakes.bot_process import GRACE_VAR, BotProcess
from tests.fakes.cluster import free_port
from tests.fakes.discord_double import DiscordDouble, InteractionHandle, StoredMessage
from tests.harness import status_lines

TOKEN = "fake-discord-token-for-the-double"
CHANNEL_POST = r"/channels/\d+/messages"
PROMPT = "a lighthouse at dusk"
# Log lines that mean something was not closed or finished cleanly.
UNCLEAN = ("Traceback", "Unclosed", "Task was destroyed", "ERROR")


@dataclass
class Rig:
    double: DiscordDouble
    sandbox: SandboxAPI
    bot: BotProcess
    store: JobStore


@pytest.fixture
async def rig(
    double: DiscordDouble, start_sandbox: StartSandbox, tmp_path: Path
) -> AsyncIterator[Rig]:
    # Tasks finish as soon as they are created; a test that needs one running sets None.
    served = await start_sandbox(task_seconds=0)
    # The listener port must stay the same across restarts: the callback URL names it.
    port = free_port()
    database_url = f"sqlite:///{tmp_path}/bot.sqlite3"
    env = {
        "DISCORD_TOKEN": TOKEN,
        "MJ_API_BASE_URL": served.base_url,
        "MJ_API_KEY": served.key,
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DISCORD_GUILD_ID": str(double.guild_id),
    }
    store = await JobStore.open(database_url)
    bot = BotProcess(double, env, tmp_path)
    try:
        yield Rig(double, served.api, bot, store)
    finally:
        await bot.stop()
        await store.close()
        # Shown by pytest when the test failed.
        print(bot.stderr())


async def make_grid(rig: Rig, user: int) -> tuple[StoredMessage, str]:
    """/imagine through the double; the grid message and its generation's task id."""
    handle = await rig.double.slash("imagine", {"prompt": PROMPT}, user)
    await handle.wait_ack()
    grid = await rig.double.wait_for_message(
        lambda m: len(m.attachments) == 4 and PROMPT in m.content and m.kind == "channel"
    )
    parsed = parse_upscale_custom_id(grid.buttons()[0].custom_id or "")
    assert parsed is not None
    # Its "generating" line goes once the grid is up: a kill before that would leave it, and
    # the tests' own status lines are the ones they look at.
    await rig.double.wait_for(lambda: not status_lines(rig.double) or None)
    return grid, parsed[0]


async def click(
    rig: Rig, grid: StoredMessage, task: str, number: int, user: int
) -> InteractionHandle:
    handle = await rig.double.click(grid.id, upscale_custom_id(task, number), user)
    ack = await handle.wait_ack()
    assert ack.type == 6 and ack.accepted
    return handle


def posting(text: str) -> Callable[[Any], bool]:
    """Matches a channel post whose content starts with ``text``."""
    return lambda body: isinstance(body, dict) and str(body.get("content") or "").startswith(text)


def results(double: DiscordDouble, number: int, user: int) -> list[StoredMessage]:
    """The result messages of image ``number`` standing in the channel."""
    return [
        m
        for m in double.messages(ephemeral=False)
        if f"- Image #{number} <@{user}>" in m.content and m.attachments
    ]


async def job_in(
    store: JobStore, task: str, number: int, state: JobState, timeout: float = 10
) -> Job:
    """Until the upscale's row, read from the database file, is in ``state``."""
    job: Job | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                job = await store.live_twin("upscale", task, number - 1)
                if job is not None and job.state is state:
                    return job
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not {state} after {timeout} s (failed if None): {job}") from None


async def delivered_once(rig: Rig, task: str, number: int, user: int, upscales: int = 1) -> Job:
    """The end every fault must come to: one paid call per upscale asked for, one result
    message, the row delivered."""
    job = await job_in(rig.store, task, number, JobState.DELIVERED)
    posted = results(rig.double, number, user)
    assert len(posted) == 1, [m.content for m in posted]
    assert job.result_message_id == posted[0].id
    assert PROMPT in posted[0].content
    assert rig.sandbox.count("generateUpscale") == upscales
    assert job.upstream_task_id is not None
    assert posted[0].attachments[0][1] == rig.sandbox.image_bytes(job.upstream_task_id, 0)
    return job


async def test_killed_after_the_click_was_recorded(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice = double.add_user("alice")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    status = double.hold_responses("POST", CHANNEL_POST, where=posting("⏳ Upscaling image #1"))
    await click(rig, grid, task, 1, alice)
    await status.wait_held()
    job = await job_in(rig.store, task, 1, JobState.REQUESTED)
    assert job.status_message_id is None

    await rig.bot.killed()
    assert sandbox.count("generateUpscale") == 0
    await rig.bot.start()
    await delivered_once(rig, task, 1, alice)
    # The status line posted before the kill is the one re-posted (same nonce), and removed.
    await double.wait_for(lambda: not status_lines(double) or None)


async def test_killed_while_the_api_answer_was_on_its_way(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice = double.add_user("alice")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    sandbox.task_seconds = None
    answer = sandbox.hold("generateUpscale")
    await click(rig, grid, task, 2, alice)
    await sandbox.wait_held(answer)
    job = await job_in(rig.store, task, 2, JobState.SUBMITTING)
    assert job.upstream_task_id is None

    await rig.bot.killed()
    # The API took (and charged) the request; the bot never learnt the task id.
    (upscale,) = [t for t in sandbox.tasks() if t.parent_task_id == task]
    await rig.bot.start()
    # Finished after the restart: only its callback can tell the bot which task is its own.
    sandbox.complete(upscale.task_id)
    job = await delivered_once(rig, task, 2, alice)
    assert job.upstream_task_id == upscale.task_id


async def test_killed_after_the_api_call_returned(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice = double.add_user("alice")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    sandbox.task_seconds = None
    await click(rig, grid, task, 3, alice)
    job = await job_in(rig.store, task, 3, JobState.SUBMITTED)
    assert job.upstream_task_id is not None

    await rig.bot.killed()
    # The task finishes while the bot is down: every callback attempt finds nobody listening.
    sandbox.complete(job.upstream_task_id)
    attempts = await sandbox.wait_for_callback(
        job.upstream_task_id, n=1 + len(sandbox.callback_retry_delays)
    )
    assert [a.status for a in attempts] == [None] * len(attempts)
    await rig.bot.start()
    await delivered_once(rig, task, 3, alice)


async def test_killed_after_the_result_was_confirmed(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice = double.add_user("alice")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    download = sandbox.hold("files")
    await click(rig, grid, task, 4, alice)
    await sandbox.wait_held(download)
    job = await job_in(rig.store, task, 4, JobState.SUCCEEDED)
    assert job.result_urls

    await rig.bot.killed()
    assert results(double, 4, alice) == []
    await rig.bot.start()
    await delivered_once(rig, task, 4, alice)


async def test_killed_after_the_post_was_sent_before_it_was_recorded(rig: Rig) -> None:
    double = rig.double
    alice = double.add_user("alice")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    post = double.hold_responses("POST", CHANNEL_POST, where=posting(f"**{PROMPT}** - Image #1"))
    await click(rig, grid, task, 1, alice)
    sent = await post.wait_held()
    (first,) = results(double, 1, alice)
    job = await job_in(rig.store, task, 1, JobState.SUCCEEDED)
    assert sent.body["nonce"] == job.id and sent.body["enforce_nonce"] is True

    await rig.bot.killed()
    await rig.bot.start()
    job = await delivered_once(rig, task, 1, alice)
    # Posted again after the restart, and taken by Discord as the message it already had.
    assert job.result_message_id == first.id
    resent = [r for r in double.requests_to("POST", CHANNEL_POST) if r.body.get("nonce") == job.id]
    assert len(resent) == 2


async def test_sigterm_lets_a_delivery_under_way_finish(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice, bob = double.add_user("alice"), double.add_user("bob")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    download = sandbox.hold("files")
    await click(rig, grid, task, 2, alice)
    await sandbox.wait_held(download)

    rig.bot.terminate()
    await rig.bot.wait_for_log("shutting down")
    # Still connected while it drains, but taking no new work: the click is answered, not lost.
    late = await click(rig, grid, task, 3, bob)
    refusal = await late.wait_followup()
    assert refusal.ephemeral and "restarting" in refusal.content
    download.release()
    code, _ = await rig.bot.wait_exit(timeout=SHUTDOWN_GRACE_SECONDS)
    assert code == 0

    await delivered_once(rig, task, 2, alice)
    # The refused click left nothing to resume.
    assert await rig.store.live_twin("upscale", task, 2) is None
    log = rig.bot.stderr()
    assert "stopped" in log
    assert not [word for word in UNCLEAN if word in log], log


async def test_sigterm_still_takes_callbacks_while_it_drains(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice = double.add_user("alice")
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    sandbox.task_seconds = None
    await click(rig, grid, task, 1, alice)
    waiting = await job_in(rig.store, task, 1, JobState.SUBMITTED)
    assert waiting.upstream_task_id is not None
    sandbox.task_seconds = 0
    download = sandbox.hold("files")
    await click(rig, grid, task, 2, alice)
    await sandbox.wait_held(download)

    rig.bot.terminate()
    await rig.bot.wait_for_log("shutting down")
    # The listener stays open while the bot drains: the callback is taken and acted on.
    sandbox.complete(waiting.upstream_task_id)
    (attempt,) = await sandbox.wait_for_callback(waiting.upstream_task_id)
    assert attempt.status == 200
    await job_in(rig.store, task, 1, JobState.DELIVERED)
    assert rig.bot.running
    download.release()
    code, _ = await rig.bot.wait_exit(timeout=SHUTDOWN_GRACE_SECONDS)
    assert code == 0

    await delivered_once(rig, task, 2, alice, upscales=2)
    await delivered_once(rig, task, 1, alice, upscales=2)


async def test_sigterm_gives_up_on_a_stuck_delivery_after_the_grace(rig: Rig) -> None:
    double, sandbox = rig.double, rig.sandbox
    alice = double.add_user("alice")
    grace = 1.0
    rig.bot.env[GRACE_VAR] = str(grace)
    await rig.bot.start()
    grid, task = await make_grid(rig, alice)
    download = sandbox.hold("files")
    await click(rig, grid, task, 1, alice)
    await sandbox.wait_held(download)

    rig.bot.terminate()
    code, took = await rig.bot.wait_exit(timeout=grace + 5)
    assert code == 0
    assert took >= grace  # it did wait for the delivery, as long as it was allowed to
    job = await rig.store.live_twin("upscale", task, 0)
    assert job is not None and job.state is JobState.SUCCEEDED
    assert results(double, 1, alice) == []
    assert "Traceback" not in rig.bot.stderr()

    # The download is not held again: the next start delivers it.
    await rig.bot.start()
    await delivered_once(rig, task, 1, alice)
