"""One loopback rig for the callback listener, used by tests/test_web.py and tests/test_metrics.py.

The API sandbox, a job store, a client session, and listeners started on demand (each with a
tracker unless told otherwise); what the tests of a file vary is an argument of ``listener``:
the HMAC key, metrics on or off, the timeouts, the refusal log.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bot import metrics as m
from bot.jobs.callback_secrets import CallbackSecrets
from bot.jobs.stats import JobStats
from bot.jobs.store import Job, JobState, JobStore
from bot.jobs.tracker import Tracker
from bot.jobs.types import TrackerSettings
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.models import webhook_signature
from bot.midjourney.sandbox import SandboxAPI
from bot.refusals import RefusalLog
from bot.web import BODY_TIMEOUT_SECONDS, HEADER_TIMEOUT_SECONDS, Listener
from tests.conftest import FAST_POLL, SANDBOX_KEY, RunningSandbox
from tests.fakes.publisher import RecordingPublisher
from tests.names import JobKind

HMAC_KEY = "test-hmac-key"


@dataclass
class ListenerRig:
    sandbox: SandboxAPI
    api_base: str
    session: aiohttp.ClientSession
    store: JobStore
    stats: JobStats
    api_key: str = SANDBOX_KEY
    publisher: RecordingPublisher = field(default_factory=RecordingPublisher)
    # The trackers of one rig share a key, as the replicas of one bot do.
    callback_secrets: CallbackSecrets = field(
        default_factory=lambda: CallbackSecrets.from_token("listener-rig-token")
    )
    listeners: list[Listener] = field(default_factory=list)
    trackers: list[Tracker] = field(default_factory=list)

    async def listener(
        self,
        *,
        hmac_key: str | None = None,
        attach: bool = True,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        metrics: m.Metrics | None = None,
        refusals: RefusalLog | None = None,
    ) -> str:
        """Start a listener (with a tracker unless ``attach`` is False); its base URL."""
        listener = Listener(
            hmac_key=hmac_key,
            body_timeout=body_timeout,
            header_timeout=header_timeout,
            metrics=metrics,
            refusals=refusals,
        )
        port = await listener.start("127.0.0.1", 0)
        self.listeners.append(listener)
        base = f"http://127.0.0.1:{port}"
        if attach:
            self.attach(listener, base)
        return base

    def attach(self, listener: Listener, base: str) -> Tracker:
        """Give ``listener`` a tracker (recording into the listener's metrics, if any)."""
        client = MidjourneyClient(self.session, self.api_base, self.api_key, timeout=5)
        tracker = Tracker(
            self.store,
            client,
            self.publisher,
            TrackerSettings(
                callback_base=base, deadline_seconds=30, poll=FAST_POLL, delivery_retries=1
            ),
            callback_secrets=self.callback_secrets,
            metrics=listener.metrics,
        )
        listener.tracker = tracker
        listener.stats = self.stats
        self.trackers.append(tracker)
        return tracker

    async def submitted_job(self, task_id: str | None = None) -> Job:
        """A submitted generation; without ``task_id`` its upstream id is not saved yet (a crash
        right after the API call): only the callback can tell the bot which task it is."""
        job = await self.store.create(
            kind=JobKind.IMAGINE,
            requester_id=42,
            guild_id=1,
            channel_id=555,
            deadline_seconds=30,
            prompt="a red fox",
            callback_secret=self.callback_secrets.new(),
        )
        moved = await self.store.transition(
            job.id, (JobState.REQUESTED,), JobState.SUBMITTED, upstream_task_id=task_id
        )
        assert moved is not None
        return moved

    async def post(
        self, url: str, body: Any = None, *, data: bytes | None = None, headers: Any = None
    ) -> tuple[int, Any]:
        """POST ``body`` as JSON (or ``data`` as it is); the status and the parsed answer."""
        payload = data if data is not None else json.dumps(body).encode()
        async with self.session.post(
            url, data=payload, headers={"Content-Type": "application/json", **(headers or {})}
        ) as response:
            text = await response.text()
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            return response.status, parsed

    async def status(
        self, url: str, body: Any = None, *, data: bytes | None = None, headers: Any = None
    ) -> int:
        """As ``post``, the status only."""
        return (await self.post(url, body, data=data, headers=headers))[0]


@asynccontextmanager
async def listener_rig(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[ListenerRig]:
    """A rig over a fresh store; every tracker and listener it started is closed after."""
    store = await JobStore.open(f"sqlite:///{tmp_path}/listener.sqlite3")
    session = aiohttp.ClientSession()
    rig = ListenerRig(
        sandbox=sandbox.api,
        api_base=sandbox.base_url,
        session=session,
        store=store,
        stats=JobStats(store.database),
        api_key=sandbox.key,
    )
    try:
        yield rig
    finally:
        for tracker in rig.trackers:
            await tracker.close()
        for listener in rig.listeners:
            await listener.close()
        await session.close()
        await store.close()


def callback_body(task_id: str, *, spelling: str = "taskId") -> dict[str, Any]:
    return {"code": 200, "msg": "success", "data": {spelling: task_id, "resultUrls": []}}


def signed(task_id: str, *, key: str = HMAC_KEY, at: float | None = None) -> dict[str, str]:
    """kie.ai's signature headers for ``task_id``, made now (or ``at``) with ``key``."""
    timestamp = str(int(time.time() if at is None else at))
    return {
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": webhook_signature(key, task_id, timestamp),
    }
