"""bot.delivery: image sniffing, the trusted-host fetcher over loopback HTTP (hosts, addresses,
redirects, size), message texts, and posting to the Discord double (re-encoding what is too
large, linking what cannot be made to fit, Discord's 5xx, 403 and 413 answers)."""

from __future__ import annotations

import asyncio
import io
import os
import random
import socket
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp.payload
import discord
import PIL.Image
import PIL.ImageStat
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.delivery.fetch import DOWNLOADS_AT_ONCE, MAX_IMAGE_BYTES, ImageFetcher, image_kind
from bot.delivery.fit import MIN_REENCODED_BYTES, reencode
from bot.delivery.publisher import DEFAULT_UPLOAD_LIMIT, DiscordPublisher
from bot.delivery.sending import upload
from bot.delivery.texts import (
    PROMPT_LIMIT,
    allowed_mentions,
    failure_text,
    jump_url,
    result_text,
    status_text,
)
from bot.grid import grid_owner
from bot.jobs.store import Job, JobState, JobStore
from bot.jobs.types import DeliveryError
from bot.net import NonPublicAddressError, PublicOnlyResolver, is_public
from tests.conftest import Serve
from tests.fakes.discord_double import DiscordDouble
from tests.harness import GRID_LABELS, loose_mentions, message_payloads
from tests.jobs.test_paid_answer import until
from tests.names import JobKind

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0"
BIG_PNG = PNG + bytes(range(256)) * 1200  # ~300 KB
CHUNKS = 12
DISCORD_LIMIT = 2000
VENDOR_HOST = "tempfile.aiquickdraw.com"
OPERATOR_HOST = "files.example.test"


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


