"""The Midjourney API sandbox, exercised over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bot.midjourney.models import webhook_signature
from bot.midjourney.sandbox import SandboxAPI

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE_SIZE = 32
GENERATE = "api/v1/mj/generate"
UPSCALE = "api/v1/mj/generateUpscale"
VARY = "api/v1/mj/generateVary"
RECORD_INFO = "api/v1/mj/record-info"
CREDIT = "api/v1/chat/credit"
DOWNLOAD_URL = "api/v1/common/download-url"


# ----- a PNG reader independent of the sandbox's encoder --------------------------------------


@dataclass
class Png:
    width: int
    height: int
    rows: list[bytes]
    text: dict[str, str]


def decode_png(data: bytes) -> Png:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: list[tuple[bytes, bytes]] = []
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        position += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0, "this reader only handles filter type 0"
        rows.append(line[1:])
    text = {}
    for kind, body in chunks:
        if kind == b"tEXt":
            keyword, _, value = body.partition(b"\0")
            text[keyword.decode("latin-1")] = value.decode("latin-1")
    return Png(width, height, rows, text)


def downsample(rows: list[bytes], factor: int) -> list[bytes]:
    return [
        b"".join(row[i : i + 3] for i in range(0, len(row), 3 * factor)) for row in rows[::factor]
    ]


# ----- serving ---------------------------------------------------------------------------------


async def serve(stack: contextlib.AsyncExitStack, app: web.Application) -> URL:
    # handler_cancellation lets a test abandon a deliberately slow request without the server
    # keeping its handler alive until shutdown.
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return URL.build(scheme="http", host=host, port=port)


@dataclass
class Harness:
    sandbox: SandboxAPI
    base: URL  # where the API answers, mount prefix included, with a trailing slash
    http: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.request(
            method,
            self.base.join(URL(path)),
            json=body,
            params=params,
            headers=AUTH if headers is None else headers,
        ) as response:
            return response.status, await response.json()

    async def generate(self, prompt: str = "a red fox", **extra: Any) -> str:
        body = {"taskType": "mj_txt2img", "prompt": prompt, "speed": "fast", **extra}
        status, envelope = await self.call("POST", GENERATE, body=body)
        assert (status, envelope["code"], envelope["msg"]) == (200, 200, "success"), envelope
        return envelope["data"]["taskId"]

    async def upscale(self, task_id: str, index: int, **extra: Any) -> str:
        body = {"taskId": task_id, "imageIndex": index, **extra}
        status, envelope = await self.call("POST", UPSCALE, body=body)
        assert (status, envelope["code"]) == (200, 200), envelope
        return envelope["data"]["taskId"]

    async def vary(self, task_id: str, index: int, **extra: Any) -> str:
        body = {"taskId": task_id, "imageIndex": index, **extra}
        status, envelope = await self.call("POST", VARY, body=body)
        assert (status, envelope["code"]) == (200, 200), envelope
        return envelope["data"]["taskId"]

    async def record(self, task_id: str) -> dict[str, Any]:
        status, envelope = await self.call("GET", RECORD_INFO, params={"taskId": task_id})
        assert (status, envelope["code"]) == (200, 200), envelope
        return envelope["data"]

    async def download(self, url: str) -> bytes:
        # Result files are fetched without credentials, as from the vendor's file hosts.
        async with self.http.get(url, headers={}) as response:
            assert response.status == 200
            assert response.content_type == "image/png"
            return await response.read()


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
def start(stack: contextlib.AsyncExitStack) -> Start:
    """Serve a fresh sandbox at ``mount`` ("" = the root; "/a/b" = nested sub-applications)."""

    async def start_sandbox(mount: str = "", **options: Any) -> Harness:
        options.setdefault("task_seconds", None)
        options.setdefault("image_size", IMAGE_SIZE)
        options.setdefault("api_key", KEY)
        sandbox = SandboxAPI(**options)
        stack.push_async_callback(sandbox.close)
        app = sandbox.app
        segments = [segment for segment in mount.split("/") if segment]
        for segment in reversed(segments):
            parent = web.Application()
            parent.add_subapp(f"/{segment}", app)
            app = parent
        root = await serve(stack, app)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        base = root.with_path("/".join(["", *segments, ""]))
        return Harness(sandbox, base, http)

    return start_sandbox


@dataclass
class Receiver:
    """A callback endpoint: answers the queued statuses first, then 200."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.json(), dict(request.headers)))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@dataclass
class Catcher:
    """A server that records every request whatever its method and path: where a callback must
    never go."""

    received: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(f"{request.method} {request.path_qs}")
        return web.Response()


async def start_catcher(stack: contextlib.AsyncExitStack) -> tuple[Catcher, URL]:
    catcher = Catcher()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", catcher.handle)
    return catcher, await serve(stack, app)


async def start_receiver(stack: contextlib.AsyncExitStack, *statuses: int) -> tuple[Receiver, str]:
    receiver = Receiver(list(statuses))
    app = web.Application()
    app.router.add_post("/callbacks/midjourney/{secret}", receiver.handle)
    root = await serve(stack, app)
    return receiver, str(root.with_path("/callbacks/midjourney/s3cret"))


# ----- the main flow ---------------------------------------------------------------------------


