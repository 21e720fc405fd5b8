"""The start-up check that PUBLIC_URL leads back to a listener of this bot."""

from __future__ import annotations

import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from bot.jobs.callback_secrets import CallbackSecrets
from bot.selfcheck import SELFCHECK_PATH, SelfCheck, public_url_warning
from tests.conftest import Serve

KEYS = CallbackSecrets.from_token("t" * 60)


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
    check = SelfCheck(app, KEYS)
    base = await serve(app)
    caplog.set_level(logging.INFO, logger="bot.selfcheck")
    assert check.reachable is None
    assert await check.run(http, base + "/")
    assert check.reachable is True
    assert any("reaches this bot's listener" in r.getMessage() for r in caplog.records)
    # Only a token this bot made is answered: the path signs nothing for anyone else.
    for token in ("anything", CallbackSecrets.from_token("another bot's token" * 2).new()):
        async with http.get(base + SELFCHECK_PATH + token) as response:
            assert response.status == 404


async def test_a_url_leading_to_another_server_is_not_reachable(
    serve: Serve, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    own = web.Application()
    check = SelfCheck(own, KEYS)
    await serve(own)

    async def parked(_request: web.Request) -> web.Response:
        return web.Response(text="a parked domain")

    other = web.Application()
    other.router.add_get("/{tail:.*}", parked)
    elsewhere = await serve(other)
    assert not await check.run(http, elsewhere)
    assert "HTTP 200, but not as this bot" in check.detail
    assert any("does not reach this bot's listener" in r.getMessage() for r in caplog.records)


async def test_a_url_nobody_answers_is_not_reachable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = SelfCheck(web.Application(), KEYS)
    assert not await check.run(http, f"http://127.0.0.1:{port}")
    assert "could not be reached" in check.detail


async def test_behind_a_load_balancer_another_process_of_the_bot_proves_it(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """PUBLIC_URL leads to a load balancer that sent the check to another process: it is this
    bot all the same (every process takes every callback); a process of another bot is not."""
    checking = SelfCheck(web.Application(), KEYS)
    sibling = web.Application()
    SelfCheck(sibling, CallbackSecrets.from_token("t" * 60))
    assert await checking.run(http, await serve(sibling))
    assert checking.detail == "it leads back to this bot"

    stranger = web.Application()
    SelfCheck(stranger, CallbackSecrets.from_token("u" * 60))
    assert not await checking.run(http, await serve(stranger))
