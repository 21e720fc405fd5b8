"""bot.delivery: image sniffing, the trusted-host fetcher over loopback HTTP, and message texts."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from bot.delivery import (
    PROMPT_LIMIT,
    ImageFetcher,
    failure_text,
    image_kind,
    jump_url,
    result_text,
    status_text,
)
from bot.jobs.store import Job, JobKind, JobState
from bot.jobs.tracker import DeliveryError

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0"
BIG_PNG = PNG + bytes(range(256)) * 1200  # ~300 KB
CHUNKS = 12
DISCORD_LIMIT = 2000


# -- image_kind -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (PNG + b"\x00\x00\x00\rIHDR", "png"),
        (JPEG + b"\x00\x10JFIF", "jpg"),
        (b"\xff\xd8\xff\xdb" + b"\x00" * 10, "jpg"),
        (b"GIF87a" + b"\x00" * 10, "gif"),
        (b"GIF89a" + b"\x00" * 10, "gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"", None),
        (b"hello, world", None),
        (b"<!DOCTYPE html><html><body>not found</body></html>", None),
        (b'{"error": "nope"}', None),
        (b"\x89PN", None),
        (b"RIFF", None),
        (b"  " + PNG, None),
    ],
)
def test_image_kind(data: bytes, kind: str | None) -> None:
    assert image_kind(data) == kind


# -- ImageFetcher over loopback -------------------------------------------------------------------


@dataclass
class Files:
    session: aiohttp.ClientSession
    port: int
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def fetcher(self, **kw: float) -> ImageFetcher:
        return ImageFetcher(self.session, ["127.0.0.1"], **kw)  # type: ignore[arg-type]


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    hits: Counter[str] = Counter()
    port_box: list[int] = []

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        hits[f"{request.host.split(':')[0]}{request.path}"] += 1
        return await handler(request)

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        step = len(BIG_PNG) // CHUNKS + 1
        for start in range(0, len(BIG_PNG), step):
            await response.write(BIG_PNG[start : start + step])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async def jpeg(request: web.Request) -> web.Response:
        return web.Response(body=JPEG + b"\x00" * 100, content_type="image/jpeg")

    async def html(request: web.Request) -> web.Response:
        return web.Response(
            text="<html><body>Access denied</body></html>", content_type="image/png"
        )

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def redirect(request: web.Request) -> web.Response:
        target = request.query["to"]
        if target.startswith("/"):
            target = f"http://127.0.0.1:{port_box[0]}{target}"
        raise web.HTTPFound(target)

    async def relative(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/big.png")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/loop")

    app = web.Application(middlewares=[count])
    app.router.add_get("/big.png", big)
    app.router.add_get("/photo", jpeg)
    app.router.add_get("/page.png", html)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/relative", relative)
    app.router.add_get("/loop", loop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port_box.append(int(runner.addresses[0][1]))
    session = aiohttp.ClientSession()
    try:
        yield Files(session=session, port=port_box[0], hits=hits)
    finally:
        await session.close()
        await runner.cleanup()


async def test_fetches_a_chunked_png_whole(files: Files) -> None:
    image = await files.fetcher().fetch(files.url("/big.png"), "task_0")
    assert len(image.data) == len(BIG_PNG) > 256 * 1024
    assert image.data == BIG_PNG
    assert image.filename == "task_0.png"


async def test_a_jpeg_gets_a_jpg_name_whatever_the_url(files: Files) -> None:
    image = await files.fetcher().fetch(files.url("/photo"), "stem")
    assert image.filename == "stem.jpg"


async def test_exactly_max_bytes_is_accepted(files: Files) -> None:
    image = await files.fetcher(max_bytes=len(BIG_PNG)).fetch(files.url("/big.png"), "t")
    assert image.data == BIG_PNG


async def test_over_max_bytes_is_refused(files: Files) -> None:
    with pytest.raises(DeliveryError, match="larger") as caught:
        await files.fetcher(max_bytes=100_000).fetch(files.url("/big.png"), "t")
    assert caught.value.retry is False


async def test_an_untrusted_host_is_refused_without_a_request(files: Files) -> None:
    with pytest.raises(DeliveryError) as caught:
        await files.fetcher().fetch(files.url("/big.png", host="localhost"), "t")
    assert caught.value.retry is False
    assert "MJ_RESULT_HOSTS" in caught.value.reason and "localhost" in caught.value.reason
    assert sum(files.hits.values()) == 0


async def test_trusted_hosts_match_case_insensitively(files: Files) -> None:
    fetcher = ImageFetcher(files.session, ["LocalHost"])
    image = await fetcher.fetch(files.url("/photo", host="localhost"), "t")
    assert image.filename == "t.jpg"


async def test_a_redirect_to_an_untrusted_host_is_not_followed(files: Files) -> None:
    target = files.url("/big.png", host="localhost")
    with pytest.raises(DeliveryError, match="MJ_RESULT_HOSTS") as caught:
        await files.fetcher().fetch(files.url(f"/redirect?to={target}"), "t")
    assert caught.value.retry is False
    assert files.hits == Counter({"127.0.0.1/redirect": 1})


async def test_a_redirect_to_a_trusted_url_is_followed(files: Files) -> None:
    image = await files.fetcher().fetch(files.url("/redirect?to=/big.png"), "t")
    assert image.data == BIG_PNG
    assert files.hits == Counter({"127.0.0.1/redirect": 1, "127.0.0.1/big.png": 1})
    # A relative Location is resolved against the redirecting URL.
    image = await files.fetcher().fetch(files.url("/relative"), "u")
    assert image.filename == "u.png"


async def test_endless_redirects_give_up(files: Files) -> None:
    with pytest.raises(DeliveryError, match="redirects") as caught:
        await files.fetcher().fetch(files.url("/loop"), "t")
    assert caught.value.retry is False
    assert 1 < files.hits["127.0.0.1/loop"] <= 5


async def test_html_instead_of_an_image_is_refused(files: Files) -> None:
    with pytest.raises(DeliveryError, match="not an image") as caught:
        await files.fetcher().fetch(files.url("/page.png"), "t")
    assert caught.value.retry is False


@pytest.mark.parametrize(
    ("code", "retry"),
    [(404, False), (403, False), (410, False), (429, True), (500, True), (503, True)],
)
async def test_http_errors(files: Files, code: int, retry: bool) -> None:
    with pytest.raises(DeliveryError, match=f"HTTP {code}") as caught:
        await files.fetcher().fetch(files.url(f"/status/{code}"), "t")
    assert caught.value.retry is retry


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/big.png",
        "file:///etc/passwd",
        "file://127.0.0.1/etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "127.0.0.1/big.png",
        "",
    ],
)
async def test_non_http_schemes_are_refused(files: Files, url: str) -> None:
    fetcher = files.fetcher()
    assert not fetcher.trusted(url)
    with pytest.raises(DeliveryError, match="not a trusted host") as caught:
        await fetcher.fetch(url, "t")
    assert caught.value.retry is False
    assert sum(files.hits.values()) == 0


async def test_a_closed_port_may_be_retried(files: Files) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await files.fetcher().fetch(f"http://127.0.0.1:{port}/big.png", "t")
    assert caught.value.retry is True


# -- texts ----------------------------------------------------------------------------------------


def make_job(
    kind: JobKind = JobKind.UPSCALE,
    *,
    prompt: str | None = "a red fox in snow",
    index: int | None = 1,
    requester: int = 4242,
    created_at: float = 1_700_000_000.5,
) -> Job:
    return Job(
        id="0123456789abcdef01234567",
        kind=kind,
        parent_task_id="grid-task" if kind is JobKind.UPSCALE else None,
        image_index=index if kind is JobKind.UPSCALE else None,
        upstream_task_id="up-task",
        requester_id=requester,
        guild_id=1,
        channel_id=555,
        grid_message_id=None,
        status_message_id=None,
        result_message_id=None,
        callback_secret="s" * 32,
        state=JobState.SUCCEEDED,
        error=None,
        result_urls=(),
        prompt=prompt,
        options={},
        created_at=created_at,
        updated_at=created_at,
        deadline_at=created_at + 600,
        completed_at=None,
        delivered_at=None,
    )


def test_status_text() -> None:
    upscale = status_text(make_job(index=2))
    assert upscale.startswith("⏳ Upscaling image #3 for <@4242>")
    assert "<t:1700000000:R>" in upscale
    imagine = status_text(make_job(JobKind.IMAGINE, prompt="a *cat*"))
    assert "Generating **a \\*cat\\*** for <@4242>" in imagine
    assert "<t:1700000000:R>" in imagine


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_result_text_of_an_upscale(index: int) -> None:
    text = result_text(make_job(index=index))
    assert text == f"**a red fox in snow** - Image #{index + 1} <@4242>"


def test_result_text_of_a_generation_and_of_no_prompt() -> None:
    assert result_text(make_job(JobKind.IMAGINE)) == "**a red fox in snow** - <@4242>"
    assert "Image #1" in result_text(make_job(prompt=None, index=0))
    assert "<@4242>" in result_text(make_job(prompt=""))


def test_result_text_escapes_markdown() -> None:
    prompt = "**bold** _it_ `code` ~~gone~~ ||spoiler|| > quote\n# heading"
    text = result_text(make_job(prompt=prompt))
    body = text.removeprefix("**").split("** - Image #2")[0]
    assert "\n" not in text
    for raw in ("**bold**", "_it_", "`code`", "~~gone~~", "||spoiler||"):
        assert raw not in body
    assert "\\*\\*bold\\*\\*" in body and "\\_it\\_" in body and "\\`code\\`" in body
    assert text.endswith(" - Image #2 <@4242>")


@pytest.mark.parametrize("unit", ["a", "*", "_~", "|`", "🦊", "word "])
def test_result_text_of_a_very_long_prompt_fits_a_message(unit: str) -> None:
    prompt = unit * 6000
    for job in (make_job(prompt=prompt, index=3), make_job(JobKind.IMAGINE, prompt=prompt)):
        text = result_text(job)
        assert len(text) < DISCORD_LIMIT
        assert "…" in text
        assert text.endswith("<@4242>")
        assert len(text) <= PROMPT_LIMIT + 60
        for other in (status_text(job), failure_text(job, "timed out")):
            assert len(other) < DISCORD_LIMIT


def test_failure_text() -> None:
    upscale = failure_text(make_job(index=0), "the task expired")
    assert upscale == "❌ Upscale of image #1 for <@4242> failed: the task expired"
    imagine = failure_text(make_job(JobKind.IMAGINE, prompt="a _fox_"), "out of credits")
    assert imagine == "❌ Generation of **a \\_fox\\_** for <@4242> failed: out of credits"


def test_jump_url() -> None:
    assert jump_url(1, 555, 777) == "https://discord.com/channels/1/555/777"
    assert jump_url(None, 555, 777) == "https://discord.com/channels/@me/555/777"


def test_failure_text_fits_a_discord_message_with_the_longest_prompt_and_reason() -> None:
    job = make_job(JobKind.IMAGINE, prompt="*_" * 3000, requester=2**63 - 1)
    assert len(failure_text(job, "r" * 5000)) <= 2000
