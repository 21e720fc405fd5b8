"""The low-credit warning (bot/credits.py): against the API sandbox and a real job store, then the
real bot against the Discord double."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.credits import CreditWatch, NoticeFailed
from bot.jobs.coordination import Coordination
from bot.jobs.store import JobStore
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.errors import ApiError
from tests.conftest import RunningSandbox, StartSandbox
from tests.fakes.discord_double import DiscordDouble, StoredMessage
from tests.harness import Harness, click, result_for

HOUR = 3600.0
# Distinctive, so that a leak is found by a plain substring search.
SECRET_KEY = "mj-key-S3CRET-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Admins:
    """A stand-in for the admin channel: records posts, or refuses the next ones."""

    posts: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def __call__(self, text: str) -> None:
        if self.refusals:
            raise NoticeFailed(self.refusals.pop(0))
        self.posts.append(text)


@dataclass
class Rig:
    sandbox: RunningSandbox
    session: aiohttp.ClientSession
    database_url: str
    clock: Clock = field(default_factory=Clock)
    watches: list[CreditWatch] = field(default_factory=list)
    stores: list[JobStore] = field(default_factory=list)

    def client(self, base_url: str | None = None, key: str | None = None) -> MidjourneyClient:
        return MidjourneyClient(
            self.session, base_url or self.sandbox.base_url, key or self.sandbox.key, timeout=5
        )

    async def watch(
        self,
        notify: Admins | None,
        *,
        threshold: int = 100,
        client: MidjourneyClient | None = None,
        store: JobStore | None = None,
        spacing: float = 60.0,
        check_interval: float = 600.0,
    ) -> CreditWatch:
        """A watch as one bot process builds it: its own API client and store connection."""
        if store is None:
            store = await JobStore.open(self.database_url)
            self.stores.append(store)
        client = client or self.client()
        watch = CreditWatch(
            client,
            Coordination(store.database),
            notify,
            threshold=threshold,
            submit_check_spacing=spacing,
            check_interval=check_interval,
            now=self.clock,
        )
        client.on_refusal = watch.api_refused
        self.watches.append(watch)
        return watch


@pytest.fixture
async def rig(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Rig]:
    async with aiohttp.ClientSession() as session:
        rig = Rig(sandbox, session, f"sqlite:///{tmp_path}/bot.sqlite3")
        try:
            yield rig
        finally:
            for watch in rig.watches:
                await watch.close()
            for store in rig.stores:
                await store.close()


def credit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the watch logged at WARNING or above."""
    return [r for r in caplog.records if r.name == "bot.credits" and r.levelno >= logging.WARNING]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ----- the watch against the sandbox -----------------------------------------------------------


async def test_credits_under_the_threshold_warn_once_an_hour(rig: Rig) -> None:
    rig.sandbox.api.credits = 42
    admins = Admins()
    watch = await rig.watch(admins)
    assert await watch.check() == 42
    assert admins.posts == [
        "⚠️ Midjourney API credits are low: **42** left (warning below 100, "
        "`LOW_CREDIT_THRESHOLD`). Upscales and generations will fail once they run out: "
        "top up the account."
    ]
    await watch.check()
    rig.clock.t += HOUR - 1
    await watch.check()
    assert len(admins.posts) == 1
    rig.clock.t += 1
    rig.sandbox.api.credits = 30
    await watch.check()
    assert len(admins.posts) == 2 and "**30** left" in admins.posts[1]


async def test_enough_credits_warn_nobody(rig: Rig) -> None:
    rig.sandbox.api.credits = 100
    admins = Admins()
    watch = await rig.watch(admins)
    assert await watch.check() == 100
    assert admins.posts == []