async def test_generate_then_complete_serves_four_distinct_pngs(start: Start) -> None:
    api = await start()
    body = {"taskType": "mj_txt2img", "prompt": "a red fox", "speed": "fast", "version": "7"}
    status, envelope = await api.call("POST", GENERATE, body=body)
    assert (status, envelope["code"], envelope["msg"]) == (200, 200, "success")
    task_id = envelope["data"]["taskId"]
    assert len(task_id) == 32 and int(task_id, 16) >= 0

    running = await api.record(task_id)
    assert running["taskId"] == task_id
    assert running["taskType"] == "mj_txt2img"
    assert running["successFlag"] == 0
    assert running["completeTime"] is None
    assert running["resultInfoJson"] is None
    assert isinstance(running["paramJson"], str) and json.loads(running["paramJson"]) == body
    assert (running["errorCode"], running["errorMessage"]) == (None, None)

    api.sandbox.complete(task_id)
    done = await api.record(task_id)
    assert done["successFlag"] == 1
    assert done["completeTime"] is not None
    urls = [entry["resultUrl"] for entry in done["resultInfoJson"]["resultUrls"]]
    assert urls == [f"{api.base}files/{task_id}_0_{index}.png" for index in range(4)]

    images = [await api.download(url) for url in urls]
    assert len(set(images)) == 4
    for index, data in enumerate(images):
        png = decode_png(data)
        assert (png.width, png.height) == (IMAGE_SIZE, IMAGE_SIZE)
        assert data == api.sandbox.image_bytes(task_id, index)
        assert png.text["Source"] == f"mj sandbox generation {task_id} image {index}"


async def test_upscale_serves_the_chosen_image_enlarged(start: Start) -> None:
    api = await start(upscale_factor=2)
    parent = await api.generate()
    api.sandbox.complete(parent)
    parent_urls = [
        e["resultUrl"] for e in (await api.record(parent))["resultInfoJson"]["resultUrls"]
    ]

    upscale_id = await api.upscale(parent, 2)
    assert upscale_id != parent and len(upscale_id) == 32
    assert (await api.record(upscale_id))["successFlag"] == 0
    api.sandbox.complete(upscale_id)
    record = await api.record(upscale_id)
    assert record["successFlag"] == 1
    assert json.loads(record["paramJson"]) == {"taskId": parent, "imageIndex": 2}
    urls = [entry["resultUrl"] for entry in record["resultInfoJson"]["resultUrls"]]
    assert urls == [f"{api.base}files/{upscale_id}_0_0.png"]

    data = await api.download(urls[0])
    assert data == api.sandbox.image_bytes(upscale_id, 0)
    upscaled = decode_png(data)
    assert (upscaled.width, upscaled.height) == (2 * IMAGE_SIZE, 2 * IMAGE_SIZE)
    assert upscaled.text["Source"] == f"mj sandbox upscale {upscale_id} of {parent} image 2"
    chosen = decode_png(await api.download(parent_urls[2]))
    other = decode_png(await api.download(parent_urls[0]))
    assert downsample(upscaled.rows, 2) == chosen.rows
    assert downsample(upscaled.rows, 2) != other.rows


async def test_times_alternate_between_iso_strings_and_epoch_millis(start: Start) -> None:
    api = await start()
    first, second = await api.generate(), await api.generate()
    api.sandbox.complete(first)
    api.sandbox.complete(second)
    iso, millis = await api.record(first), await api.record(second)
    for key in ("createTime", "completeTime"):
        assert isinstance(iso[key], str) and iso[key].endswith("Z")
        assert datetime.fromisoformat(iso[key]).tzinfo is not None
        assert isinstance(millis[key], int) and millis[key] > 1_600_000_000_000


async def test_tasks_finish_by_themselves_after_task_seconds(
    start: Start, stack: contextlib.AsyncExitStack
) -> None:
    api = await start(task_seconds=0.0)
    _, hook = await start_receiver(stack)
    task_id = await api.generate(callBackUrl=hook)
    await api.sandbox.wait_for_callback(task_id)
    assert (await api.record(task_id))["successFlag"] == 1


async def test_close_cancels_pending_timers(start: Start) -> None:
    api = await start(task_seconds=3600.0)
    task_id = await api.generate()
    async with asyncio.timeout(5):
        await api.sandbox.close()
    assert api.sandbox.task(task_id).timer is None
    assert (await api.record(task_id))["successFlag"] == 0


# ----- seeded tasks and test controls ---------------------------------------------------------


async def test_seeded_generation_can_be_upscaled(start: Start) -> None:
    api = await start()
    task_id = api.sandbox.add_generation(task_id="ab" * 16, prompt="made elsewhere")
    assert task_id == "ab" * 16
    record = await api.record(task_id)
    assert record["successFlag"] == 1 and len(record["resultInfoJson"]["resultUrls"]) == 4
    assert json.loads(record["paramJson"])["prompt"] == "made elsewhere"
    upscale_id = await api.upscale(task_id, 3)
    api.sandbox.complete(upscale_id)
    assert (await api.record(upscale_id))["successFlag"] == 1
    with pytest.raises(ValueError):
        api.sandbox.add_generation(task_id=task_id)


