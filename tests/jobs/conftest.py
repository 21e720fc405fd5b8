"""A loopback rig for the job lifecycle: the API sandbox, a job store, the listener, a tracker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.store import JobStore
from bot.jobs.throttle import SubmitThrottle
from bot.jobs.tracker import Tracker
from bot.jobs.types import PollPolicy
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.sandbox import SandboxAPI
from bot.web import Listener
from tests.conftest import FAST_POLL, RunningSandbox
from tests.fakes.publisher import RecordingPublisher


@dataclass
class Rig:
    sandbox: SandboxAPI
    api_base: str
    session: aiohttp.ClientSession
    database_url: str
    listener: Listener
    listener_url: str
    store: JobStore
    publisher: RecordingPublisher = field(default_factory=RecordingPublisher)
    # One bot token across 'restarts', as in production.
    callback_secrets: CallbackSecrets = field(
        default_factory=lambda: CallbackSecrets.from_token("t" * 60)
    )
    trackers: list[Tracker] = field(default_factory=list)

    def tracker(
        self,
        *,
        callbacks: bool = True,
        deadline: float = 30.0,
        poll: PollPolicy = FAST_POLL,
        publisher: RecordingPublisher | None = None,
        store: JobStore | None = None,
        watermark: str | None = None,
        throttle: SubmitThrottle | None = None,
        submit_retry_delays: tuple[float, ...] = (0.01, 0.02, 0.05),
        max_jobs_per_user: int | None = None,
        api_base: str | None = None,
    ) -> Tracker:
        """A tracker wired to the listener (one at a time: a new one is a 'restarted bot').

        Unless a test is about pacing, submissions are not paced: tests start many at once.
        """
        client = MidjourneyClient(self.session, api_base or self.api_base, "test-key", timeout=5)
        tracker = Tracker(
            store or self.store,
            client,
            publisher or self.publisher,
            callback_secrets=self.callback_secrets,
            callback_base=self.listener_url if callbacks else None,
            deadline_seconds=deadline,
            poll=poll,
            watermark=watermark,
            delivery_retries=2,
            throttle=throttle or SubmitThrottle(1000, 1.0, max_waiting=1000),
            submit_retry_delays=submit_retry_delays,
            max_jobs_per_user=max_jobs_per_user,
        )
        self.listener.tracker = tracker
        self.trackers.append(tracker)
        return tracker

    def grid(self, prompt: str = "a red fox in snow") -> str:
        """A finished generation, as if /imagine had run earlier."""
        return self.sandbox.add_generation(prompt=prompt)


@pytest.fixture
async def rig(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Rig]:

    listener = Listener()
    port = await listener.start("127.0.0.1", 0)
    database_url = f"sqlite:///{tmp_path}/jobs.sqlite3"
    store = await JobStore.open(database_url)
    session = aiohttp.ClientSession()
    rig = Rig(
        sandbox=sandbox.api,
        api_base=sandbox.base_url,
        session=session,
        database_url=database_url,
        listener=listener,
        listener_url=f"http://127.0.0.1:{port}",
        store=store,
    )
    try:
        yield rig
    finally:
        for tracker in rig.trackers:
            await tracker.close()
        await listener.close()
        await session.close()
        await store.close()
