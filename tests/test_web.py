"""The aiohttp listener over loopback HTTP: the callback route's refusals, signatures, health."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from bot.jobs.store import JobState
from bot.jobs.types import CALLBACK_PATH
from bot.midjourney.models import webhook_signature
from bot.refusals import RefusalLog
from bot.web import MAX_CALLBACK_BYTES
from tests.conftest import RunningSandbox
from tests.fakes.publisher import RecordingPublisher
from tests.listener_rig import HMAC_KEY, ListenerRig, callback_body, listener_rig, signed


@pytest.fixture
async def setup(tmp_path: Path, sandbox: RunningSandbox) -> AsyncIterator[ListenerRig]:
    async with listener_rig(tmp_path, sandbox) as rig:
        yield rig


async def real_callback_works(
    setup: ListenerRig, base: str, headers: Callable[[str], dict[str, str]] | None = None
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


async def test_unknown_secret_is_404_and_touches_nothing(setup: ListenerRig) -> None:
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
async def test_malformed_secret_is_404(setup: ListenerRig, secret: str) -> None:
    base = await setup.listener()
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}{secret}", callback_body("task-123456"))
    assert status == 404
    assert await setup.store.unfinished() == []


async def test_missing_secret_is_not_a_route(setup: ListenerRig) -> None:
    base = await setup.listener()
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}", callback_body("task-123456"))
    assert status in (404, 405)


@pytest.mark.parametrize(
    "raw", [b"not json", b"", b"{", b"\xff\xfe\x00", b"[1, 2]", b'"a string"', b"null"]
)
async def test_non_json_body_is_400(setup: ListenerRig, raw: bytes) -> None:
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
async def test_json_without_a_task_id_is_400(setup: ListenerRig, payload: Any) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    status, _ = await setup.post(f"{base}{CALLBACK_PATH}{job.callback_secret}", payload)
    assert status == 400
    assert await setup.store.get(job.id) == job


async def test_body_over_64_kib_is_413(setup: ListenerRig) -> None:
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


async def test_get_on_the_callback_path_is_405(setup: ListenerRig) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    async with setup.session.get(f"{base}{CALLBACK_PATH}{job.callback_secret}") as response:
        assert response.status == 405
    async with setup.session.put(f"{base}{CALLBACK_PATH}{job.callback_secret}") as response:
        assert response.status == 405
    assert await setup.store.get(job.id) == job


async def test_healthz_without_a_health_check_knows_only_the_tracker(setup: ListenerRig) -> None:
    # The bot always gives its listener a health check (tests/test_health.py); without one the
    # listener can only tell whether it has a tracker to hand callbacks to.
    base = await setup.listener(attach=False)
    async with setup.session.get(f"{base}/healthz") as response:
        assert response.status == 503
        assert response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.json() == {
            "ok": False,
            "status": "starting",
            "last_callback_at": None,
        }
    setup.attach(setup.listeners[-1], base)
    async with setup.session.get(f"{base}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"ok": True, "status": "ok", "last_callback_at": None}


async def test_healthz_says_when_a_callback_was_last_accepted(setup: ListenerRig) -> None:
    base = await setup.listener()

    async def last_callback() -> str | None:
        async with setup.session.get(f"{base}/healthz") as response:
            return (await response.json())["last_callback_at"]

    # Refused callbacks do not count: they may come from anyone.
    task_id = setup.sandbox.add_generation()
    status, _ = await setup.post(
        f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}", callback_body(task_id)
    )
    assert status == 404 and await last_callback() is None
    before = int(time.time())
    await real_callback_works(setup, base)
    after = time.time()
    stamp = await last_callback()
    assert stamp is not None and stamp.endswith("Z")
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    assert before <= at <= after


async def test_before_a_tracker_is_attached_callbacks_are_503(setup: ListenerRig) -> None:
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


async def test_signed_callback_is_accepted(setup: ListenerRig) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    await real_callback_works(setup, base, headers=signed)


async def test_task_id_spelling_in_data_is_accepted(setup: ListenerRig) -> None:
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


async def test_unsigned_and_badly_signed_callbacks_are_401(setup: ListenerRig) -> None:
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


async def test_signature_is_checked_before_the_secret_is_looked_up(setup: ListenerRig) -> None:
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


async def test_listener_keeps_answering_after_refusals(setup: ListenerRig) -> None:
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


# -- forged and stray requests: the answer, and nothing else ----------------------------------

UNKNOWN_SECRET = "U" * 32


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()


async def _chunked(size: int) -> AsyncIterator[bytes]:
    """A body without Content-Length (chunked), so only counting its bytes can refuse it."""
    for _ in range(0, size, 8192):
        yield b" " * 8192


@dataclass(frozen=True)
class Forged:
    """One forged or stray request, aimed at a live job whose upstream task is known."""

    status: int
    hmac: bool = False
    method: str = "POST"
    secret: str | None = None  # None: the job's own secret
    content_type: str | None = "application/json"
    headers: Callable[[str], dict[str, str]] = lambda _task_id: {}
    body: Callable[[str], Any] = lambda task_id: _json(callback_body(task_id))


def nothing_posted(publisher: RecordingPublisher) -> bool:
    return not any(
        (
            publisher.statuses,
            publisher.delivered,
            publisher.marked,
            publisher.tidied,
            publisher.failures,
            publisher.whispered,
            publisher.grids,
        )
    )


def _now() -> str:
    return str(int(time.time()))


FORGED: dict[str, Forged] = {
    "unknown secret": Forged(404, secret=UNKNOWN_SECRET),
    "malformed secret": Forged(404, secret="bad!secret!with!marks"),
    "GET": Forged(405, method="GET", body=lambda _t: None),
    "PUT": Forged(405, method="PUT"),
    "DELETE": Forged(405, method="DELETE", body=lambda _t: None),
    "text/plain": Forged(415, content_type="text/plain"),
    "multipart": Forged(415, content_type="multipart/form-data; boundary=x"),
    "form": Forged(415, content_type="application/x-www-form-urlencoded"),
    "no Content-Type": Forged(415, content_type=None),
    "gzip bomb": Forged(
        415,
        headers=lambda _t: {"Content-Encoding": "gzip"},
        body=lambda _t: gzip.compress(b" " * (8 * 1024 * 1024)),
    ),
    "declared oversized": Forged(413, body=lambda t: _json(callback_body(t)) + b" " * 70_000),
    "chunked oversized": Forged(413, body=lambda _t: _chunked(MAX_CALLBACK_BYTES + 8192)),
    "not JSON": Forged(400, body=lambda _t: b"not json"),
    "JSON nested too deep": Forged(400, body=lambda _t: b"[" * 50_000),
    "no task id": Forged(400, body=lambda _t: _json({"code": 200, "data": {}})),
    # The secret is right but the body names another task: ignored and refused.
    "another task": Forged(409, body=lambda _t: _json(callback_body("othertask-123456"))),
    "unsigned": Forged(401, hmac=True),
    "signed with another key": Forged(401, hmac=True, headers=lambda t: signed(t, key="k")),
    "signature for another task": Forged(
        401, hmac=True, headers=lambda _t: signed("othertask-123456")
    ),
    "replayed six minutes later": Forged(
        401, hmac=True, headers=lambda t: signed(t, at=time.time() - 360)
    ),
    "timestamp six minutes ahead": Forged(
        401, hmac=True, headers=lambda t: signed(t, at=time.time() + 360)
    ),
    "timestamp not a number": Forged(
        401,
        hmac=True,
        headers=lambda t: {
            "X-Webhook-Timestamp": "yesterday",
            "X-Webhook-Signature": webhook_signature(HMAC_KEY, t, "yesterday"),
        },
    ),
    "timestamp with a fraction": Forged(
        401,
        hmac=True,
        headers=lambda t: {
            "X-Webhook-Timestamp": f"{_now()}.5",
            "X-Webhook-Signature": webhook_signature(HMAC_KEY, t, f"{_now()}.5"),
        },
    ),
    "timestamp of 5000 digits": Forged(
        401,
        hmac=True,
        headers=lambda t: {
            "X-Webhook-Timestamp": "9" * 5000,
            "X-Webhook-Signature": webhook_signature(HMAC_KEY, t, "9" * 5000),
        },
    ),
    "non-ASCII signature": Forged(
        401,
        hmac=True,
        headers=lambda _t: {"X-Webhook-Timestamp": _now(), "X-Webhook-Signature": "é" * 44},
    ),
    "signed, unknown secret": Forged(404, hmac=True, secret=UNKNOWN_SECRET, headers=signed),
    "signed, another task": Forged(
        409,
        hmac=True,
        headers=lambda _t: signed("othertask-123456"),
        body=lambda _t: _json(callback_body("othertask-123456")),
    ),
}


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
async def test_forged_request_changes_nothing_and_logs_one_line(
    setup: ListenerRig, caplog: pytest.LogCaptureFixture, forged: Forged
) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY if forged.hmac else None)
    task_id = setup.sandbox.add_generation()
    job = await setup.submitted_job(task_id)
    secret = forged.secret or job.callback_secret
    headers = {"Content-Type": forged.content_type} if forged.content_type else {}
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    async with setup.session.request(
        forged.method,
        f"{base}{CALLBACK_PATH}{secret}",
        data=forged.body(task_id),
        headers={**headers, **forged.headers(task_id)},
        skip_auto_headers=("Content-Type",),
    ) as response:
        assert response.status == forged.status
        if forged.status == 405:
            assert response.headers["Allow"] == "POST"
    # Had anything rung the job's doorbell, its watcher would deliver before this returns.
    await setup.trackers[-1].wait_idle()
    assert await setup.store.get(job.id) == job  # state, upstream id, updated_at: all as before
    assert nothing_posted(setup.publisher)
    assert setup.sandbox.count("record-info") == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    for record in caplog.records:
        # aiosqlite's DEBUG lines echo query parameters; the bot's own lines never may.
        if record.levelno >= logging.INFO or record.name.startswith("bot."):
            assert secret not in record.getMessage() and CALLBACK_PATH not in record.getMessage()
            assert record.exc_info is None


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"],
)
async def test_json_content_types_are_accepted(setup: ListenerRig, content_type: str) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    status, _ = await setup.post(
        f"{base}{CALLBACK_PATH}{job.callback_secret}",
        callback_body(task_id),
        headers={"Content-Type": content_type},
    )
    assert status == 200
    await setup.publisher.wait_for(lambda: [j.id for j in setup.publisher.delivered] == [job.id])


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "data": {"taskId": "{task_id}"}},
        {"code": 200, "data": {"task_id": "{task_id}"}},
        {"code": 200, "taskId": "{task_id}"},
        {"code": 200, "task_id": "{task_id}"},
    ],
    ids=["data.taskId", "data.task_id", "taskId", "task_id"],
)
async def test_every_spelling_of_the_task_id_is_signed_and_accepted(
    setup: ListenerRig, body: dict[str, Any]
) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    status, _ = await setup.post(
        f"{base}{CALLBACK_PATH}{job.callback_secret}",
        data=json.dumps(body).replace("{task_id}", task_id).encode(),
        headers=signed(task_id),
    )
    assert status == 200
    stored = await setup.store.get(job.id)
    assert stored is not None and stored.upstream_task_id == task_id


async def test_signature_is_compared_in_constant_time(
    setup: ListenerRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    sent: list[str] = []

    def signed_and_noted(task_id: str) -> dict[str, str]:
        headers = signed(task_id)
        sent.append(headers["X-Webhook-Signature"])
        return headers

    monkeypatch.setattr(hmac, "compare_digest", spy)
    base = await setup.listener(hmac_key=HMAC_KEY)
    await real_callback_works(setup, base, headers=signed_and_noted)
    # The sandbox checks its API key the same way: pick out the signature's comparison.
    assert [pair for pair in compared if sent[0] in pair] == [(sent[0], sent[0])]


async def test_replay_after_delivery_is_200_and_posts_nothing_twice(setup: ListenerRig) -> None:
    base = await setup.listener(hmac_key=HMAC_KEY)
    job = await setup.submitted_job()
    task_id = setup.sandbox.add_generation()
    url = f"{base}{CALLBACK_PATH}{job.callback_secret}"
    headers = signed(task_id)
    assert (await setup.post(url, callback_body(task_id), headers=headers))[0] == 200
    await setup.publisher.wait_for(lambda: len(setup.publisher.tidied) == 1)
    await setup.trackers[-1].wait_idle()
    delivered = await setup.store.get(job.id)
    assert delivered is not None and delivered.state is JobState.DELIVERED
    record_infos = setup.sandbox.count("record-info")
    # The very same signed request again, as a vendor retry or a replay within the window would.
    for _ in range(3):
        status, body = await setup.post(url, callback_body(task_id), headers=headers)
        assert (status, body) == (200, {"ok": True})
    await setup.trackers[-1].wait_idle()
    assert await setup.store.get(job.id) == delivered
    assert [j.id for j in setup.publisher.delivered] == [job.id]
    assert setup.sandbox.count("record-info") == record_infos


# -- slow and broken senders, over raw sockets ------------------------------------------------


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = URL(base)
    assert url.host is not None and url.port is not None
    return await asyncio.open_connection(url.host, url.port)


def request_head(path: str, headers: dict[str, str], *, method: str = "POST") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def dribble(writer: asyncio.StreamWriter, interval: float, until: float) -> None:
    """One byte per ``interval``: never stalled for long, never done, until the monotonic time
    ``until``, set short of the listener's cut-off: a byte that reaches the closed connection
    makes the kernel send a reset, which can overtake the answer at this test's reader."""
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing() and time.monotonic() < until:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(interval)