class MapResolver(AbstractResolver):
    """Answers every name from a fixed table, as a DNS server would (no lookups leave the host)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


@dataclass
class Files:
    port: int
    hits: Counter[str] = field(default_factory=Counter)
    # Served at /img/<name>: what a test puts here.
    images: dict[str, bytes] = field(default_factory=dict)
    fetchers: list[ImageFetcher] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def fetcher(
        self,
        hosts: tuple[str, ...] = ("127.0.0.1",),
        *,
        resolver: AbstractResolver | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> ImageFetcher:
        fetcher = ImageFetcher(hosts, resolver=resolver, max_bytes=max_bytes)
        self.fetchers.append(fetcher)
        return fetcher


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    hits: Counter[str] = Counter()
    images: dict[str, bytes] = {}
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

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=images[request.match_info["name"]])

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
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/page.png", html)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/relative", relative)
    app.router.add_get("/loop", loop)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port_box.append(int(runner.addresses[0][1]))
    served = Files(port=port_box[0], hits=hits, images=images)
    try:
        yield served
    finally:
        for fetcher in served.fetchers:
            await fetcher.close()
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
    image = await files.fetcher(("LocalHost",)).fetch(files.url("/photo", host="localhost"), "t")
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
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/big.png", "not an http(s) link"),
        ("file:///etc/passwd", "not an http(s) link"),
        ("file://127.0.0.1/etc/passwd", "not an http(s) link"),
        ("data:image/png;base64,iVBORw0KGgo=", "not an http(s) link"),
        ("javascript:alert(1)", "not an http(s) link"),
        ("127.0.0.1/big.png", "not an http(s) link"),
        ("", "not an http(s) link"),
        ("http://[::1/big.png", "not a valid URL"),
        ("http://127.0.0.1:99999/big.png", "not a valid URL"),
    ],
)
async def test_non_http_and_malformed_links_are_refused(
    files: Files, url: str, reason: str
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await files.fetcher().fetch(url, "t")
    assert reason in caught.value.reason
    assert caught.value.retry is False
    assert sum(files.hits.values()) == 0


async def test_a_closed_port_may_be_retried(files: Files) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeliveryError) as caught:
        await files.fetcher().fetch(f"http://127.0.0.1:{port}/big.png", "t")
    assert caught.value.retry is True


# -- addresses: vendor hosts must be public, hosts the operator named may be anywhere -------------


async def test_a_vendor_host_resolving_to_loopback_is_refused(files: Files) -> None:
    dns = MapResolver({VENDOR_HOST: ["127.0.0.1"]})
    fetcher = files.fetcher((VENDOR_HOST,), resolver=dns)
    with pytest.raises(DeliveryError) as caught:
        await fetcher.fetch(files.url("/photo", host=VENDOR_HOST), "t")
    assert "resolved to a private" in caught.value.reason and VENDOR_HOST in caught.value.reason
    assert caught.value.retry is False
    assert dns.asked == [VENDOR_HOST]
    assert sum(files.hits.values()) == 0


async def test_an_operator_named_host_resolving_to_loopback_is_fetched(files: Files) -> None:
    dns = MapResolver({VENDOR_HOST: ["127.0.0.1"], OPERATOR_HOST: ["127.0.0.1"]})
    fetcher = files.fetcher((VENDOR_HOST, OPERATOR_HOST), resolver=dns)
    image = await fetcher.fetch(files.url("/photo", host=OPERATOR_HOST.upper()), "t")
    assert image.filename == "t.jpg"
    assert files.hits == Counter({f"{OPERATOR_HOST}/photo": 1})


async def test_a_redirect_from_an_operator_host_to_a_vendor_host_on_loopback_is_refused(
    files: Files,
) -> None:
    dns = MapResolver({VENDOR_HOST: ["127.0.0.1"], OPERATOR_HOST: ["127.0.0.1"]})
    fetcher = files.fetcher((VENDOR_HOST, OPERATOR_HOST), resolver=dns)
    target = files.url("/photo", host=VENDOR_HOST)
    with pytest.raises(DeliveryError, match="resolved to a private") as caught:
        await fetcher.fetch(files.url(f"/redirect?to={target}", host=OPERATOR_HOST), "t")
    assert caught.value.retry is False
    assert files.hits == Counter({f"{OPERATOR_HOST}/redirect": 1})


async def test_any_host_can_be_held_to_public_addresses(files: Files) -> None:
    fetcher = ImageFetcher(["127.0.0.1", "localhost"], public_only=["localhost"])
    files.fetchers.append(fetcher)
    with pytest.raises(DeliveryError, match="resolved to a private"):
        await fetcher.fetch(files.url("/photo", host="localhost"), "t")
    assert (await fetcher.fetch(files.url("/photo"), "t")).filename == "t.jpg"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://172.16.0.1/x.png",
        "http://100.64.0.1/x.png",
        "http://0.0.0.0/x.png",
        "http://[::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[fd00::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "https://127.0.0.2/x.png",
    ],
)
async def test_a_redirect_to_a_private_ip_literal_is_refused_without_connecting(
    files: Files, target: str
) -> None:
    dns = MapResolver({})
    with pytest.raises(DeliveryError, match="private, loopback or link-local") as caught:
        await files.fetcher(resolver=dns).fetch(files.url(f"/redirect?to={target}"), "t")
    assert caught.value.retry is False
    assert files.hits == Counter({"127.0.0.1/redirect": 1})
    assert dns.asked == []


async def test_a_public_ip_literal_must_still_be_trusted(files: Files) -> None:
    with pytest.raises(DeliveryError, match="not a trusted host"):
        await files.fetcher().fetch(files.url("/redirect?to=http://93.184.216.34/x.png"), "t")
    assert files.hits == Counter({"127.0.0.1/redirect": 1})


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.31.255.255", False),
        ("192.168.0.10", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fd12:3456::1", False),
        ("::ffff:10.0.0.1", False),
        ("ff02::1", False),
        ("not-an-address", False),
        ("", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_the_resolver_keeps_only_public_answers_of_vendor_hosts() -> None:
    answers = ["127.0.0.1", "10.0.0.7", "93.184.216.34", "fe80::1", "2606:4700:4700::1111"]
    dns = MapResolver({VENDOR_HOST: answers, OPERATOR_HOST: answers})
    resolver = PublicOnlyResolver(dns, any_address=[OPERATOR_HOST.upper()])
    kept = await resolver.resolve(VENDOR_HOST, 443)
    assert [a["host"] for a in kept] == ["93.184.216.34", "2606:4700:4700::1111"]
    assert all(a["port"] == 443 for a in kept)
    everything = await resolver.resolve(OPERATOR_HOST, 443)
    assert [a["host"] for a in everything] == answers


async def test_the_resolver_refuses_a_vendor_host_with_no_public_answer() -> None:
    dns = MapResolver({VENDOR_HOST: ["127.0.0.1", "169.254.169.254"]})
    with pytest.raises(NonPublicAddressError) as caught:
        await PublicOnlyResolver(dns, any_address=()).resolve(VENDOR_HOST, 443)
    assert caught.value.host == VENDOR_HOST
    assert "169.254.169.254" in str(caught.value)


async def test_a_host_that_does_not_resolve_may_be_retried(files: Files) -> None:
    fetcher = files.fetcher((VENDOR_HOST,), resolver=MapResolver({}))
    with pytest.raises(DeliveryError, match="could not be downloaded") as caught:
        await fetcher.fetch(files.url("/photo", host=VENDOR_HOST), "t")
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
        parent_task_id="grid-task" if kind != JobKind.IMAGINE else None,
        image_index=index if kind in (JobKind.UPSCALE, JobKind.VARY) else None,
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


def test_texts_of_a_variation_and_a_reroll_and_whose_grid_they_are() -> None:
    vary, reroll = make_job(JobKind.VARY, index=1), make_job(JobKind.REROLL)
    assert status_text(vary).startswith("⏳ Making variations of image #2 for <@4242> (started")
    assert status_text(reroll).startswith("⏳ Re-rolling **a red fox in snow** for <@4242>")
    assert result_text(vary) == "**a red fox in snow** - Variations (image #2) <@4242>"
    assert result_text(reroll) == "**a red fox in snow** - <@4242> (re-roll)"
    assert failure_text(vary, "x") == "❌ Variations of image #2 for <@4242> failed: x"
    assert failure_text(reroll, "x") == "❌ Re-roll of **a red fox in snow** for <@4242> failed: x"
    # UPSCALE_ALLOWED=requester reads the owner back from these lines.
    member = 123456789012345678
    for kind in (JobKind.VARY, JobKind.REROLL, JobKind.IMAGINE):
        assert grid_owner(result_text(make_job(kind, requester=member))) == member


def test_every_line_that_shows_the_prompt_shows_the_parameters_sent() -> None:
    options = {
        "speed": "turbo",
        "aspect_ratio": "16:9",
        "version": "7",
        "stylization": "250",
        "typed_params": "on",
    }
    shown = "**a <@99> \\_fox\\_** --ar 16:9 --v 7 --s 250 --turbo"
    member = 123456789012345678
    for kind in (JobKind.IMAGINE, JobKind.REROLL, JobKind.UPSCALE, JobKind.VARY):
        job = replace(make_job(kind, prompt="a <@99> _fox_", requester=member), options=options)
        assert shown in result_text(job)
        if kind in (JobKind.IMAGINE, JobKind.REROLL):
            assert shown in status_text(job)
        if kind != JobKind.UPSCALE:
            assert grid_owner(result_text(job)) == member
    imagine = replace(make_job(JobKind.IMAGINE), options=options)
    assert result_text(imagine) == "**a red fox in snow** --ar 16:9 --v 7 --s 250 --turbo - <@4242>"
    assert shown in failure_text(replace(imagine, prompt="a <@99> _fox_"), "x")
    # The default speed is not written; options chosen without typed parameters show nothing.
    fast = replace(imagine, options={"speed": "fast", "typed_params": "on"})
    assert result_text(fast) == "**a red fox in snow** - <@4242>"
    chosen = replace(imagine, options={k: v for k, v in options.items() if k != "typed_params"})
    assert result_text(chosen) == "**a red fox in snow** - <@4242>"


def test_allowed_mentions_name_every_field_discord_would_otherwise_parse() -> None:
    assert allowed_mentions().to_dict() == {"parse": []}
    assert allowed_mentions(4242).to_dict() == {"parse": [], "users": [4242]}


def test_jump_url() -> None:
    assert jump_url(1, 555, 777) == "https://discord.com/channels/1/555/777"
    assert jump_url(None, 555, 777) == "https://discord.com/channels/@me/555/777"


def test_failure_text_fits_a_discord_message_with_the_longest_prompt_and_reason() -> None:
    job = make_job(JobKind.IMAGINE, prompt="*_" * 3000, requester=2**63 - 1)
    assert len(failure_text(job, "r" * 5000)) <= 2000


# -- posting to the Discord double: size limits, re-encoding, Discord's errors ---------------------


def noisy_png(width: int, height: int, *, mode: str = "RGB", seed: int = 7) -> bytes:
    """A PNG that barely compresses (noise over a gradient, so the picture has a shape)."""
    noise = random.Random(seed).randbytes(width * height * len(mode))
    picture = PIL.Image.frombytes(mode, (width, height), noise)
    gradient = PIL.Image.linear_gradient("L").resize((width, height)).convert(mode)
    out = io.BytesIO()
    PIL.Image.blend(picture, gradient, 0.5).save(out, "PNG", compress_level=1)
    return out.getvalue()


def decoded(data: bytes) -> PIL.Image.Image:
    picture = PIL.Image.open(io.BytesIO(data))
    picture.load()
    return picture


def mean_difference(a: PIL.Image.Image, b: PIL.Image.Image) -> float:
    """How far apart two pictures' average colours are, from 0 to 255."""
    means = [PIL.ImageStat.Stat(p.convert("RGB").resize((32, 32))).mean for p in (a, b)]
    return max(abs(x - y) for x, y in zip(*means, strict=True))