async def test_a_failed_post_gives_the_claim_back(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.sandbox.api.credits = 42
    admins = Admins(refusals=["the bot may not post in channel 123 (HTTP 403)"])
    watch = await rig.watch(admins)
    await watch.check()
    assert admins.posts == []
    [line] = credit_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "not posted to the admin channel" in line.message and "HTTP 403" in line.message
    # Retried at the next check, not an hour later.
    await watch.check()
    assert len(admins.posts) == 1


async def test_two_replicas_sharing_a_store_send_one_warning(rig: Rig) -> None:
    rig.sandbox.api.credits = 42
    admins = Admins()
    client = rig.client()
    first, second = await rig.watch(admins), await rig.watch(admins, client=client)
    await asyncio.gather(first.check(), second.check(), first.check(), second.check())
    assert len(admins.posts) == 1
    # A 402 met by the other replica within the hour shares the budget.
    rig.sandbox.api.credits = 0
    with pytest.raises(ApiError):
        await client.generate("a fox")
    await second.wait_quiet()
    assert len(admins.posts) == 1
    rig.clock.t += HOUR
    await asyncio.gather(first.check(), second.check())
    assert len(admins.posts) == 2


async def test_a_restart_within_the_hour_sends_nothing_more(rig: Rig) -> None:
    rig.sandbox.api.credits = 42
    admins = Admins()
    before = await rig.watch(admins)
    await before.check()
    await before.close()
    after = await rig.watch(admins)
    rig.clock.t += HOUR / 2
    await after.check()
    assert len(admins.posts) == 1


@pytest.mark.parametrize("call", ["generate", "upscale"])
async def test_a_402_warns_at_once(rig: Rig, call: str) -> None:
    api = rig.sandbox.api
    grid = api.add_generation()
    api.credits = 1  # under either price; the threshold check is off to show the 402 alone
    admins = Admins()
    client = rig.client()
    watch = await rig.watch(admins, threshold=0, client=client)
    assert await watch.check() == 1
    assert admins.posts == []
    for _ in range(3):
        with pytest.raises(ApiError) as refused:
            await (client.generate("a fox") if call == "generate" else client.upscale(grid, 0))
        assert refused.value.code == 402
    await watch.wait_quiet()
    assert admins.posts == [
        "⛔ The Midjourney API refused a request for lack of credits (402) (1 left): upscales "
        "and generations fail until the account is topped up."
    ]


async def test_other_refusals_warn_nobody(rig: Rig) -> None:
    admins = Admins()
    client = rig.client()
    watch = await rig.watch(admins, threshold=0, client=client)
    for code in (401, 404, 429, 500):
        rig.sandbox.api.fail_next("generate", code)
        with pytest.raises(ApiError):
            await client.generate("a fox")
    await watch.wait_quiet()
    assert admins.posts == []


async def test_a_402_when_the_credit_endpoint_fails_too_says_so_without_a_number(
    rig: Rig,
) -> None:
    rig.sandbox.api.credits = 0
    rig.sandbox.api.fail_next("credit", 500)
    admins = Admins()
    client = rig.client()
    watch = await rig.watch(admins, threshold=0, client=client)
    with pytest.raises(ApiError):
        await client.generate("a fox")
    await watch.wait_quiet()
    assert len(admins.posts) == 1 and "(402):" in admins.posts[0]


async def test_a_402_from_the_credit_endpoint_itself_warns_once(rig: Rig) -> None:
    for _ in range(2):
        rig.sandbox.api.fail_next("credit", 402)
    admins = Admins()
    watch = await rig.watch(admins)
    assert await watch.check() is None
    await watch.wait_quiet()
    assert len(admins.posts) == 1 and "(402)" in admins.posts[0]


async def test_threshold_zero_never_warns_low(rig: Rig) -> None:
    rig.sandbox.api.credits = 0
    admins = Admins()
    watch = await rig.watch(admins, threshold=0)
    assert await watch.check() == 0
    assert admins.posts == []


@pytest.mark.parametrize("fault", ["500", "455", "401", "unreachable"])
async def test_a_failing_credit_endpoint_is_one_line_and_no_crash(
    rig: Rig, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    client = rig.client()
    if fault == "unreachable":
        client = rig.client(f"http://127.0.0.1:{closed_port()}")
    else:
        rig.sandbox.api.fail_next("credit", int(fault))
    admins = Admins()
    watch = await rig.watch(admins, client=client)
    assert await watch.check() is None
    await watch.wait_quiet()
    [line] = credit_lines(caplog)
    assert line.levelno == logging.WARNING and line.message.startswith("credit check failed")
    assert "\n" not in line.getMessage() and line.exc_info is None
    assert admins.posts == []


async def test_the_periodic_check_survives_failures_and_stops_at_close(rig: Rig) -> None:
    api = rig.sandbox.api
    for _ in range(3):
        api.fail_next("credit", 500)
    api.credits = 42
    admins = Admins()
    watch = await rig.watch(admins, check_interval=0.01)
    watch.start()
    await api.wait_for_call("credit", 5)
    assert len(admins.posts) == 1
    await watch.close()
    calls = api.count("credit")
    # Closed means stopped: nothing left to wake up, and no more submissions heard.
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name() == "credit-watch")
    watch.submitted()
    await watch.wait_quiet()
    assert api.count("credit") == calls


async def test_submissions_trigger_readings_spaced_apart(rig: Rig) -> None:
    api = rig.sandbox.api
    loop = asyncio.get_running_loop()
    readings: list[float] = []

    class TimedClient(MidjourneyClient):
        async def credits(self) -> int:
            readings.append(loop.time())
            return await super().credits()

    client = TimedClient(rig.session, rig.sandbox.base_url, rig.sandbox.key)
    watch = await rig.watch(Admins(), client=client, spacing=0.2)
    # A burst of submissions at once is one reading, at once.
    for _ in range(5):
        watch.submitted()
    await watch.wait_quiet()
    assert api.count("credit") == 1
    # The next submission's reading waits out the spacing. One submitted while that reading is
    # under way may have spent after it: read once more, spaced again.
    hold = api.hold("credit")
    watch.submitted()
    await api.wait_held(hold)
    watch.submitted()
    watch.submitted()
    hold.release()
    await watch.wait_quiet()
    assert api.count("credit") == 3
    # Spaced by 0.2 s, counted from just before each reading (so a hair less between calls).
    gaps = [later - earlier for earlier, later in itertools.pairwise(readings)]
    assert len(gaps) == 2 and min(gaps) > 0.19, gaps


async def test_without_an_admin_channel_the_warning_is_one_log_line_an_hour(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.sandbox.api.credits = 42
    first, second = await rig.watch(None), await rig.watch(None)
    for watch in (first, second, first):
        await watch.check()
    [line] = credit_lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.message.startswith("⚠️ Midjourney API credits are low: 42 left (warning below 100")
    assert "ADMIN_CHANNEL_ID" in line.message
    rig.clock.t += HOUR
    await second.check()
    assert len(credit_lines(caplog)) == 2


async def test_a_store_that_fails_is_one_line(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.sandbox.api.credits = 42
    admins = Admins()
    store = await JobStore.open(rig.database_url)
    rig.stores.append(store)
    with sqlite3.connect(rig.database_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TABLE notices")
    watch = await rig.watch(admins, store=store)
    await watch.check()
    [line] = credit_lines(caplog)
    assert line.levelno == logging.WARNING and "job store failed" in line.message
    assert admins.posts == []


async def test_the_warning_never_carries_the_api_key(
    start_sandbox: StartSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await start_sandbox(api_key=SECRET_KEY, credits=42)
    running.key = SECRET_KEY
    async with aiohttp.ClientSession() as session:
        rig = Rig(running, session, f"sqlite:///{tmp_path}/bot.sqlite3")
        admins = Admins()
        try:
            client = rig.client()
            posting = await rig.watch(admins, client=client)
            logging_only = await rig.watch(None)
            await posting.check()
            rig.clock.t += HOUR
            await logging_only.check()
            rig.clock.t += HOUR
            running.api.credits = 0
            with pytest.raises(ApiError):
                await client.generate("a fox")
            await posting.wait_quiet()
            # A refused key: the reading fails in one line, which names no key either.
            await (await rig.watch(admins, client=rig.client(key="wrong-key"))).check()
        finally:
            for watch in rig.watches:
                await watch.close()
            for store in rig.stores:
                await store.close()
    assert len(admins.posts) == 2 and "(402) (0 left)" in admins.posts[1]
    assert any("credits are low" in r.getMessage() for r in credit_lines(caplog))
    assert any("credit check failed: API error 401" in r.message for r in credit_lines(caplog))
    for text in (*admins.posts, caplog.text):
        assert SECRET_KEY not in text


# ----- the real bot against the Discord double -------------------------------------------------


def admin_posts(double: DiscordDouble, channel_id: int) -> list[StoredMessage]:
    return double.messages(channel_id, ephemeral=False)


async def show_grid(double: DiscordDouble, task_id: str, user: int) -> StoredMessage:
    """A grid made elsewhere, shown with U1–U4 by /upscale: no credits are spent on it."""
    handle = await double.slash("upscale", {"task_id": task_id}, user)
    await handle.wait_ack()
    return await double.wait_for_message(
        lambda m: len(m.attachments) == 4 and "made elsewhere" in m.content
    )


async def test_low_credits_after_an_upscale_warn_the_admin_channel_once(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    await harness.standalone()  # the API outlives the bot: it is restarted below
    admins = double.add_channel("admins")
    harness.env["ADMIN_CHANNEL_ID"] = str(admins)
    alice = double.add_user("alice")
    sandbox.credits = 100 + sandbox.upscale_cost - 1
    foreign = sandbox.add_generation(prompt="made elsewhere")
    async with harness.running() as app:
        # The reading at start finds enough.
        await sandbox.wait_for_call("credit")
        grid = await show_grid(double, foreign, alice)
        assert admin_posts(double, admins) == []

        await click(double, grid, 1, alice)
        warning = await double.wait_for_message(lambda m: m.channel_id == admins)
        assert "credits are low: **99** left (warning below 100" in warning.content
        [post] = double.requests_to("POST", rf"/channels/{admins}/messages")
        assert post.body["allowed_mentions"]["parse"] == []
        await result_for(double, 1, alice)

        await click(double, grid, 2, alice)
        await result_for(double, 2, alice)
        assert await app.services.credit_watch.check() == 97
        assert admin_posts(double, admins) == [warning]
    # Restarted within the hour (same database): its reading at start finds 97, and stays quiet.
    async with harness.running() as app:
        assert await app.services.credit_watch.check() == 97
        assert admin_posts(double, admins) == [warning]


async def test_out_of_credits_tells_the_clicker_and_warns_the_admin_channel_once(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    admins = double.add_channel("admins")
    harness.env["ADMIN_CHANNEL_ID"] = str(admins)
    # Off, so that the warning is the 402's, not the reading's at start.
    harness.env["LOW_CREDIT_THRESHOLD"] = "0"
    alice = double.add_user("alice")
    sandbox.credits = 0
    foreign = sandbox.add_generation(prompt="made elsewhere")
    async with harness.running() as app:
        grid = await show_grid(double, foreign, alice)
        for number in (1, 2):
            handle = await click(double, grid, number, alice)
            told = await handle.wait_followup()
            assert told.ephemeral and "out of credits" in told.content
            await app.services.credit_watch.wait_quiet()
        [warning] = admin_posts(double, admins)
        assert warning.content.startswith(
            "⛔ The Midjourney API refused a request for lack of credits (402) (0 left)"
        )
        assert sandbox.count("generateUpscale") == 2


@pytest.mark.parametrize("refusal", ["403", "unknown channel"])
async def test_a_refused_admin_post_is_one_warning_and_retried(
    harness: Harness, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    double, sandbox = harness.double, harness.sandbox
    admins = double.add_channel("admins")
    if refusal == "403":
        harness.env["ADMIN_CHANNEL_ID"] = str(admins)
        double.fail_next("POST", rf"/channels/{admins}/messages", 403, code=50013)
    else:
        harness.env["ADMIN_CHANNEL_ID"] = "1234567890123456789"
    sandbox.credits = 42
    async with harness.running() as app:
        posts = rf"/channels/{harness.env['ADMIN_CHANNEL_ID']}/messages"
        await double.wait_for(lambda: double.count_requests("POST", posts) >= 1 or None)
        # Taken in turn with the reading at start, which gave its claim back.
        await app.services.credit_watch.check()
        assert double.count_requests("POST", posts) == 2
    warnings = credit_lines(caplog)
    if refusal == "403":
        [line] = warnings
        assert "may not post in channel" in line.message and "HTTP 403" in line.message
        assert len(admin_posts(double, admins)) == 1
    else:
        assert len(warnings) == 2
        for line in warnings:
            assert "HTTP 404" in line.message and "check ADMIN_CHANNEL_ID" in line.message
    assert all(r.exc_info is None for r in warnings)
