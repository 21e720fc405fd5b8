"""The parts of /imagine's images on their own: the sandbox's rules for fileUrls and ``ow``, the
store of kept images (served while they live, swept once expired, gone or expired links told
before paying), the attachment checks, and the redaction of a token in a URL."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from bot.delivery.attachments import Attachment, AttachmentChecker, AttachmentRefused
from bot.delivery.fetch import ImageFetcher
from bot.jobs.image_inputs import ImageInputs, InputsGone, attachment_expiry
from bot.jobs.store import JobStore
from bot.midjourney.sandbox import FetchedInput
from bot.redaction import RedactingFilter
from tests.conftest import SANDBOX_KEY, RunningSandbox, Serve, StartSandbox

RED = (200, 30, 40)


def png(colour: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


async def generate(sandbox: RunningSandbox, **body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.base_url}/api/v1/mj/generate",
            json={"prompt": "a cat", "speed": "fast", **body},
            headers={"Authorization": f"Bearer {SANDBOX_KEY}"},
        ) as response,
    ):
        return response.status, await response.json()


@pytest.fixture
async def image_server(serve: Serve) -> str:
    app = web.Application()

    async def red(request: web.Request) -> web.Response:
        return web.Response(body=png(), content_type="image/png")

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="no image here")

    app.router.add_get("/red.png", red)
    app.router.add_get("/text", text)
    return await serve(app)


@pytest.mark.parametrize("task_type", ["mj_img2img", "mj_style_reference", "mj_omni_reference"])
async def test_the_sandbox_fetches_the_images_of_an_image_task_and_tints_its_grid(
    start_sandbox: StartSandbox, image_server: str, task_type: str
) -> None:
    sandbox = await start_sandbox()
    url = f"{image_server}/red.png"
    status, answer = await generate(sandbox, taskType=task_type, fileUrls=[url])
    assert (status, answer["code"]) == (200, 200), answer
    data = png()
    assert list(sandbox.api.fetched) == [
        FetchedInput(url, hashlib.sha256(data).hexdigest(), len(data))
    ]
    task_id = answer["data"]["taskId"]
    sandbox.api.complete(task_id)
    with Image.open(io.BytesIO(sandbox.api.image_bytes(task_id, 1))) as grid:
        assert grid.convert("RGB").getpixel((0, 0)) == RED


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"taskType": "mj_img2img"}, "fileUrls"),
        ({"taskType": "mj_style_reference", "fileUrls": []}, "fileUrls"),
        ({"taskType": "mj_img2img", "fileUrls": ["{server}/missing.png"]}, "fileUrls"),
        ({"taskType": "mj_img2img", "fileUrls": ["{server}/text"]}, "fileUrls"),
        ({"taskType": "mj_img2img", "fileUrls": ["http://127.0.0.1:9/x.png"]}, "fileUrls"),
        ({"taskType": "mj_img2img", "fileUrls": ["{server}/red.png"], "ow": 100}, "ow"),
        ({"taskType": "mj_txt2img", "ow": 100}, "ow"),
        ({"taskType": "mj_omni_reference", "fileUrls": ["{server}/red.png"], "ow": 0}, "ow"),
        ({"taskType": "mj_omni_reference", "fileUrls": ["{server}/red.png"], "ow": 1001}, "ow"),
    ],
    ids=[
        "no fileUrls",
        "empty fileUrls",
        "404",
        "not an image",
        "unreachable",
        "ow with img2img",
        "ow with txt2img",
        "ow 0",
        "ow 1001",
    ],
)
async def test_the_sandbox_refuses_what_the_vendor_would_and_charges_nothing(
    start_sandbox: StartSandbox, image_server: str, body: dict[str, Any], named: str
) -> None:
    sandbox = await start_sandbox()
    credits = sandbox.api.credits
    if "fileUrls" in body:
        body = {**body, "fileUrls": [u.format(server=image_server) for u in body["fileUrls"]]}
    status, answer = await generate(sandbox, **body)
    assert (status, answer["code"]) == (422, 422)
    assert named in answer["msg"] and "127.0.0.1" not in answer["msg"]
    assert sandbox.api.credits == credits and sandbox.api.tasks() == []


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    store = await JobStore.open(f"sqlite:///{tmp_path}/inputs.sqlite3")
    yield store
    await store.close()


async def test_kept_images_are_served_until_they_expire_then_swept(store: JobStore) -> None:
    now = [1000.0]
    inputs = ImageInputs(store.engine, 7, clock=lambda: now[0])
    ref = await inputs.keep(guild_id=1, requester_id=2, content_type="image/png", data=png())
    token, _, ext = ref.partition(".")
    assert ext == "png" and len(token) == 43
    kept = await inputs.read(ref)
    assert kept is not None and (kept.content_type, kept.data) == ("image/png", png())
    assert await inputs.read(f"{token}.jpg") is None
    options = {"images": ref}
    assert await inputs.urls(options, "https://bot.example") == (
        f"https://bot.example/inputs/{ref}",
    )
    # Without a public address the API could not fetch it: said before paying.
    with pytest.raises(InputsGone, match="no public address"):
        await inputs.urls(options, None)
    now[0] += 7 * 86400
    assert await inputs.read(ref) is None
    assert await inputs.problem(options) == (
        "the images it was made from are no longer kept by the bot"
    )
    with pytest.raises(InputsGone):
        await inputs.urls(options, "https://bot.example")
    assert await inputs.sweep() == 1
    assert await inputs.sweep() == 0


async def test_forgotten_images_go_at_once(store: JobStore) -> None:
    inputs = ImageInputs(store.engine, 7)
    ref = await inputs.keep(guild_id=1, requester_id=2, content_type="image/png", data=png())
    await inputs.forget((ref, "https://cdn.discordapp.com/x.png?ex=1"))
    assert await inputs.read(ref) is None


async def test_a_discord_link_is_sent_as_it_is_until_its_expiry(store: JobStore) -> None:
    inputs = ImageInputs(store.engine, 7)
    later = f"{int(time.time()) + 3600:x}"
    link = f"https://cdn.discordapp.com/attachments/1/2/a.png?ex={later}&is=0&hm=ab"
    assert attachment_expiry(link) == int(later, 16)
    assert await inputs.urls({"images": link}, None) == (link,)
    expired = link.replace(f"ex={later}", "ex=1")
    with pytest.raises(InputsGone, match="expired"):
        await inputs.urls({"images": expired}, None)
    assert attachment_expiry("https://cdn.discordapp.com/a.png") is None


@pytest.fixture
async def attachments(serve: Serve) -> AsyncIterator[tuple[AttachmentChecker, str]]:
    app = web.Application()
    bodies = {
        "red.png": png(),
        "notes.png": b"plain words",
        "huge.png": png(size=(7000, 7000)),
        "cut.png": png()[:50],
    }

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["name"]])

    app.router.add_get("/{name}", handler)
    base = await serve(app)
    checker = AttachmentChecker(ImageFetcher(("127.0.0.1",), max_bytes=1024 * 1024), 1)
    yield checker, base
    await checker.close()


async def test_the_checker_takes_a_good_image_and_names_each_refusal(
    attachments: tuple[AttachmentChecker, str],
) -> None:
    checker, base = attachments
    image = await checker.check(Attachment("red.png", 10, f"{base}/red.png"))
    assert (image.content_type, image.data) == ("image/png", png())
    for name, size, url, reason in (
        ("big.png", 2 * 1024 * 1024, f"{base}/red.png", "big.png is larger than 1 MB"),
        ("notes.png", 10, f"{base}/notes.png", "notes.png is not a PNG, JPEG, WebP or GIF"),
        ("huge.png", 10, f"{base}/huge.png", "huge.png has more than 40 million pixels"),
        ("cut.png", 10, f"{base}/cut.png", "cut.png cannot be read as an image"),
        ("away.png", 10, "https://elsewhere.example/a.png", "away.png could not be downloaded"),
    ):
        with pytest.raises(AttachmentRefused) as refused:
            await checker.check(Attachment(name, size, url))
        assert refused.value.reason.startswith(reason), refused.value.reason


def test_a_token_in_an_inputs_link_is_redacted() -> None:
    record = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "fetched %s",
        ("https://bot.example/inputs/Ab_c-9.png",),
        None,
    )
    RedactingFilter(()).filter(record)
    assert record.getMessage() == "fetched https://bot.example/inputs/***"