@pytest.mark.parametrize("sender", ["stalls", "dribbles"])
async def test_a_slow_body_is_cut_off_with_408(
    setup: ListenerRig, caplog: pytest.LogCaptureFixture, sender: str
) -> None:
    body_timeout = 0.3
    base = await setup.listener(body_timeout=body_timeout)
    job = await setup.submitted_job()
    reader, writer = await connect(base)
    head = {"Content-Type": "application/json", "Content-Length": "5000"}
    writer.write(request_head(f"{CALLBACK_PATH}{job.callback_secret}", head) + b"{")
    await writer.drain()
    started = time.monotonic()
    sending = (
        asyncio.create_task(dribble(writer, 0.02, started + body_timeout * 0.8))
        if sender == "dribbles"
        else None
    )
    try:
        # Read to the end: after answering, the listener must also drop the connection.
        raw = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        if sending is not None:
            sending.cancel()
        writer.close()
    elapsed = time.monotonic() - started
    status, headers, body = parse_answer(raw)
    assert status == 408 and json.loads(body) == {"error": "body too slow"}
    assert headers["connection"] == "close"
    # Not cut before the bound (the clock may fire a hair early), and not long after it.
    assert body_timeout * 0.9 <= elapsed < body_timeout * 2 + 2
    assert await setup.store.get(job.id) == job
    refusals = [r.getMessage() for r in caplog.records if r.name == "bot.web"]
    assert len(refusals) == 1 and "408" in refusals[0]
    assert job.callback_secret not in refusals[0]
    await real_callback_works(setup, base)


