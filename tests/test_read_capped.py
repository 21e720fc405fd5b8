"""bot.net.read_capped against a real loopback server: the whole body, or None past the cap;
a large body joined off the event loop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from bot.net import JOIN_ON_LOOP, read_capped

BODIES = {"small": os.urandom(200_000), "large": os.urandom(JOIN_ON_LOOP * 3 + 12_345)}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def body(request: web.Request) -> web.StreamResponse:
        data = BODIES[request.match_info["name"]]
        response = web.StreamResponse()
        await response.prepare(request)
        # In pieces, as a real download arrives.
        for start in range(0, len(data), 100_000):
            await response.write(data[start : start + 100_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", body)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("name", ["small", "large"])
async def test_the_whole_body_or_none_past_the_cap(server: str, name: str) -> None:
    data = BODIES[name]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server}/{name}") as response:
            assert await read_capped(response, len(data)) == data
        async with session.get(f"{server}/{name}") as response:
            assert await read_capped(response, len(data) - 1) is None


async def test_a_large_body_is_joined_off_the_event_loop(
    server: str, handed_to_threads: list[Callable[..., object]]
) -> None:
    async with aiohttp.ClientSession() as session:
        for name in ("small", "large"):
            async with session.get(f"{server}/{name}") as response:
                assert await read_capped(response, 10 * JOIN_ON_LOOP) == BODIES[name]
    assert handed_to_threads == [b"".join]
