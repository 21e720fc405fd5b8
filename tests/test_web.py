"""The aiohttp listener over loopback HTTP: the callback route's refusals, signatures, health."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.jobs.store import Job, JobKind, JobState, JobStore
from bot.jobs.tracker import CALLBACK_PATH, Tracker
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.models import webhook_signature
from bot.midjourney.sandbox import SandboxAPI
from bot.web import MAX_CALLBACK_BYTES, Listener
from tests.conftest import FAST_POLL, RunningSandbox
from tests.fakes.publisher import RecordingPublisher

HMAC_KEY = "test-hmac-key"


@dataclass
class Setup:
    sandbox: SandboxAPI
    api_base: str
    session: aiohttp.ClientSession
    store: JobStore
    publisher: RecordingPublisher = field(default_factory=RecordingPublisher)
    listeners: list[Listener] = field(default_factory=list)
    trackers: list[Tracker] = field(default_factory=list)

    async def listener(self, *, hmac_key: str | None = None, attach: bool = True) -> str:
        """Start a listener (with a tracker unless ``attach`` is False); its base URL."""
        listener = Listener(hmac_key=hmac_key)
        port = await listener.start("127.0.0.1", 0)
        self.listeners.append(listener)
        base = f"http://127.0.0.1:{port}"
        if attach:
            self.attach(listener, base)
        return base

    def attach(self, listener: Listener, base: str) -> Tracker:
        client = MidjourneyClient(self.session, self.api_base, "test-key", timeout=5)
        tracker = Tracker(
            self.store,
            client,
            self.publisher,
            callback_base=base,
            deadline_seconds=30,
            poll=FAST_POLL,
            delivery_retries=1,
        )
        listener.tracker = tracker
        self.trackers.append(tracker)
        return tracker

    async def submitted_job(self) -> Job:
        """A submitted generation whose upstream id is not saved yet (a crash right after the
        API call): only the callback can tell the bot which task it is."""
        job = await self.store.create(
            kind=JobKind.IMAGINE,
            requester_id=42,
            guild_id=1,
            channel_id=555,
            deadline_seconds=30,
            prompt="a red fox",
        )
        moved = await self.store.transition(job.id, (JobState.REQUESTED,), JobState.SUBMITTED)
        assert moved is not None
        return moved

    async def post(
        self, url: str, body: Any = None, *, data: bytes | None = None, headers: Any = None
    ) -> tuple[int, Any]:
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


@pytest.fixture
async def setup(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[Setup]:
    store = await JobStore.open(f"sqlite:///{tmp_path}/web.sqlite3")
    session = aiohttp.ClientSession()
    rig = Setup(
        sandbox=sandbox.api,
        api_base=sandbox.base_url,
        session=session,
        store=store,
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
    timestamp = str(int(time.time() if at is None else at))
    return {
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": webhook_signature(key, task_id, timestamp),
    }


async def real_callback_works(
    setup: Setup, base: str, headers: Callable[[str], dict[str, str]] | None = None
) -> None:
    """A callback for a live job is answered 200, saves the task id and leads to delivery."""
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation(prompt="a red fox")
    status, body = await setup.post(
        f"{base}{CALLBACK_PATH}{job.callback_secret}",
        callback_body(task_id),
        headers=headers(task_id) if headers else None,
    )
    assert (status, body) == (200, {"ok": True})
    stored = await setup.store.get(job.id)
    assert stored is not None and stored.upstream_task_id == task_id
    await setup.publisher.wait_for(lambda: job.id in [j.id for j in setup.publisher.delivered])


# -- refusals -------------------------------------------------------------------------------------


async def test_unknown_secret_is_404_and_touches_nothing(setup: Setup) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    status, body = await setup.post(
        f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}", callback_body(task_id)
    )
    assert status == 404 and body == {"error": "unknown callback"}
    assert await setup.store.get(job.id) == job
    assert setup.sandbox.count("record-info") == 0
    await real_callback_works(setup, base)


@pytest.mark.parametrize(
    "secret",
    ["short", "x" * 65, "bad!secret!with!marks", "%2e%2e%2fhealthz-aaaaaaaaaaa", "a%20b" * 8],
)
async def test_malformed_secret_is_404(setup: Setup, secret: str) -> None:
    base = await setup.listener()
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}{secret}", callback_body("task-123456"))
    assert status == 404
    assert await setup.store.unfinished() == []


async def test_missing_secret_is_not_a_route(setup: Setup) -> None:
    base = await setup.listener()
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}", callback_body("task-123456"))
    assert status in (404, 405)


@pytest.mark.parametrize(
    "raw", [b"not json", b"", b"{", b"\xff\xfe\x00", b"[1, 2]", b'"a string"', b"null"]
)
async def test_non_json_body_is_400(setup: Setup, raw: bytes) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    status, body = await setup.post(f"{base}{CALLBACK_PATH}{job.callback_secret}", data=raw)
    assert status == 400 and body == {"error": "not a callback body"}
    assert await setup.store.get(job.id) == job


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"code": 200, "data": {}},
        {"code": 200, "data": {"taskId": None}},
        {"code": 200, "data": {"taskId": 12345678}},
        {"code": 200, "data": {"taskId": "bad id with spaces"}},
        {"code": 200, "data": {"taskId": "x"}},
        {"code": 200, "data": "task-123456"},
    ],
)
async def test_json_without_a_task_id_is_400(setup: Setup, payload: Any) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}{job.callback_secret}", payload)
    assert status == 400
    assert await setup.store.get(job.id) == job


async def test_body_over_64_kib_is_413(setup: Setup) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    body = callback_body(task_id)
    body["padding"] = "x" * MAX_CALLBACK_BYTES
    status, answer = await setup.post(f"{base}{CALLBACK_PATH}{job.callback_secret}", body)
    assert status == 413 and answer == {"error": "body too large"}
    stored = await setup.store.get(job.id)
    assert stored is not None and stored.upstream_task_id is None
    # Just under the limit is still read.
    body["padding"] = "x" * (MAX_CALLBACK_BYTES - 1024)
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}{job.callback_secret}", body)
    assert status == 200


async def test_get_on_the_callback_path_is_405(setup: Setup) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    async with setup.session.get(f"{base}{CALLBACK_PATH}{job.callback_secret}") as response:
        assert response.status == 405
    async with setup.session.put(f"{base}{CALLBACK_PATH}{job.callback_secret}") as response:
        assert response.status == 405
    assert await setup.store.get(job.id) == job


async def test_healthz(setup: Setup) -> None:
    base = await setup.listener(attach=False)
    async with setup.session.get(f"{base}/healthz") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"ok": False}
    setup.attach(setup.listeners[-1], base)
    async with setup.session.get(f"{base}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"ok": True}


async def test_before_a_tracker_is_attached_callbacks_are_503(setup: Setup) -> None:
    base = await setup.listener(attach=False)
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    url = f"{base}{CALLBACK_PATH}{job.callback_secret}"
    status, body = await setup.post(url, callback_body(task_id))
    assert status == 503 and body == {"error": "starting up"}
    assert await setup.store.get(job.id) == job
    # Once the tracker is there, the vendor's retry of the same callback goes through.
    setup.attach(setup.listeners[-1], base)
    status, _ = await setup.post(url, callback_body(task_id))
    assert status == 200


# -- signatures -----------------------------------------------------------------------------------


async def test_signed_callback_is_accepted(setup: Setup) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    await real_callback_works(setup, base, headers=signed)


async def test_task_id_spelling_in_data_is_accepted(setup: Setup) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    status, _ = await setup.post(
        f"{base}{CALLBACK_PATH}{job.callback_secret}",
        callback_body(task_id, spelling="task_id"),
        headers=signed(task_id),
    )
    assert status == 200
    stored = await setup.store.get(job.id)
    assert stored is not None and stored.upstream_task_id == task_id


async def test_unsigned_and_badly_signed_callbacks_are_401(setup: Setup) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    url = f"{base}{CALLBACK_PATH}{job.callback_secret}"
    now = str(int(time.time()))
    refused: list[dict[str, str]] = [
        {},
        {"X-Webhook-Timestamp": now},
        {"X-Webhook-Signature": webhook_signature(HMAC_KEY, task_id, now)},
        signed(task_id, key="another-key"),
        signed("othertask-1234"),  # signed for another task id
        {"X-Webhook-Timestamp": now, "X-Webhook-Signature": "AAAA"},
        {
            "X-Webhook-Timestamp": "-1",
            "X-Webhook-Signature": webhook_signature(HMAC_KEY, task_id, "-1"),
        },
        {"X-Webhook-Timestamp": "１２３", "X-Webhook-Signature": "x"},  # non-ASCII digits
        signed(task_id, at=time.time() - 600),  # ten minutes old
        signed(task_id, at=time.time() + 600),  # ten minutes ahead
    ]
    for headers in refused:
        status, body = await setup.post(url, callback_body(task_id), headers=headers)
        assert (status, body) == (401, {"error": "bad signature"}), headers
    assert await setup.store.get(job.id) == job
    assert setup.sandbox.count("record-info") == 0


async def test_signature_is_checked_before_the_secret_is_looked_up(setup: Setup) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    task_id = setup.sandbox.add_generation()
    status, _ = await setup.post(
        f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}", callback_body(task_id)
    )
    assert status == 401
    status, _ = await setup.post(
        f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}",
        callback_body(task_id),
        headers=signed(task_id),
    )
    assert status == 404


async def test_listener_keeps_answering_after_refusals(setup: Setup) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    job = await setup.submitted_job()
    url = f"{base}{CALLBACK_PATH}{job.callback_secret}"
    attempts: list[Awaitable[tuple[int, Any]]] = [
        setup.post(f"{base}{CALLBACK_PATH}nope", {}),
        setup.post(url, data=b"garbage"),
        setup.post(url, {"data": {}}),
        setup.post(url, data=b"{" + b" " * (MAX_CALLBACK_BYTES + 10) + b"}"),
        setup.post(url, callback_body("task-123456")),
        setup.post(url, callback_body("task-123456"), headers=signed("task-123456", key="k")),
    ]
    statuses = [(await attempt)[0] for attempt in attempts]
    assert statuses == [404, 400, 400, 413, 401, 401]
    async with setup.session.get(url) as response:
        assert response.status == 405
    await real_callback_works(setup, base, headers=signed)
