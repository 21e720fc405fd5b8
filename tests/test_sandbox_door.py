"""The sandbox the bot serves on its own public listener (MJ_API_BASE_URL=sandbox) answers the
bot's own client only, and calls back to the bot's own listener only: it is no way into the
owner's network. The real bot against the Discord double, forgeries over real loopback HTTP."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.app import App
from bot.midjourney.sandbox import SandboxAPI
from tests.conftest import Serve
from tests.harness import Harness, imagine

GENERATE = "/sandbox/api/v1/mj/generate"
NOT_HERE = "callBackUrl must point at this bot's listener"


@dataclass
class Catcher:
    """A loopback server that records every request, whatever its method and path."""

    received: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(f"{request.method} {request.path_qs}")
        return web.Response()


async def start_catcher(serve: Serve) -> tuple[Catcher, str]:
    catcher = Catcher()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", catcher.handle)
    return catcher, await serve(app)


def served(app: App) -> tuple[SandboxAPI, str]:
    """The bot's sandbox, and the bot listener's loopback base URL."""
    sandbox = app.services.sandbox
    assert sandbox is not None
    return sandbox, f"http://127.0.0.1:{app.services.listen_port}"


async def call(
    http: aiohttp.ClientSession,
    url: str,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, dict[str, Any]]:
    if headers is None:
        headers = {"Authorization": f"Bearer {key}"}
    method = "GET" if body is None else "POST"
    async with http.request(method, url, json=body, headers=headers) as response:
        return response.status, await response.json()


def generation(callback_url: str | None = None) -> dict[str, Any]:
    body = {"taskType": "mj_txt2img", "prompt": "a forged fox", "speed": "fast"}
    return body if callback_url is None else {**body, "callBackUrl": callback_url}


async def test_the_bots_sandbox_refuses_a_request_without_the_bots_own_key(
    harness: Harness, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    double = harness.double
    alice = double.add_user("alice")
    async with harness.running() as app:
        sandbox, listener = served(app)
        parent = sandbox.add_generation()
        credits = sandbox.credits
        forged = [
            {},
            {"Authorization": "Bearer wrong"},
            # The fixed key the bot used to use in sandbox mode.
            {"Authorization": "Bearer sandbox"},
            {"Authorization": "Bearer "},
            {"Authorization": "Bearer cl\u00e9"},
        ]
        for headers in forged:
            for path, body in (
                (GENERATE, generation()),
                ("/sandbox/api/v1/mj/generateUpscale", {"taskId": parent, "imageIndex": 0}),
                ("/sandbox/api/v1/mj/generateVary", {"taskId": parent, "imageIndex": 0}),
                (f"/sandbox/api/v1/mj/record-info?taskId={parent}", None),
                ("/sandbox/api/v1/chat/credit", None),
            ):
                status, envelope = await call(http, listener + path, headers=headers, body=body)
                assert (status, envelope["code"], envelope["data"]) == (401, 401, None)
        assert [t.task_id for t in sandbox.tasks()] == [parent]
        assert sandbox.credits == credits
        assert sandbox.count("generate") == 0

        # The bot's own client has the key: its jobs go through.
        await imagine(double, alice, "a real fox")
        key = sandbox.api_key
        assert key is not None and len(key) >= 32
    # Made at start, and never written anywhere.
    assert key not in caplog.text


async def test_in_sandbox_mode_mj_api_key_is_the_key_of_the_bots_sandbox(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    harness.env["MJ_API_KEY"] = "the-operators-own-sandbox-key"
    double = harness.double
    alice = double.add_user("alice")
    async with harness.running() as app:
        sandbox, listener = served(app)
        credit = listener + "/sandbox/api/v1/chat/credit"
        assert (await call(http, credit, key="the-operators-own-sandbox-key"))[0] == 200
        assert (await call(http, credit, key="another-key"))[0] == 401
        await imagine(double, alice, "a fox")
        assert sandbox.api_key == "the-operators-own-sandbox-key"


async def test_the_bots_sandbox_refuses_a_callback_url_outside_the_bots_listener(
    harness: Harness, http: aiohttp.ClientSession, serve: Serve
) -> None:
    catcher, elsewhere = await start_catcher(serve)
    double = harness.double
    alice = double.add_user("alice")
    async with harness.running() as app:
        sandbox, listener = served(app)
        key = sandbox.api_key
        parent = sandbox.add_generation()
        credits = sandbox.credits
        # Even with the key (an operator's MJ_API_KEY can leak), nothing is sent there.
        for url in (
            f"{elsewhere}/callbacks/midjourney/AAAAAAAAAAAAAAAAAAAAAAAA",
            f"{elsewhere}/admin/reboot",
            # The bot's own listener, but not its callback route.
            f"{listener}/sandbox/api/v1/mj/generate",
        ):
            for path, body in (
                (GENERATE, generation(url)),
                (
                    "/sandbox/api/v1/mj/generateUpscale",
                    {"taskId": parent, "imageIndex": 0, "callBackUrl": url},
                ),
                (
                    "/sandbox/api/v1/mj/generateVary",
                    {"taskId": parent, "imageIndex": 0, "callBackUrl": url},
                ),
            ):
                status, envelope = await call(http, listener + path, key=key, body=body)
                assert (status, envelope["code"], envelope["msg"]) == (422, 422, NOT_HERE)
        assert [t.task_id for t in sandbox.tasks()] == [parent]
        assert sandbox.credits == credits

        # The bot's own jobs are called back, to its own listener: by the time that one is
        # delivered, a callback sent elsewhere would have arrived too.
        await imagine(double, alice, "a real fox")
        assert sandbox.callback_attempts
        assert all(
            a.url.startswith(f"{listener}/callbacks/midjourney/") and a.status == 200
            for a in sandbox.callback_attempts
        )
    assert catcher.received == []


async def test_with_public_url_the_bots_sandbox_calls_back_under_it_only(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    # A public URL that leads nowhere: only which callBackUrls are taken matters here.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        public = f"http://127.0.0.1:{probe.getsockname()[1]}"
    harness.env["PUBLIC_URL"] = public
    async with harness.running() as app:
        sandbox, listener = served(app)
        key = sandbox.api_key
        own_route = "/callbacks/midjourney/AAAAAAAAAAAAAAAAAAAAAAAA"
        status, envelope = await call(
            http, listener + GENERATE, key=key, body=generation(listener + own_route)
        )
        assert (status, envelope["code"], envelope["msg"]) == (422, 422, NOT_HERE)
        status, envelope = await call(
            http, listener + GENERATE, key=key, body=generation(public + own_route)
        )
        assert (status, envelope["code"]) == (200, 200)
        assert [t.callback_url for t in sandbox.tasks()] == [public + own_route]