@pytest.mark.parametrize("sender", ["stalls", "dribbles"])
async def test_unfinished_headers_are_cut_off(setup: ListenerRig, sender: str) -> None:
    header_timeout = 0.3
    base = await setup.listener(header_timeout=header_timeout)
    reader, writer = await connect(base)
    writer.write(
        b"POST /callbacks/midjourney/aaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\nX-A: "
    )
    await writer.drain()
    started = time.monotonic()
    sending = (
        asyncio.create_task(dribble(writer, 0.02, started + header_timeout * 0.8))
        if sender == "dribbles"
        else None
    )
    try:
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    finally:
        if sending is not None:
            sending.cancel()
        writer.close()
    assert time.monotonic() - started >= header_timeout * 0.9
    await real_callback_works(setup, base)


@pytest.mark.parametrize(
    "head",
    [
        {"Content-Type": "text/plain", "Content-Length": "5000"},
        {"Content-Length": "5000"},
        {"Content-Type": "application/json", "Content-Length": str(10 * 1024 * 1024)},
        {"Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": "5"},
    ],
    ids=["text/plain", "no Content-Type", "declared 10 MiB", "gzip"],
)
async def test_refusals_do_not_wait_for_the_body(setup: ListenerRig, head: dict[str, str]) -> None:
    # A body timeout far beyond the test's patience: only an answer given before the body
    # arrives can pass.
    base = await setup.listener(body_timeout=3600)
    job = await setup.submitted_job()
    reader, writer = await connect(base)
    try:
        writer.write(request_head(f"{CALLBACK_PATH}{job.callback_secret}", head))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
    assert status_line.split()[1] in (b"413", b"415")
    assert await setup.store.get(job.id) == job