async def test_images_are_deterministic_per_task_and_index(start: Start) -> None:
    one, two = await start(), await start()
    task_id = one.sandbox.add_generation()
    two.sandbox.add_generation(task_id=task_id)
    assert [one.sandbox.image_bytes(task_id, i) for i in range(4)] == [
        two.sandbox.image_bytes(task_id, i) for i in range(4)
    ]
    with pytest.raises(IndexError):
        one.sandbox.image_bytes(task_id, 4)


async def test_fail_marker_in_prompt_fails_the_generation(start: Start) -> None:
    api = await start()
    task_id = await api.generate("a fox --fail")
    api.sandbox.complete(task_id)
    record = await api.record(task_id)
    assert record["successFlag"] == 2
    assert record["errorCode"] == 501 and record["errorMessage"]
    assert record["resultInfoJson"] is None
    async with api.http.get(api.base.join(URL(f"files/{task_id}_0_0.png"))) as response:
        assert response.status == 404
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": task_id, "imageIndex": 0})
    assert (status, envelope["code"]) == (422, 422)
    with pytest.raises(ValueError):
        api.sandbox.complete(task_id)


async def test_fail_sets_the_flag_and_message(start: Start) -> None:
    api = await start()
    first, second = await api.generate(), await api.generate()
    api.sandbox.fail(first, "banned prompt")
    api.sandbox.fail(second, "could not start", success_flag=3, error_code=500)
    assert (await api.record(first))["successFlag"] == 2
    assert (await api.record(first))["errorMessage"] == "banned prompt"
    record = await api.record(second)
    assert (record["successFlag"], record["errorCode"]) == (3, 500)


async def test_calls_are_recorded_and_awaitable(start: Start) -> None:
    api = await start()
    task_id = await api.generate()
    await api.record(task_id)
    await api.record(task_id)
    assert [call.endpoint for call in api.sandbox.calls] == [
        "generate",
        "record-info",
        "record-info",
    ]
    assert api.sandbox.calls[0].body["prompt"] == "a red fox"
    assert api.sandbox.calls[1].body == {"taskId": task_id}
    assert api.sandbox.count("record-info") == 2
    assert len(await api.sandbox.wait_for_call("record-info", n=2)) == 2
    with pytest.raises(TimeoutError):
        await api.sandbox.wait_for_call("generateUpscale", timeout=0.01)


async def test_answer_delay_holds_the_answer_back(start: Start) -> None:
    api = await start(answer_delay=0.2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await api.generate()
    assert loop.time() - began >= 0.2

    api.sandbox.answer_delay = 3600.0
    pending = asyncio.create_task(api.generate())
    await api.sandbox.wait_for_call("generate", n=2)
    assert not pending.done()
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending


async def test_hold_keeps_the_answer_back_after_the_task_is_taken(start: Start) -> None:
    api = await start()
    parent = api.sandbox.add_generation()
    credits = api.sandbox.credits
    answer = api.sandbox.hold("generateUpscale")
    pending = asyncio.create_task(api.upscale(parent, 1))
    await api.sandbox.wait_held(answer)
    # Taken and charged, though the client has not heard of it yet.
    (held,) = [t for t in api.sandbox.tasks() if t.parent_task_id == parent]
    assert api.sandbox.credits == credits - api.sandbox.upscale_cost
    assert not pending.done() and not answer.released
    # Other endpoints, and errors of the held one, answer at once.
    await api.record(parent)
    status, _ = await api.call("POST", UPSCALE, body={"taskId": "nope", "imageIndex": 0})
    assert status == 404 and answer.held == 1

    answer.release()
    assert await pending == held.task_id
    # Only the next ``times`` answers were held.
    await api.upscale(parent, 2)
    assert answer.held == 1


async def test_hold_on_files_holds_the_download(start: Start) -> None:
    api = await start()
    task_id = api.sandbox.add_generation()
    url = f"{api.base}files/{task_id}_0_0.png"
    download = api.sandbox.hold("files", times=2)
    first = asyncio.create_task(api.download(url))
    second = asyncio.create_task(api.download(url))
    await api.sandbox.wait_held(download, n=2)
    assert not first.done() and not second.done()
    download.release()
    assert await first == await second == api.sandbox.image_bytes(task_id, 0)
    with pytest.raises(ValueError, match="unknown endpoint"):
        api.sandbox.hold("nope")  # type: ignore[arg-type]


async def test_close_releases_held_answers(start: Start) -> None:
    api = await start()
    task_id = api.sandbox.add_generation()
    download = api.sandbox.hold("files")
    pending = asyncio.create_task(api.download(f"{api.base}files/{task_id}_0_3.png"))
    await api.sandbox.wait_held(download)
    await api.sandbox.close()
    assert download.released
    async with asyncio.timeout(5):
        assert await pending == api.sandbox.image_bytes(task_id, 3)


# ----- validation and errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"imageIndex": True},
        {"imageIndex": "1"},
        {"imageIndex": 1.0},
        {"imageIndex": 4},
        {"imageIndex": -1},
        {"imageIndex": None},
        {"taskId": None},
        {"taskId": 12},
        {"waterMark": 1},
        {"callBackUrl": "ftp://example.com/hook"},
    ],
)
async def test_upscale_rejects_bad_parameters_with_422(
    start: Start, change: dict[str, Any]
) -> None:
    api = await start()
    body = {"taskId": api.sandbox.add_generation(), "imageIndex": 1, **change}
    body = {key: value for key, value in body.items() if value is not None}
    status, envelope = await api.call("POST", UPSCALE, body=body)
    assert (status, envelope["code"], envelope["data"]) == (422, 422, None)
    assert envelope["msg"]
    assert api.sandbox.count("generateUpscale") == 1


