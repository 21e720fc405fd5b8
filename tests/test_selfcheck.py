"""The start-up check that PUBLIC_URL leads back to this bot's own listener."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from bot.selfcheck import SELFCHECK_PATH, SelfCheck, public_url_warning
from tests.conftest import Serve


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "http://bot.localhost",
        "http://127.0.0.1:8080",
        "http://10.0.0.5",
        "http://192.168.1.20:8080/bot",
        "http://[::1]:8080",
        "http://169.254.1.1",
    ],
)
def test_a_public_url_that_cannot_be_public_is_warned_about(url: str) -> None:
    warning = public_url_warning(url)
    assert warning is not None and url in warning


@pytest.mark.parametrize(
    "url", ["https://bot.example.com", "https://8.8.8.8", "https://tunnel.trycloudflare.com/x"]
)
def test_a_public_looking_url_is_not_warned_about(url: str) -> None:
    assert public_url_warning(url) is None


async def test_the_url_that_leads_back_is_reachable_and_the_path_works_once(
    serve: Serve, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    check = SelfCheck(app)
    base = await serve(app)
    caplog.set_level(logging.INFO, logger="bot.selfcheck")
    assert check.reachable is None
    assert await check.run(http, base + "/")
    assert check.reachable is True
    assert any("reaches this listener" in r.getMessage() for r in caplog.records)
    # The token was for one request only: nobody can use the path afterwards.
    async with http.get(base + SELFCHECK_PATH + "anything") as response:
        assert response.status == 404


async def test_a_url_leading_to_another_server_is_not_reachable(
    serve: Serve, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    own = web.Application()
    check = SelfCheck(own)
    await serve(own)

    async def parked(_request: web.Request) -> web.Response:
        return web.Response(text="a parked domain")

    other = web.Application()
    other.router.add_get("/{tail:.*}", parked)
    elsewhere = await serve(other)
    assert not await check.run(http, elsewhere)
    assert "HTTP 200, but not as this bot" in check.detail
    assert any("does not reach this listener" in r.getMessage() for r in caplog.records)


async def test_a_url_nobody_answers_is_not_reachable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = SelfCheck(web.Application())
    assert not await check.run(http, f"http://127.0.0.1:{port}")
    assert "could not be reached" in check.detail