@dataclass
class Posting:
    double: DiscordDouble
    files: Files
    publisher: DiscordPublisher

    def serve(self, name: str, data: bytes) -> str:
        self.files.images[name] = data
        return self.files.url(f"/img/{name}")

    async def deliver(self, *urls: str, kind: JobKind = JobKind.UPSCALE) -> int:
        job = replace(
            make_job(kind),
            guild_id=self.double.guild_id,
            channel_id=self.double.channel_id,
            result_urls=urls,
        )
        return await self.publisher.deliver(job)

    def limit_uploads_to(self, limit: int) -> None:
        """What the bot believes the server's upload limit is (a boost tier, as guild data says)."""
        self.publisher.upload_limit = lambda guild_id: limit  # type: ignore[method-assign]

    def posts(self) -> int:
        return self.double.count_requests("POST", r"/channels/\d+/messages")


@pytest.fixture
async def posting(double: DiscordDouble, files: Files, tmp_path: Path) -> AsyncIterator[Posting]:
    # REST only, as a bot delivers results: no gateway, so no guild cache either.
    client = discord.Client(intents=discord.Intents(guilds=True))
    await client.login("fake-discord-token-for-the-double")
    store = await JobStore.open(f"sqlite:///{tmp_path}/delivery.sqlite3")
    publisher = DiscordPublisher(client, store, files.fetcher())
    try:
        yield Posting(double, files, publisher)
    finally:
        await publisher.close()
        await store.close()
        await client.close()


