"""The real bot (discord.py, cogs, tracker, store, listener) in this test's process against the
Discord double, and the steps end-to-end tests share."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.app import App
from bot.config import load_settings
from bot.grid import parse_upscale_custom_id, upscale_custom_id
from bot.jobs.types import PollPolicy
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import DiscordDouble, StoredMessage

TOKEN = "fake-discord-token-for-the-double"
SUCCESS, SECONDARY = 3, 2
# Both rows under every grid the bot posts, in Discord's order.
GRID_LABELS = ["U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4"]
FAST_POLL = PollPolicy(first_with_callback=0.5, interval=0.05, steady_for=1.0, max_interval=0.2)


class Harness:
    """Starts bot processes (one at a time) sharing one database and one sandbox.

    By default the bot serves the sandbox itself (MJ_API_BASE_URL=sandbox), which calls back to
    the bot's own listener. A sandbox mounted in one process' listener cannot outlive it, so
    restart tests use ``standalone()``: the sandbox served on its own, as a remote API would be,
    and no PUBLIC_URL, so those bots complete jobs by polling.
    """

    def __init__(self, double: DiscordDouble, tmp_path: Path) -> None:
        self.double = double
        self.env = {
            "DISCORD_TOKEN": TOKEN,
            "MJ_API_BASE_URL": "sandbox",
            "HOST": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path}/bot.sqlite3",
            "DISCORD_GUILD_ID": str(double.guild_id),
        }
        # Tasks finish as soon as they are created; a test that needs one running sets None.
        self.sandbox = SandboxAPI(task_seconds=0, image_size=16)
        # The listener's port (0: any free one); a test that sets PUBLIC_URL fixes it.
        self.port = 0
        # More App keyword arguments for the bots started from now on.
        self.bot_options: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None

    async def standalone(self) -> None:
        self._runner = web.AppRunner(self.sandbox.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.env["MJ_API_BASE_URL"] = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self.env["MJ_API_KEY"] = "sandbox-key"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[App]:
        settings = replace(load_settings(self.env), port=self.port)
        sandbox = self.sandbox if settings.sandbox else None
        app = App(
            settings,
            sandbox=sandbox,
            poll=FAST_POLL,
            guild_ready_timeout=0.05,
            **self.bot_options,
        )
        task = asyncio.create_task(app.start(TOKEN))
        ready = asyncio.create_task(app.bot.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if task.done():
                task.result()
            raise TimeoutError("the bot did not become ready")
        try:
            yield app
        finally:
            await app.close()
            await asyncio.wait_for(task, timeout=10)


async def submitted(double: DiscordDouble, grid: StoredMessage, number: int) -> None:
    """Until the API has taken the upscale: the grid's button turns green then."""
    await double.wait_for(lambda: grid.button(label=f"U{number}").style == SUCCESS or None)


def grid_task(grid: StoredMessage) -> str:
    parsed = parse_upscale_custom_id(grid.buttons()[0].custom_id or "")
    assert parsed is not None
    return parsed[0]


async def imagine(double: DiscordDouble, user: int, prompt: str) -> StoredMessage:
    handle = await double.slash("imagine", {"prompt": prompt}, user)
    ack = await handle.wait_ack()
    assert ack.type == 4  # the visible status message is the answer itself
    status = handle.original
    assert status is not None and "Generating" in status.content and not status.ephemeral
    grid = await double.wait_for_message(
        lambda m: len(m.attachments) == 4 and prompt in m.content and m.kind == "channel"
    )
    await double.wait_for(lambda: status.deleted or None)
    return grid


async def click(double: DiscordDouble, grid: StoredMessage, number: int, user: int):
    handle = await double.click(grid.id, upscale_custom_id(grid_task(grid), number), user)
    ack = await handle.wait_ack()
    assert ack.type == 6 and ack.accepted
    return handle


async def result_for(double: DiscordDouble, number: int, user: int) -> StoredMessage:
    return await double.wait_for_message(
        lambda m: f"Image #{number}" in m.content and f"<@{user}>" in m.content and m.attachments
    )


# The routes by which the bot sends or edits a message: channel posts and edits, interaction
# callbacks, and the interaction webhook's follow-ups and edits.
_MESSAGE_ROUTES = [
    ("POST", re.compile(r"/channels/[0-9]+/messages")),
    ("PATCH", re.compile(r"/channels/[0-9]+/messages/[0-9]+")),
    ("POST", re.compile(r"/interactions/[0-9]+/[^/]+/callback")),
    ("POST", re.compile(r"/webhooks/[0-9]+/[^/]+")),
    ("PATCH", re.compile(r"/webhooks/[0-9]+/[^/]+/messages/[^/]+")),
]
# Callbacks that carry a message: 4 answers with one, 7 edits the clicked one. A defer (5, 6)
# has no text, and the follow-up that fills it in is checked on its own.
_MESSAGE_CALLBACKS = (4, 7)


def message_payloads(double: DiscordDouble) -> list[tuple[str, dict[str, Any]]]:
    """Every message the bot sent or edited, as ("METHOD path", JSON payload)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for record in double.requests:
        if not any(m == record.method and p.fullmatch(record.path) for m, p in _MESSAGE_ROUTES):
            continue
        body = record.body if isinstance(record.body, dict) else {}
        if record.path.endswith("/callback"):
            if body.get("type") not in _MESSAGE_CALLBACKS:
                continue
            body = body.get("data") or {}
        found.append((f"{record.method} {record.path}", body))
    return found


def loose_mentions(payloads: list[tuple[str, dict[str, Any]]], requester: int) -> list[str]:
    """The payloads that could ping anyone but ``requester``: no allowed_mentions at all
    (Discord then pings every mention in the content), a ``parse`` of anything, a role, or
    another user."""
    loose = []
    for where, body in payloads:
        allowed = body.get("allowed_mentions")
        if allowed is None:
            loose.append(f"{where}: no allowed_mentions")
        elif (
            allowed.get("parse")
            or allowed.get("roles")
            or not {int(u) for u in allowed.get("users") or []} <= {requester}
        ):
            loose.append(f"{where}: {allowed}")
    return loose


def status_lines(double: DiscordDouble) -> list[str]:
    """Visible "⏳ …" status messages still standing in the channel."""
    return [m.content for m in double.messages(ephemeral=False) if m.content.startswith("⏳")]