async def test_upscale_of_unknown_or_unfinished_task(start: Start) -> None:
    api = await start()
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": "0" * 32, "imageIndex": 0})
    assert (status, envelope["code"]) == (404, 404)
    running = await api.generate()
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": running, "imageIndex": 0})
    assert (status, envelope["code"]) == (422, 422)
    assert "generating" in envelope["msg"]
    api.sandbox.complete(running)
    upscale_id = await api.upscale(running, 0)
    api.sandbox.complete(upscale_id)
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": upscale_id, "imageIndex": 0})
    assert (status, envelope["code"]) == (422, 422)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "x" * 2001},
        {"prompt": ""},
        {"prompt": None},
        {"taskType": "mj_draw"},
        {"taskType": ["mj_txt2img"]},
        {"speed": "slow"},
        {"aspectRatio": "5:4"},
        {"version": 7},
        {"version": "8"},
        {"variety": 101},
        {"stylization": True},
        {"callBackUrl": "ftp://example.com/hook"},
        {"callBackUrl": "not a url"},
    ],
)
async def test_generate_rejects_bad_parameters_with_422(
    start: Start, change: dict[str, Any]
) -> None:
    api = await start()
    body = {"taskType": "mj_txt2img", "prompt": "a fox", "speed": "fast", **change}
    body = {key: value for key, value in body.items() if value is not None}
    status, envelope = await api.call("POST", GENERATE, body=body)
    assert (status, envelope["code"]) == (422, 422)
    assert api.sandbox.credits == 1000


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"stylization": 1001}, "stylization must be an integer from 0 to 1000"),
        ({"variety": -1}, "variety must be an integer from 0 to 100"),
        ({"weirdness": 3001}, "weirdness must be an integer from 0 to 3000"),
        ({"aspectRatio": "3:7"}, "aspectRatio must be one of"),
        ({"version": "5"}, "version must be one of"),
        ({"enableTranslation": "yes"}, "enableTranslation must be a boolean"),
    ],
)
async def test_a_bad_typed_parameter_field_is_a_422_naming_it(
    start: Start, change: dict[str, Any], named: str
) -> None:
    api = await start()
    body = {"taskType": "mj_txt2img", "prompt": "a fox", "speed": "fast", **change}
    status, envelope = await api.call("POST", GENERATE, body=body)
    assert (status, envelope["code"]) == (422, 422) and named in envelope["msg"]
    assert api.sandbox.credits == 1000


async def test_generate_accepts_the_longest_prompt_and_optional_fields(start: Start) -> None:
    api = await start()
    await api.generate("x" * 2000, aspectRatio="16:9", version="niji6", variety=100, waterMark="w")


async def test_body_that_is_not_a_json_object_is_400(start: Start) -> None:
    api = await start()
    async with api.http.post(api.base.join(URL(GENERATE)), data="{oops", headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["code"] == 400
    status, envelope = await api.call("POST", GENERATE, body=["a list"])
    assert (status, envelope["code"]) == (400, 400)


async def test_unknown_task_in_record_info_is_404(start: Start) -> None:
    api = await start()
    status, envelope = await api.call("GET", RECORD_INFO, params={"taskId": "f" * 32})
    assert (status, envelope["code"], envelope["data"]) == (404, 404, None)
    status, envelope = await api.call("GET", RECORD_INFO)
    assert (status, envelope["code"]) == (422, 422)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        # compare_digest raises on a str that is not ASCII: this used to be a 500.
        {"Authorization": "Bearer cl\u00e9"},
    ],
)
async def test_missing_or_wrong_key_is_401(start: Start, headers: dict[str, str]) -> None:
    api = await start()
    status, envelope = await api.call("GET", CREDIT, headers=headers)
    assert (status, envelope["code"]) == (401, 401)
    status, envelope = await api.call("POST", GENERATE, body={}, headers=headers)
    assert (status, envelope["code"]) == (401, 401)


async def test_without_api_key_any_bearer_is_accepted(start: Start) -> None:
    api = await start(api_key=None)
    status, _ = await api.call("GET", CREDIT, headers={"Authorization": "Bearer anything"})
    assert status == 200
    status, _ = await api.call("GET", CREDIT, headers={"Authorization": "Bearer  "})
    assert status == 401