async def test_an_image_that_fits_is_posted_as_it_is(posting: Posting) -> None:
    png = noisy_png(64, 64)
    message_id = await posting.deliver(posting.serve("a.png", png))
    message = posting.double.message(message_id)
    assert message.attachments == [("up-task_0.png", png)]
    assert message.content == "**a red fox in snow** - Image #2 <@4242>"


def test_an_upload_hands_its_bytes_to_aiohttp_without_a_copy() -> None:
    # aiohttp sizes a BytesIO with getbuffer(), which copies the bytes a BytesIO shares: on the
    # event loop, 28 ms for one re-encoded result on a VM (docs/performance.md section 8).
    data = os.urandom(4 * 1024 * 1024)
    fp = upload("a.png", data).fp
    tracemalloc.start()
    try:
        payload = aiohttp.payload.get_payload(fp)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert payload.size == len(data)
    assert peak < len(data) // 8
    assert asyncio.run(payload.as_bytes()) == data


async def test_an_image_over_the_servers_limit_is_reencoded_to_fit(posting: Posting) -> None:
    # 2000×2000 of noise is a ~12 MB PNG: over the 10 MiB a server without boosts allows.
    png = noisy_png(2000, 2000)
    assert len(png) > DEFAULT_UPLOAD_LIMIT
    message = posting.double.message(await posting.deliver(posting.serve("big.png", png)))
    [(name, data)] = message.attachments
    assert name == "up-task_0.jpg"
    assert len(data) <= DEFAULT_UPLOAD_LIMIT
    picture = decoded(data)
    assert picture.format == "JPEG" and picture.size == (2000, 2000)
    assert mean_difference(picture, decoded(png)) < 4
    assert posting.posts() == 1