async def test_malformed_http_is_refused_in_one_line_without_the_secret(
    setup: ListenerRig, caplog: pytest.LogCaptureFixture
) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    caplog.set_level(logging.DEBUG)
    reader, writer = await connect(base)
    try:
        # A control character in the request line: aiohttp itself answers 400.
        writer.write(f"POST {CALLBACK_PATH}{job.callback_secret}\x01 HTTP/1.1\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    assert parse_answer(raw)[0] == 400
    records = [r for r in caplog.records if r.name.startswith("bot.web")]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].exc_info is None and records[0].exc_text is None
    assert job.callback_secret not in records[0].getMessage()
    assert await setup.store.get(job.id) == job


class Signal(logging.Handler):
    """Collects records and wakes whoever waits for the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


async def test_a_sender_hanging_up_mid_body_is_one_line(setup: ListenerRig) -> None:
    base = await setup.listener()
    job = await setup.submitted_job()
    signal = Signal()
    logger = logging.getLogger("bot.web")
    logger.addHandler(signal)
    try:
        _, writer = await connect(base)
        head = {"Content-Type": "application/json", "Content-Length": "5000"}
        writer.write(request_head(f"{CALLBACK_PATH}{job.callback_secret}", head) + b"{")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(signal.arrived.wait(), timeout=5)
    finally:
        logger.removeHandler(signal)
    assert len(signal.records) == 1 and "400" in signal.records[0].getMessage()
    assert signal.records[0].exc_info is None
    assert job.callback_secret not in signal.records[0].getMessage()
    assert await setup.store.get(job.id) == job
    await real_callback_works(setup, base)


async def test_a_flood_of_forgeries_does_not_hold_up_a_real_callback(setup: ListenerRig) -> None:
    # Timeouts far beyond the test: the stalled senders hold their connections throughout.
    base = await setup.listener(hmac_key=HMAC_KEY, body_timeout=3600, header_timeout=3600)
    decoy = await setup.submitted_job(setup.sandbox.add_generation())
    decoy_url = f"{base}{CALLBACK_PATH}{decoy.callback_secret}"
    stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for index in range(60):
        reader, writer = await connect(base)
        if index % 2:
            head = {"Content-Type": "application/json", "Content-Length": "5000"}
            writer.write(request_head(URL(decoy_url).path, head) + b"{")
        else:
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        stalled.append((reader, writer))

    other = "othertask-123456"
    other_body = _json(callback_body(other))

    def unknown_secret(s: aiohttp.ClientSession) -> Awaitable[int]:
        return _status(
            s, f"{base}{CALLBACK_PATH}{secrets.token_urlsafe(24)}", other_body, signed(other)
        )

    kinds: list[tuple[int, Callable[[aiohttp.ClientSession], Awaitable[int]]]] = [
        (404, unknown_secret),
        (413, lambda s: _status(s, decoy_url, b" " * (MAX_CALLBACK_BYTES + 1))),
        (401, lambda s: _status(s, decoy_url, other_body)),
        (415, lambda s: _status(s, decoy_url, b"x", {"Content-Type": "text/plain"})),
        (400, lambda s: _status(s, decoy_url, b"garbage")),
    ]
    forged = [kinds[i % len(kinds)] for i in range(300)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as flood:
        calls = [send(flood) for _, send in forged]
        # The real callback goes out in the middle of the flood, with stalled senders around.
        real = real_callback_works(setup, base, headers=signed)
        results = await asyncio.gather(*calls[:150], real, *calls[150:])
    try:
        assert results[:150] + results[151:] == [expected for expected, _ in forged]
        assert [j.id for j in setup.publisher.delivered] != []
        assert len(setup.publisher.delivered) == 1
        assert await setup.store.get(decoy.id) == decoy
        # The stalled senders were never answered nor dropped: they held their handlers all along.
        unanswered = await asyncio.gather(*(nothing_arrives(r) for r, _ in stalled))
        assert all(unanswered)
    finally:
        for _, writer in stalled:
            writer.close()


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), timeout=0.05)
    except TimeoutError:
        return True
    return False


async def _status(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> int:
    async with session.post(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    ) as response:
        await response.read()
        return response.status


# -- the refusal log: a line a refusal at first, a count in a flood ----------------------------

BURST = 10
WINDOW = 60.0


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeTimer:
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeTimers:
    """Stands in for the loop's ``call_later``: a test fires what is due itself."""

    made: list[FakeTimer] = field(default_factory=list)

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.made.append(timer)
        return timer

    @property
    def pending(self) -> list[FakeTimer]:
        return [t for t in self.made if not t.cancelled]

    def fire(self) -> None:
        (timer,) = self.pending
        timer.cancelled = True  # a handle that has run is spent
        timer.callback()


