"""Images in /imagine under attack (the review of issue 23): decompression bombs in a burst,
a kept image opened in a browser, the sandbox's memory and event loop in the bot's process, a
vendor's refusal quoting input links, and a Discord link about to expire."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

import bot.delivery.attachments as attachments_module
from bot.delivery.attachments import Attachment, AttachmentChecker
from bot.delivery.fetch import ImageFetcher
from bot.jobs.image_inputs import ImageInputs, InputsGone, KeptImage
from bot.jobs.store import JobStore
from bot.midjourney.errors import ApiError
from bot.web import Listener
from tests.conftest import Serve, StartSandbox
from tests.test_image_inputs import generate as _generate


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
async def bombs(serve: Serve) -> AsyncIterator[tuple[AttachmentChecker, str, int]]:
    # 6000 x 6000 of one colour: under the 40 Mpx cap, a small file, ~108 MB once decoded.
    bomb = _png((6000, 6000))
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bomb)

    app.router.add_get("/{name}", handler)
    base = await serve(app)
    checker = AttachmentChecker(ImageFetcher(("127.0.0.1",), max_bytes=10 * 1024 * 1024), 10)
    yield checker, base, len(bomb)
    await checker.close()


async def test_a_burst_of_small_decompression_bombs_is_decoded_a_bounded_number_at_once(
    bombs: tuple[AttachmentChecker, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    checker, base, size = bombs
    # Far below IMAGE_INPUT_MAX_MB: the size checks let every one of them through.
    assert size < 1024 * 1024
    lock = threading.Lock()
    live = 0
    peak = 0
    real = attachments_module._pixels_problem

    def counted(data: bytes) -> str | None:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        try:
            time.sleep(0.2)  # a decode of 36 Mpx takes about this long
            return real(data)
        finally:
            with lock:
                live -= 1

    monkeypatch.setattr(attachments_module, "_pixels_problem", counted)
    # Eight members (or one, from eight channels) each attach one: two /imagine's worth of
    # image and image2 from four people.
    await asyncio.gather(
        *(checker.check(Attachment(f"b{i}.png", size, f"{base}/b{i}.png")) for i in range(8))
    )
    # Each decode holds ~108 MB: at most two at once keeps a burst near 200 MB, not ~1 GB.
    assert peak <= 2, f"{peak} decodes of 36 Mpx at once"


class _Tracker:
    async def image_input(self, name: str) -> KeptImage | None:
        # What image_kind and Pillow take as a GIF, with markup after its header.
        return KeptImage("image/gif", b"GIF89a<html><script>alert(document.domain)</script>")


async def test_a_kept_image_is_served_so_no_browser_renders_it_as_a_page() -> None:
    listener = Listener()
    listener.tracker = cast(Any, _Tracker())
    port = await listener.start("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/inputs/{'A' * 43}.gif") as response,
        ):
            assert response.status == 200
            headers = response.headers
    finally:
        await listener.close()
    assert headers.get("X-Content-Type-Options") == "nosniff"
    assert "sandbox" in headers.get("Content-Security-Policy", "")
    assert headers.get("Content-Disposition") == 'inline; filename="image.gif"'
    assert headers.get("Referrer-Policy") == "no-referrer"


@pytest.fixture
async def inputs_server(serve: Serve) -> str:
    bodies = {"red.png": _png((8, 8)), "bomb.png": _png((6000, 6000))}
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["name"]], content_type="image/png")

    app.router.add_get("/{name}", handler)
    return await serve(app)


async def test_a_sandbox_bot_does_not_keep_every_input_image_it_fetched(
    start_sandbox: StartSandbox, inputs_server: str
) -> None:
    # SANDBOX=1 serves this API inside the bot's own process, for as long as it runs.
    sandbox = await start_sandbox()
    for _ in range(10):
        status, answer = await _generate(
            sandbox, taskType="mj_img2img", fileUrls=[f"{inputs_server}/red.png"]
        )
        assert status == 200, answer
    assert len(sandbox.api.fetched) < 10


async def test_the_sandbox_decodes_input_images_off_the_event_loop(
    start_sandbox: StartSandbox, inputs_server: str
) -> None:
    sandbox = await start_sandbox()
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    status, answer = await _generate(
        sandbox, taskType="mj_img2img", fileUrls=[f"{inputs_server}/bomb.png"]
    )
    done.set()
    await tick
    assert status == 200, answer
    # The bot's heartbeat, callbacks and every interaction wait while one image is decoded.
    assert max(gaps) < 0.1, f"the loop stalled {max(gaps):.2f} s"


def test_a_vendors_refusal_naming_an_input_link_tells_the_member_no_token() -> None:
    token = "Q" * 43
    link = "https://cdn.discordapp.com/attachments/1/2/a.png?ex=6a000000&is=69ff0000&hm=abcdef"
    error = ApiError(422, f"fileUrls: https://bot.example/inputs/{token}.png, {link} unreachable")
    told = error.user_message
    assert token not in told and "hm=abcdef" not in told, told


async def test_a_discord_link_about_to_expire_is_not_sent(tmp_path: Path) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/inputs.sqlite3")
    try:
        inputs = ImageInputs(store.engine, 7)
        soon = format(int(time.time()) + 5, "x")
        link = f"https://cdn.discordapp.com/attachments/1/2/a.png?ex={soon}&is=0&hm=00"
        # Relaxed jobs wait upstream for minutes; even fast ones are fetched after the answer.
        with pytest.raises(InputsGone):
            await inputs.urls({"images": link, "speed": "relaxed"}, None)
    finally:
        await store.close()