@pytest.mark.parametrize(
    ("limit", "downscaled"), [(400_000, False), (150_000, True), (60_000, True)]
)
async def test_a_smaller_limit_lowers_quality_then_size_keeping_the_picture(
    posting: Posting, limit: int, downscaled: bool
) -> None:
    png = noisy_png(900, 600)
    posting.limit_uploads_to(limit)
    message = posting.double.message(await posting.deliver(posting.serve("wide.png", png)))
    [(_, data)] = message.attachments
    assert len(data) <= limit
    picture = decoded(data)
    width, height = picture.size
    assert picture.format == "JPEG" and (width < 900) is downscaled
    assert abs(width / height - 1.5) < 0.01
    assert mean_difference(picture, decoded(png)) < 4
    assert "http" not in message.content


@pytest.mark.parametrize(
    ("mode", "save_as"), [("RGB", "WEBP"), ("RGB", "GIF"), ("RGBA", "PNG"), ("L", "PNG")]
)
def test_reencode_reads_every_accepted_format(mode: str, save_as: str) -> None:
    source = decoded(noisy_png(300, 200, mode=mode))
    out = io.BytesIO()
    source.save(out, save_as, **({"lossless": True} if save_as == "WEBP" else {}))
    jpeg = reencode(out.getvalue(), len(out.getvalue()) // 2)
    assert jpeg is not None and len(jpeg) <= len(out.getvalue()) // 2
    picture = decoded(jpeg)
    assert picture.format == "JPEG" and picture.mode == "RGB" and picture.size == (300, 200)


def test_transparency_becomes_white_not_black() -> None:
    clear = PIL.Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    out = io.BytesIO()
    clear.save(out, "PNG")
    jpeg = reencode(out.getvalue(), MIN_REENCODED_BYTES)
    assert jpeg is not None
    pixel = decoded(jpeg).getpixel((200, 200))
    assert isinstance(pixel, tuple) and min(pixel) >= 250


def test_a_jpeg_rotated_by_exif_stays_upright() -> None:
    source = PIL.Image.frombytes("RGB", (300, 100), random.Random(1).randbytes(300 * 100 * 3))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    out = io.BytesIO()
    source.save(out, "JPEG", quality=100, exif=exif)
    jpeg = reencode(out.getvalue(), len(out.getvalue()) - 1)
    assert jpeg is not None
    assert decoded(jpeg).size == (100, 300)


async def test_a_413_answer_leads_to_a_smaller_reencode(posting: Posting) -> None:
    # The bot believes 10 MiB; this server takes 600 KB: Discord refuses the ~1.2 MB PNG.
    png = noisy_png(640, 640)
    posting.double.attachment_size_limit = 600_000
    message = posting.double.message(await posting.deliver(posting.serve("a.png", png)))
    [(name, data)] = message.attachments
    assert name == "up-task_0.jpg" and len(data) <= 600_000
    assert decoded(data).size == (640, 640)
    assert posting.posts() == 2


async def test_a_413_code_without_the_status_is_handled_too(posting: Posting) -> None:
    png = noisy_png(640, 640)
    posting.double.fail_next("POST", r"/channels/\d+/messages", 400, code=40005)
    message = posting.double.message(await posting.deliver(posting.serve("a.png", png)))
    [(name, data)] = message.attachments
    assert name == "up-task_0.jpg" and len(data) <= len(png) // 2
    assert posting.posts() == 2


async def test_when_no_reencode_fits_the_link_is_posted(posting: Posting) -> None:
    url = posting.serve("a.png", noisy_png(640, 640))
    posting.double.attachment_size_limit = 1000
    message = posting.double.message(await posting.deliver(url))
    assert message.attachments == []
    assert message.content == f"**a red fox in snow** - Image #2 <@4242>\n{url}"
    # As it is (413), re-encoded to half (413), then the link.
    assert posting.posts() == 3


async def test_a_limit_too_small_for_any_reencode_links_at_once(posting: Posting) -> None:
    url = posting.serve("a.png", noisy_png(640, 640))
    posting.limit_uploads_to(MIN_REENCODED_BYTES - 1)
    message = posting.double.message(await posting.deliver(url))
    assert message.attachments == [] and message.content.endswith(f"\n{url}")
    assert posting.posts() == 1


@pytest.mark.parametrize(
    "body",
    [
        PNG + random.Random(3).randbytes(400_000),
        b"\xff\xd8\xff\xe0" + bytes(400_000),
        b"GIF89a" + b"\xff" * 400_000,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + random.Random(4).randbytes(400_000),
    ],
    ids=["png", "jpeg", "gif", "webp"],
)
async def test_an_undecodable_image_with_valid_magic_is_linked(
    posting: Posting, body: bytes
) -> None:
    url = posting.serve("broken", body)
    posting.limit_uploads_to(200_000)
    message = posting.double.message(await posting.deliver(url))
    assert message.attachments == [] and message.content.endswith(f"\n{url}")


async def test_an_animation_is_linked_rather_than_cut_to_one_frame(posting: Posting) -> None:
    frames = [decoded(noisy_png(300, 300, seed=s)).convert("P") for s in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    url = posting.serve("anim.gif", out.getvalue())
    posting.limit_uploads_to(len(out.getvalue()) // 2)
    message = posting.double.message(await posting.deliver(url))
    assert message.attachments == [] and message.content.endswith(f"\n{url}")


async def test_a_grid_shares_the_limit_and_keeps_its_order(posting: Posting) -> None:
    small = noisy_png(64, 64, seed=1)
    big = [noisy_png(600, 600, seed=s) for s in (2, 3, 4)]
    urls = [posting.serve(f"{i}.png", data) for i, data in enumerate([big[0], small, *big[1:]])]
    limit = 1_000_000
    posting.limit_uploads_to(limit)
    message = posting.double.message(await posting.deliver(*urls, kind=JobKind.IMAGINE))
    names = [name for name, _ in message.attachments]
    assert names == ["up-task_0.jpg", "up-task_1.png", "up-task_2.jpg", "up-task_3.jpg"]
    assert message.attachments[1][1] == small
    assert sum(len(data) for _, data in message.attachments) <= limit
    assert [b.label for b in message.buttons()] == GRID_LABELS


# discord.py itself retries 500, 502, 504 and 524 with sleeps of seconds; 503 reaches the bot.
@pytest.mark.parametrize(("status", "retry"), [(503, True), (400, False)])
async def test_a_refused_post_fails_with_retry_on_5xx(
    posting: Posting, status: int, retry: bool
) -> None:
    posting.double.fail_next("POST", r"/channels/\d+/messages", status)
    with pytest.raises(DeliveryError) as caught:
        await posting.deliver(posting.serve("a.png", noisy_png(32, 32)))
    assert caught.value.retry is retry
    assert f"({status})" in caught.value.reason
    assert posting.double.messages() == []


async def test_no_permission_to_post_tells_how_to_fix_it(posting: Posting) -> None:
    posting.double.fail_next("POST", r"/channels/\d+/messages", 403, code=50013)
    with pytest.raises(DeliveryError) as caught:
        await posting.deliver(posting.serve("a.png", noisy_png(32, 32)))
    assert caught.value.retry is False
    assert "Send Messages and Attach Files" in caught.value.reason
    assert "server admin" in caught.value.reason
    assert posting.posts() == 1


async def test_every_post_and_edit_says_whom_it_may_ping_itself(posting: Posting) -> None:
    # The client here has no default allowed_mentions: each request must bring its own.
    double, publisher = posting.double, posting.publisher
    alice, bystander = double.add_user("alice"), double.add_user("bystander")
    role = await double.add_role("moderators")
    job = replace(
        make_job(JobKind.UPSCALE, prompt=f"@everyone @here <@&{role}> <@{bystander}> a fox"),
        requester_id=alice,
        guild_id=double.guild_id,
        channel_id=double.channel_id,
        result_urls=(posting.serve("a.png", noisy_png(32, 32)),),
    )
    status_id = await publisher.post_status(job)
    result = double.message(await publisher.deliver(job))
    await publisher.mark_grid(replace(job, grid_message_id=result.id))
    # A failure replaces the status line, or is posted anew when there is none.
    await publisher.announce_failure(replace(job, status_message_id=status_id), "broke", None)
    await publisher.announce_failure(job, "broke", None)
    await publisher.post_notice(double.channel_id, f"⚠️ credits are low @everyone <@{alice}>")

    payloads = message_payloads(double)
    methods = [where.split()[0] for where, _ in payloads]
    assert methods == ["POST", "POST", "PATCH", "PATCH", "POST", "POST"]
    assert loose_mentions(payloads, alice) == []
    edited, posted = [m for m in double.messages() if "failed" in m.content]
    assert result.mentions == [alice] and posted.mentions == [alice]
    # Only a message that reports to its requester pings: not the status line, not the notice.
    assert [m for m in double.messages() if m.mentions] == [result, posted]
    assert not any(m.mention_everyone or m.mention_roles for m in double.messages())
    assert edited.id == status_id


async def test_reencoding_runs_off_the_event_loop(
    posting: Posting, handed_to_threads: list[Callable[..., object]]
) -> None:
    posting.limit_uploads_to(200_000)
    message = posting.double.message(
        await posting.deliver(posting.serve("a.png", noisy_png(640, 640)))
    )
    assert len(message.attachments) == 1
    # The download (over 1 MiB) is joined off the loop too (bot.net.read_capped).
    assert handed_to_threads == [b"".join, reencode]


async def test_downloads_beyond_the_slots_wait_for_one_and_all_arrive(serve: Serve) -> None:
    # A burst of results fetched all at once made the event loop read every socket each turn
    # (turns of 40 ms); the fetcher takes DOWNLOADS_AT_ONCE at a time, the rest wait.
    seen, released = [0, 0], asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        seen[0] += 1
        seen[1] = max(seen[1], seen[0])
        await released.wait()
        seen[0] -= 1
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(64), content_type="image/png")

    app = web.Application()
    app.router.add_get("/img/{n}", held)
    base = await serve(app)
    fetcher = ImageFetcher(("127.0.0.1",))
    try:
        fetches = [
            asyncio.create_task(fetcher.fetch(f"{base}/img/{n}", f"r{n}"))
            for n in range(DOWNLOADS_AT_ONCE + 3)
        ]
        await until(lambda: seen[0] == DOWNLOADS_AT_ONCE, "the slots taken")
        # The others are queued in the fetcher, not at the server: a few turns change nothing.
        for _ in range(20):
            await asyncio.sleep(0)
        assert seen[0] == DOWNLOADS_AT_ONCE
        released.set()
        images = await asyncio.gather(*fetches)
        assert [image.filename for image in images] == [
            f"r{n}.png" for n in range(DOWNLOADS_AT_ONCE + 3)
        ]
        assert seen[1] == DOWNLOADS_AT_ONCE
    finally:
        await fetcher.close()