async def test_a_request_without_the_key_is_not_kept_and_logged_at_debug_only(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    api = await start()
    caplog.set_level(logging.DEBUG, logger="bot.midjourney.sandbox")
    body = {"taskType": "mj_txt2img", "prompt": "a fox", "speed": "fast"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, envelope = await api.call("POST", GENERATE, body=body, headers=headers)
        assert (status, envelope["code"], envelope["data"]) == (401, 401, None)
    assert (api.sandbox.calls, api.sandbox.tasks(), api.sandbox.credits) == ([], [], 1000)
    lines = [r for r in caplog.records if r.name == "bot.midjourney.sandbox"]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)


async def test_guessed_file_names_are_not_kept_and_logged_at_debug_only(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    # /sandbox/files/ is public on the bot's listener, as the vendor's file hosts are.
    api = await start()
    caplog.set_level(logging.DEBUG, logger="bot.midjourney.sandbox")
    for n in range(20):
        async with api.http.get(api.base.join(URL(f"files/guess{n}_0_0.png"))) as response:
            assert response.status == 404
    assert api.sandbox.calls == []
    lines = [r for r in caplog.records if r.name == "bot.midjourney.sandbox"]
    assert lines and all(r.levelno == logging.DEBUG for r in lines)


@pytest.mark.parametrize("as_http_status", [True, False])
@pytest.mark.parametrize("code", [402, 429])
async def test_fail_next_answers_the_error_once(
    start: Start, as_http_status: bool, code: int
) -> None:
    api = await start(errors_as_http_status=as_http_status)
    api.sandbox.fail_next("generate", code, "injected")
    status, envelope = await api.call(
        "POST", GENERATE, body={"taskType": "mj_txt2img", "prompt": "a fox"}
    )
    assert status == (code if as_http_status else 200)
    assert (envelope["code"], envelope["msg"], envelope["data"]) == (code, "injected", None)
    await api.generate()


async def test_errors_in_body_only_mode_still_carry_the_code(start: Start) -> None:
    api = await start(errors_as_http_status=False)
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": "x", "imageIndex": True})
    assert (status, envelope["code"]) == (200, 422)
    status, envelope = await api.call("GET", CREDIT, headers={})
    assert (status, envelope["code"]) == (200, 401)


async def test_fail_next_statuses_and_endpoints(start: Start) -> None:
    api = await start()
    api.sandbox.fail_next("credit", 455)
    api.sandbox.fail_next("credit", 500, http_status=502)
    api.sandbox.fail_next("files", 500)
    status, envelope = await api.call("GET", CREDIT)
    assert (status, envelope["code"], envelope["msg"]) == (455, 455, "service unavailable")
    status, envelope = await api.call("GET", CREDIT)
    assert (status, envelope["code"]) == (502, 500)
    assert (await api.call("GET", CREDIT))[0] == 200
    task_id = api.sandbox.add_generation()
    async with api.http.get(api.base.join(URL(f"files/{task_id}_0_0.png"))) as response:
        assert response.status == 500
    await api.download(str(api.base.join(URL(f"files/{task_id}_0_0.png"))))
    with pytest.raises(ValueError):
        api.sandbox.fail_next("nope", 500)  # type: ignore[arg-type]


async def test_credits_are_spent_and_402_when_exhausted(start: Start) -> None:
    api = await start(credits=20, generation_cost=8, upscale_cost=2)
    assert await api.call("GET", CREDIT) == (200, {"code": 200, "msg": "success", "data": 20})
    task_id = await api.generate()
    api.sandbox.complete(task_id)
    await api.upscale(task_id, 0)
    assert (await api.call("GET", CREDIT))[1]["data"] == 10
    api.sandbox.credits = 1
    status, envelope = await api.call(
        "POST", GENERATE, body={"taskType": "mj_txt2img", "prompt": "a fox"}
    )
    assert (status, envelope["code"]) == (402, 402)
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": task_id, "imageIndex": 1})
    assert (status, envelope["code"]) == (402, 402)
    assert api.sandbox.credits == 1


async def test_download_url_returns_the_same_url(start: Start) -> None:
    api = await start()
    url = "https://tempfile.aiquickdraw.com/v/x_0_0.png"
    assert await api.call("POST", DOWNLOAD_URL, body={"url": url}) == (
        200,
        {"code": 200, "msg": "success", "data": url},
    )
    assert (await api.call("POST", DOWNLOAD_URL, body={}))[0] == 422


async def test_unknown_files_are_404(start: Start) -> None:
    api = await start()
    running = await api.generate()
    seeded = api.sandbox.add_generation()
    for name in (f"{running}_0_0.png", f"{seeded}_0_4.png", f"{seeded}_0_0.jpeg", "x.png"):
        async with api.http.get(api.base.join(URL(f"files/{name}"))) as response:
            assert response.status == 404, name


# ----- variations ------------------------------------------------------------------------------


def result_urls(record: dict[str, Any]) -> list[str]:
    return [entry["resultUrl"] for entry in record["resultInfoJson"]["resultUrls"]]


async def test_vary_serves_a_new_grid_of_four(start: Start) -> None:
    api = await start(vary_cost=5)
    parent = await api.generate("a red fox", aspectRatio="16:9", version="7")
    api.sandbox.complete(parent)
    parent_images = [await api.download(url) for url in result_urls(await api.record(parent))]
    credits = api.sandbox.credits

    vary_id = await api.vary(parent, 2)
    assert api.sandbox.credits == credits - 5
    task = api.sandbox.task(vary_id)
    assert (task.task_type, task.parent_task_id, task.image_index) == ("mj_vary", parent, 2)
    assert (await api.record(vary_id))["successFlag"] == 0
    api.sandbox.complete(vary_id)
    record = await api.record(vary_id)
    assert record["successFlag"] == 1
    assert json.loads(record["paramJson"]) == {
        "taskId": parent,
        "imageIndex": 2,
        "prompt": "a red fox",
        "speed": "fast",
        "aspectRatio": "16:9",
        "version": "7",
    }
    urls = result_urls(record)
    assert urls == [f"{api.base}files/{vary_id}_0_{index}.png" for index in range(4)]
    images = [await api.download(url) for url in urls]
    assert len(set(images)) == 4 and not set(images) & set(parent_images)
    for index, data in enumerate(images):
        assert data == api.sandbox.image_bytes(vary_id, index)
        png = decode_png(data)
        assert (png.width, png.height) == (IMAGE_SIZE, IMAGE_SIZE)
        assert png.text["Source"] == f"mj sandbox variation {vary_id} of {parent} image 2"
    with pytest.raises(IndexError):
        api.sandbox.image_bytes(vary_id, 4)
    # The body as received is kept as it came, without the parent's parameters.
    [call] = [call for call in api.sandbox.calls if call.endpoint == "generateVary"]
    assert call.body == {"taskId": parent, "imageIndex": 2}


@pytest.mark.parametrize("base", [0, 1])
async def test_vary_index_range_follows_the_base(start: Start, base: int) -> None:
    api = await start(vary_index_base=base, vary_cost=3)
    parent = api.sandbox.add_generation()
    for index in range(base, base + 4):
        vary_id = await api.vary(parent, index)
        assert api.sandbox.task(vary_id).image_index == index - base
    assert api.sandbox.credits == 1000 - 4 * 3
    for index in (base - 1, base + 4):
        status, envelope = await api.call(
            "POST", VARY, body={"taskId": parent, "imageIndex": index}
        )
        assert (status, envelope["code"], envelope["data"]) == (422, 422, None)
        assert envelope["msg"] == f"imageIndex must be an integer from {base} to {base + 3}"
    assert api.sandbox.credits == 1000 - 4 * 3
    assert len(api.sandbox.tasks()) == 5


@pytest.mark.parametrize("base", [-1, 2, True])
def test_vary_index_base_is_0_or_1(base: int) -> None:
    with pytest.raises(ValueError, match="vary_index_base"):
        SandboxAPI(vary_index_base=base)


@pytest.mark.parametrize(
    "change",
    [
        {"imageIndex": True},
        {"imageIndex": "1"},
        {"imageIndex": 1.0},
        {"imageIndex": None},
        {"taskId": None},
        {"taskId": ""},
        {"taskId": 12},
        {"waterMark": 1},
        {"callBackUrl": "ftp://example.com/hook"},
    ],
)
async def test_vary_rejects_bad_parameters_with_422(start: Start, change: dict[str, Any]) -> None:
    api = await start()
    body = {"taskId": api.sandbox.add_generation(), "imageIndex": 1, **change}
    body = {key: value for key, value in body.items() if value is not None}
    status, envelope = await api.call("POST", VARY, body=body)
    assert (status, envelope["code"], envelope["data"]) == (422, 422, None)
    assert envelope["msg"]
    assert api.sandbox.credits == 1000
    assert len(api.sandbox.tasks()) == 1


async def test_vary_of_an_unknown_unfinished_or_upscaled_task(start: Start) -> None:
    api = await start()
    status, envelope = await api.call("POST", VARY, body={"taskId": "0" * 32, "imageIndex": 0})
    assert (status, envelope["code"]) == (404, 404)
    running = await api.generate()
    status, envelope = await api.call("POST", VARY, body={"taskId": running, "imageIndex": 0})
    assert (status, envelope["code"]) == (422, 422)
    assert "generating" in envelope["msg"]
    failed = await api.generate("a fox --fail")
    api.sandbox.complete(failed)
    status, envelope = await api.call("POST", VARY, body={"taskId": failed, "imageIndex": 0})
    assert (status, envelope["code"]) == (422, 422)
    assert "did not succeed" in envelope["msg"]
    api.sandbox.complete(running)
    upscale_id = await api.upscale(running, 0)
    api.sandbox.complete(upscale_id)
    credits = api.sandbox.credits
    status, envelope = await api.call("POST", VARY, body={"taskId": upscale_id, "imageIndex": 0})
    assert (status, envelope["code"]) == (422, 422)
    assert envelope["msg"] == f"task {upscale_id} is not a generation task"
    assert api.sandbox.credits == credits


async def test_a_variation_grid_can_be_upscaled_and_varied_again(start: Start) -> None:
    api = await start(upscale_factor=2)
    parent = api.sandbox.add_generation(prompt="made elsewhere", version="6.1")
    vary_id = await api.vary(parent, 0)
    status, envelope = await api.call("POST", UPSCALE, body={"taskId": vary_id, "imageIndex": 1})
    assert (status, envelope["code"]) == (422, 422)
    assert "generating" in envelope["msg"]
    api.sandbox.complete(vary_id)

    upscale_id = await api.upscale(vary_id, 3)
    api.sandbox.complete(upscale_id)
    [url] = result_urls(await api.record(upscale_id))
    upscaled = decode_png(await api.download(url))
    assert upscaled.text["Source"] == f"mj sandbox upscale {upscale_id} of {vary_id} image 3"
    varied = decode_png(api.sandbox.image_bytes(vary_id, 3))
    assert downsample(upscaled.rows, 2) == varied.rows
    assert downsample(upscaled.rows, 2) != decode_png(api.sandbox.image_bytes(parent, 3)).rows

    again = await api.vary(vary_id, 1)
    api.sandbox.complete(again)
    record = await api.record(again)
    assert len(result_urls(record)) == 4
    params = json.loads(record["paramJson"])
    assert (params["prompt"], params["version"], params["speed"]) == (
        "made elsewhere",
        "6.1",
        "fast",
    )
    assert "aspectRatio" not in params


async def test_vary_answers_faults_and_holds_like_upscale(start: Start) -> None:
    api = await start()
    parent = api.sandbox.add_generation()
    status, envelope = await api.call(
        "POST", VARY, body={"taskId": parent, "imageIndex": 0}, headers={}
    )
    assert (status, envelope["code"]) == (401, 401)
    api.sandbox.fail_next("generateVary", 429, "slow down")
    status, envelope = await api.call("POST", VARY, body={"taskId": parent, "imageIndex": 0})
    assert (status, envelope["code"], envelope["msg"]) == (429, 429, "slow down")
    assert api.sandbox.credits == 1000

    answer = api.sandbox.hold("generateVary")
    pending = asyncio.create_task(api.vary(parent, 3))
    await api.sandbox.wait_held(answer)
    (held,) = [t for t in api.sandbox.tasks() if t.parent_task_id == parent]
    assert api.sandbox.credits == 1000 - api.sandbox.vary_cost
    assert not pending.done()
    answer.release()
    assert await pending == held.task_id
    # The request without a key was refused before it was recorded.
    assert api.sandbox.count("generateVary") == 2


async def test_vary_credits_402_when_exhausted(start: Start) -> None:
    api = await start(credits=10, vary_cost=8)
    parent = api.sandbox.add_generation()
    await api.vary(parent, 0)
    assert api.sandbox.credits == 2
    status, envelope = await api.call("POST", VARY, body={"taskId": parent, "imageIndex": 1})
    assert (status, envelope["code"]) == (402, 402)
    assert api.sandbox.credits == 2 and len(api.sandbox.tasks()) == 2


# ----- callbacks -------------------------------------------------------------------------------


async def test_success_callbacks_carry_the_result_urls(
    start: Start, stack: contextlib.AsyncExitStack
) -> None:
    api = await start()
    receiver, hook = await start_receiver(stack)
    task_id = await api.generate(callBackUrl=hook)
    api.sandbox.complete(task_id)
    [attempt] = await api.sandbox.wait_for_callback(task_id)
    assert (attempt.url, attempt.attempt, attempt.status, attempt.error) == (hook, 1, 200, None)
    [(payload, headers)] = receiver.received
    assert payload == attempt.payload
    assert (payload["code"], payload["msg"]) == (200, "success")
    assert payload["data"]["taskId"] == task_id
    assert json.loads(payload["data"]["promptJson"])["prompt"] == "a red fox"
    record = await api.record(task_id)
    assert payload["data"]["resultUrls"] == [
        entry["resultUrl"] for entry in record["resultInfoJson"]["resultUrls"]
    ]
    assert "X-Webhook-Signature" not in headers

    upscale_id = await api.upscale(task_id, 1, callBackUrl=hook)
    api.sandbox.complete(upscale_id)
    [attempt] = await api.sandbox.wait_for_callback(upscale_id)
    assert attempt.payload["data"]["resultUrls"] == [f"{api.base}files/{upscale_id}_0_0.png"]
    await api.download(attempt.payload["data"]["resultUrls"][0])

    vary_id = await api.vary(task_id, 3, callBackUrl=hook)
    api.sandbox.complete(vary_id)
    [attempt] = await api.sandbox.wait_for_callback(vary_id)
    assert attempt.status == 200 and receiver.received[-1][0] == attempt.payload
    assert attempt.payload["data"]["resultUrls"] == [
        f"{api.base}files/{vary_id}_0_{index}.png" for index in range(4)
    ]
    assert json.loads(attempt.payload["data"]["promptJson"])["prompt"] == "a red fox"


async def test_failure_callback_shape(start: Start, stack: contextlib.AsyncExitStack) -> None:
    api = await start()
    receiver, hook = await start_receiver(stack)
    task_id = await api.generate(callBackUrl=hook)
    api.sandbox.fail(task_id, "banned prompt")
    await api.sandbox.wait_for_callback(task_id)
    assert receiver.received[0][0] == {
        "code": 500,
        "msg": "Image generation failed",
        "data": {"taskId": task_id, "resultUrls": []},
    }


async def test_callback_is_retried_until_answered_200(
    start: Start, stack: contextlib.AsyncExitStack
) -> None:
    api = await start(callback_retry_delays=(0.01, 0.01, 0.01))
    receiver, hook = await start_receiver(stack, 500)
    task_id = await api.generate(callBackUrl=hook)
    api.sandbox.complete(task_id)
    attempts = await api.sandbox.wait_for_callback(task_id, n=2)
    assert [(a.attempt, a.status) for a in attempts] == [(1, 500), (2, 200)]
    assert receiver.received[0][0] == receiver.received[1][0]

    api.sandbox.resend_callback(task_id)
    attempts = await api.sandbox.wait_for_callback(task_id, n=3)
    assert (attempts[2].attempt, attempts[2].status) == (1, 200)
    assert len(receiver.received) == 3


async def test_unreachable_callback_gives_up_after_the_retries(start: Start) -> None:
    api = await start(callback_retry_delays=(0.0, 0.01))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task_id = await api.generate(callBackUrl=f"http://127.0.0.1:{port}/hook")
    api.sandbox.fail(task_id)
    attempts = await api.sandbox.wait_for_callback(task_id, n=3)
    assert [(a.attempt, a.status) for a in attempts] == [(1, None), (2, None), (3, None)]
    assert all(a.error for a in attempts)


async def test_callbacks_are_signed_when_a_hmac_key_is_set(
    start: Start, stack: contextlib.AsyncExitStack
) -> None:
    api = await start(webhook_hmac_key="hmac-key")
    receiver, hook = await start_receiver(stack)
    task_id = await api.generate(callBackUrl=hook)
    api.sandbox.complete(task_id)
    await api.sandbox.wait_for_callback(task_id)
    headers = receiver.received[0][1]
    timestamp = headers["X-Webhook-Timestamp"]
    assert timestamp.isdigit()
    assert headers["X-Webhook-Signature"] == webhook_signature("hmac-key", task_id, timestamp)


# Where a callback must not go when the sandbox is told its callback base ({own} is the base's
# origin, {foreign} another server's): each would otherwise be POSTed to.
ELSEWHERE = {
    "another port": "{foreign}/callbacks/midjourney/s3cret",
    "another path": "{own}/elsewhere",
    "a sibling of the route": "{own}/callbacks/midjourney-x/s3cret",
    "dot segments out of the route": "{own}/callbacks/midjourney/../../elsewhere",
    "another name for the host": "http://localhost:{own_port}/callbacks/midjourney/s3cret",
    "user info before another port": (
        "http://127.0.0.1:{own_port}@127.0.0.1:{foreign_port}/callbacks/midjourney/s3cret"
    ),
    "https instead of http": "https://127.0.0.1:{own_port}/callbacks/midjourney/s3cret",
}


@pytest.mark.parametrize("where", ELSEWHERE.values(), ids=ELSEWHERE.keys())
async def test_callback_bases_refuse_a_callback_url_elsewhere_and_post_nothing(
    start: Start, stack: contextlib.AsyncExitStack, where: str
) -> None:
    own, own_root = await start_catcher(stack)
    foreign, foreign_root = await start_catcher(stack)
    base = f"{own_root}/callbacks/midjourney/"
    api = await start(callback_bases=[base], callback_retry_delays=())
    url = where.format(
        own=own_root, own_port=own_root.port, foreign=foreign_root, foreign_port=foreign_root.port
    )
    parent = api.sandbox.add_generation()
    for path, body in (
        (GENERATE, {"taskType": "mj_txt2img", "prompt": "a fox", "speed": "fast"}),
        (UPSCALE, {"taskId": parent, "imageIndex": 0}),
        (VARY, {"taskId": parent, "imageIndex": 0}),
    ):
        status, envelope = await api.call("POST", path, body={**body, "callBackUrl": url})
        assert (status, envelope["code"], envelope["msg"]) == (
            422,
            422,
            "callBackUrl must point at this bot's listener",
        )
    assert [t.task_id for t in api.sandbox.tasks()] == [parent]
    assert api.sandbox.credits == 1000

    # The base itself is called back; by then anything sent elsewhere would have arrived too.
    task_id = await api.generate(callBackUrl=f"{base}s3cret")
    api.sandbox.complete(task_id)
    [attempt] = await api.sandbox.wait_for_callback(task_id)
    assert attempt.status == 200
    assert own.received == ["POST /callbacks/midjourney/s3cret"]
    assert foreign.received == [] and len(api.sandbox.callback_attempts) == 1


async def test_empty_callback_bases_refuse_every_callback_url(
    start: Start, stack: contextlib.AsyncExitStack
) -> None:
    api = await start(callback_bases=())
    _, hook = await start_receiver(stack)
    status, envelope = await api.call(
        "POST", GENERATE, body={"taskType": "mj_txt2img", "prompt": "a fox", "callBackUrl": hook}
    )
    assert (status, envelope["code"]) == (422, 422) and api.sandbox.tasks() == []
    # Without a callBackUrl the task is made as ever, for polling.
    await api.generate()


# ----- mounting --------------------------------------------------------------------------------


@pytest.mark.parametrize("mount", ["", "/sandbox", "/outer/sandbox"])
async def test_result_urls_carry_the_mount_prefix(
    start: Start, stack: contextlib.AsyncExitStack, mount: str
) -> None:
    api = await start(mount)
    assert api.base.path == f"{mount}/"
    _, hook = await start_receiver(stack)
    task_id = await api.generate(callBackUrl=hook)
    api.sandbox.complete(task_id)
    record = await api.record(task_id)
    urls = [entry["resultUrl"] for entry in record["resultInfoJson"]["resultUrls"]]
    [attempt] = await api.sandbox.wait_for_callback(task_id)
    assert attempt.payload["data"]["resultUrls"] == urls
    for index, url in enumerate(urls):
        assert URL(url).path == f"{mount}/files/{task_id}_0_{index}.png"
        assert URL(url).origin() == api.base.origin()
        assert await api.download(url) == api.sandbox.image_bytes(task_id, index)
