"""Fixtures shared across the test packages: loopback servers, the sandbox, the Discord double."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.jobs.types import PollPolicy
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import DiscordDouble, point_discord_at
from tests.harness import Harness

# Polling fast enough that tests wait milliseconds, not the production 5 s.
FAST_POLL = PollPolicy(first_with_callback=0.2, interval=0.05, steady_for=1.0, max_interval=0.2)


@pytest.fixture
def handed_to_threads(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., object]]:
    """Every function given to ``asyncio.to_thread`` meanwhile (they still run there)."""
    handed: list[Callable[..., object]] = []
    real_to_thread = asyncio.to_thread

    async def spy(func: Callable[..., object], /, *args: object) -> object:
        handed.append(func)
        return await real_to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    return handed


@pytest.fixture
async def double() -> AsyncIterator[DiscordDouble]:
    """A Discord double that every discord.py client created in the test talks to."""
    async with DiscordDouble() as fake:
        with point_discord_at(fake):
            yield fake
    assert fake.internal_errors == []


SANDBOX_KEY = "test-key"

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve an aiohttp app on 127.0.0.1, a free port; returns its base URL (no trailing slash)."""
    runners: list[web.AppRunner] = []

    async def serve_app(app: web.Application) -> str:
        # handler_cancellation: a test may abandon a request a handler holds on purpose.
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield serve_app
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class RunningSandbox:
    api: SandboxAPI
    base_url: str
    key: str = SANDBOX_KEY


StartSandbox = Callable[..., Awaitable[RunningSandbox]]


@pytest.fixture
async def start_sandbox(serve: Serve) -> AsyncIterator[StartSandbox]:
    """Start a served sandbox; tasks run until ``complete()``/``fail()`` unless told otherwise."""
    started: list[SandboxAPI] = []

    async def start(**options: Any) -> RunningSandbox:
        options.setdefault("task_seconds", None)
        options.setdefault("api_key", SANDBOX_KEY)
        options.setdefault("image_size", 16)
        api = SandboxAPI(**options)
        started.append(api)
        return RunningSandbox(api, await serve(api.app))

    yield start
    for api in started:
        await api.close()


@pytest.fixture
async def sandbox(start_sandbox: StartSandbox) -> RunningSandbox:
    """A running sandbox with the default options."""
    return await start_sandbox()


@pytest.fixture
async def harness(double: DiscordDouble, tmp_path: Path) -> AsyncIterator[Harness]:
    """The real bot in this process, started with ``harness.running()``."""
    rig = Harness(double, tmp_path)
    yield rig
    await rig.close()