def refusal_log(clock: FakeClock, timers: FakeTimers) -> RefusalLog:
    return RefusalLog(
        logging.getLogger("bot.web"), burst=BURST, window=WINDOW, clock=clock, schedule=timers
    )


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bot.web"]


def test_refusals_under_the_limit_are_logged_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, timers = FakeClock(), FakeTimers()
    refusals = refusal_log(clock, timers)
    for index in range(BURST - 3):
        clock.now += 1
        refusals.refused(404, "203.0.113.9", f"no job has this secret task=t-{index}")
    assert refusal_lines(caplog) == [
        f"callback refused 404 from 203.0.113.9: no job has this secret task=t-{index}"
        for index in range(BURST - 3)
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    # Nothing was left out, so there is nothing to sum up and no timer to wait for.
    assert timers.made == [] and refusals.left_out == {}
    clock.now += WINDOW
    refusals.close()
    assert len(refusal_lines(caplog)) == BURST - 3


def test_a_flood_logs_the_first_lines_and_one_summary_by_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, timers = FakeClock(), FakeTimers()
    refusals = refusal_log(clock, timers)
    statuses = [401] * 34 + [404] * 18_200 + [415] * 10
    for status in statuses:
        refusals.refused(status, "203.0.113.9", "why")
    clock.now += 5  # the flood went on for 5 s …
    refusals.refused(404, "203.0.113.9", "why")
    lines = refusal_lines(caplog)
    assert lines == ["callback refused 401 from 203.0.113.9: why"] * BURST
    assert refusals.left_out == {401: 24, 404: 18_201, 415: 10}
    # … and then stopped: the timer, set for the window's end, says what was left out.
    (timer,) = timers.pending
    assert timer.delay == WINDOW
    clock.now += WINDOW - 5
    timers.fire()
    assert refusal_lines(caplog)[BURST:] == [
        "callbacks refused: 18,235 more in the last 60 s not logged one by one "
        "(404: 18,201, 401: 24, 415: 10)"
    ]
    assert caplog.records[-1].levelno == logging.WARNING
    assert timers.pending == [] and refusals.left_out == {}
    # A new window: its first refusals are logged again, one by one.
    clock.now += 1
    refusals.refused(401, "198.51.100.7", "bad signature task=t-1")
    assert (
        refusal_lines(caplog)[-1]
        == "callback refused 401 from 198.51.100.7: bad signature task=t-1"
    )


def test_a_refusal_after_the_window_sums_it_up_before_the_timer_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A busy loop may run the timer late; the next refusal then closes the window itself.
    clock, timers = FakeClock(), FakeTimers()
    refusals = refusal_log(clock, timers)
    for _ in range(BURST + 2):
        refusals.refused(404, "203.0.113.9", "why")
    (timer,) = timers.pending
    clock.now += WINDOW + 3
    refusals.refused(413, "203.0.113.9", "body too large")
    assert timer.cancelled and timers.pending == []
    assert refusal_lines(caplog)[BURST:] == [
        "callbacks refused: 2 more in the last 60 s not logged one by one (404: 2)",
        "callback refused 413 from 203.0.113.9: body too large",
    ]


def test_a_quiet_window_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock, timers = FakeClock(), FakeTimers()
    refusals = refusal_log(clock, timers)
    # Windows without a refusal: no line, no timer.
    clock.now += 3 * WINDOW
    refusals.close()
    assert refusal_lines(caplog) == [] and timers.made == []
    # A flood of one window: its lines and its summary, from the one timer it set …
    for _ in range(BURST + 1):
        refusals.refused(404, "203.0.113.9", "why")
    clock.now += WINDOW
    timers.fire()
    assert len(refusal_lines(caplog)) == BURST + 1
    # … and then quiet again: the timer is not set anew, there is nothing more to say.
    clock.now += 10 * WINDOW
    refusals.close()
    assert len(timers.made) == 1 and timers.pending == []
    assert len(refusal_lines(caplog)) == BURST + 1


async def test_closing_the_listener_says_what_is_pending_and_stops_the_timer(
    setup: ListenerRig, caplog: pytest.LogCaptureFixture
) -> None:
    clock, timers = FakeClock(), FakeTimers()
    base = await setup.listener(refusals=refusal_log(clock, timers))
    for _ in range(BURST + 5):
        status, _ = await setup.post(
            f"{base}{CALLBACK_PATH}{UNKNOWN_SECRET}", callback_body("task-123456")
        )
        assert status == 404
    (timer,) = timers.pending
    clock.now += 12
    await setup.listeners[-1].close()
    assert timer.cancelled and timers.pending == []
    assert refusal_lines(caplog)[BURST:] == [
        "callbacks refused: 5 more in the last 12 s not logged one by one (404: 5)"
    ]


async def test_a_flood_is_answered_in_full_and_logged_in_a_few_lines(
    setup: ListenerRig, caplog: pytest.LogCaptureFixture
) -> None:
    clock, timers = FakeClock(), FakeTimers()
    base = await setup.listener(hmac_key=HMAC_KEY, refusals=refusal_log(clock, timers))
    job = await setup.submitted_job()
    own = f"{base}{CALLBACK_PATH}{job.callback_secret}"
    forged_secrets = [secrets.token_urlsafe(24) for _ in range(100)]

    def unknown(index: int) -> Awaitable[int]:
        url = f"{base}{CALLBACK_PATH}{forged_secrets[index % 100]}"
        return setup.status(url, callback_body("task-123456"), headers=signed("task-123456"))

    kinds: list[tuple[int, Callable[[int], Awaitable[int]]]] = [
        (404, unknown),
        (401, lambda _i: setup.status(own, callback_body("task-123456"))),
        (400, lambda _i: setup.status(own, data=b"garbage")),
        (415, lambda _i: setup.status(own, data=b"x", headers={"Content-Type": "text/plain"})),
        (413, lambda _i: setup.status(own, data=b" " * (MAX_CALLBACK_BYTES + 1))),
    ]
    flood = [kinds[i % len(kinds)] for i in range(500)]
    caplog.clear()
    statuses = await asyncio.gather(*(send(i) for i, (_, send) in enumerate(flood)))
    # Every request got its own answer, whether its refusal was logged or only counted.
    assert statuses == [expected for expected, _ in flood]
    assert await setup.store.get(job.id) == job
    lines = refusal_lines(caplog)
    assert len(lines) == BURST and all(line.startswith("callback refused ") for line in lines)
    # The first refusals in arrival order, which the gather does not fix: count from the lines.
    logged = Counter(int(line.split()[2]) for line in lines)
    clock.now += WINDOW
    timers.fire()
    (summary,) = refusal_lines(caplog)[BURST:]
    left_out = {status: 100 - logged[status] for status in (404, 401, 400, 415, 413)}
    by_count = sorted(left_out.items(), key=lambda item: (-item[1], item[0]))
    assert summary == (
        "callbacks refused: 490 more in the last 60 s not logged one by one ("
        + ", ".join(f"{status}: {count}" for status, count in by_count if count)
        + ")"
    )
    for record in caplog.records:
        message = record.getMessage()
        assert CALLBACK_PATH not in message and job.callback_secret not in message
        assert not any(secret in message for secret in forged_secrets)
    # The flood is over and its window summed up: a real callback is still taken.
    await real_callback_works(setup, base, headers=signed)


async def test_the_summary_timer_runs_on_the_event_loop(setup: ListenerRig) -> None:
    # The loop's own call_later, for a short window; the clock stands still, so both refusals
    # fall in one window however slowly the requests go. No request comes after the second:
    # only the timer can write the summary.
    logger = logging.getLogger("bot.web")
    base = await setup.listener(
        refusals=RefusalLog(logger, burst=1, window=0.05, clock=FakeClock())
    )
    signal = Signal()
    logger.addHandler(signal)
    try:
        for _ in range(2):
            status, _ = await setup.post(
                f"{base}{CALLBACK_PATH}{UNKNOWN_SECRET}", callback_body("task-123456")
            )
            assert status == 404
        while len(signal.records) < 2:
            signal.arrived.clear()
            await asyncio.wait_for(signal.arrived.wait(), timeout=5)
    finally:
        logger.removeHandler(signal)
    first, summary = (r.getMessage() for r in signal.records)
    assert first.startswith("callback refused 404 from ")
    assert summary == "callbacks refused: 1 more in the last 0 s not logged one by one (404: 1)"
    assert UNKNOWN_SECRET not in first + summary


async def test_a_flood_of_malformed_http_is_bounded_like_other_refusals(
    setup: ListenerRig, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answers malformed HTTP itself; its log records go to the same bounded refusal log,
    one line naming the kind of fault, never the bytes sent (which may hold a secret)."""
    clock, timers = FakeClock(), FakeTimers()
    base = await setup.listener(refusals=refusal_log(clock, timers))
    job = await setup.submitted_job()
    caplog.set_level(logging.DEBUG)

    async def garbage() -> int:
        reader, writer = await connect(base)
        try:
            writer.write(f"POST {CALLBACK_PATH}{job.callback_secret}\x01 HTTP/1.1\r\n\r\n".encode())
            await writer.drain()
            return parse_answer(await asyncio.wait_for(reader.read(), timeout=5))[0]
        finally:
            writer.close()

    statuses = [await garbage() for _ in range(BURST + 15)]
    assert statuses == [400] * (BURST + 15)
    lines = refusal_lines(caplog)
    assert lines[0].startswith("callback refused 400 from 127.0.0.1: malformed HTTP (")
    assert len(lines) == BURST
    clock.now += WINDOW
    timers.fire()
    assert refusal_lines(caplog)[BURST:] == [
        "callbacks refused: 15 more in the last 60 s not logged one by one (400: 15)"
    ]
    for record in caplog.records:
        assert record.exc_info is None
        assert job.callback_secret not in record.getMessage()
    assert await setup.store.get(job.id) == job
