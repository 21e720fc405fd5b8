"""The least a discord.py bot can do for one upscale: the process bench.floor measures.

Run as ``python -m bench.floorbot`` by bench.floor, configured by the ``FLOOR_*`` environment
variables below. A ``discord.Client`` with the real bot's intents (guilds only), pointed at the
Discord double as tests/fakes/bot_process.py points the real bot, plus an aiohttp listener for
the API's callback. No store, no job logic, no logging: on a click of U<n> it makes the requests
the real bot makes for an upscale, in the same order and with the same discord.py calls
(bot/delivery/publisher.py, bot/jobs/lifecycle/), keeping what it needs in a dict until the
callback:

- the click (a DynamicItem, as cogs/grid_buttons.py): defer (callback type 6), post the status
  line, POST generateUpscale with a callBackUrl, then, not awaited, the grid's buttons edited
  (U<n> green);
- the callback: answered 200, then GET record-info, GET the image, the result posted with it
  attached and its buttons, the status line deleted, the grid's buttons edited again.

A failure is printed to stderr (bench.floor shows it); nothing else is.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import json
import os
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

DISCORD_API_VAR = "FLOOR_DISCORD_API"
GATEWAY_VAR = "FLOOR_DISCORD_GATEWAY"
TOKEN_VAR = "FLOOR_DISCORD_TOKEN"
MJ_API_VAR = "FLOOR_MJ_API"
MJ_KEY_VAR = "FLOOR_MJ_KEY"
PORT_VAR = "FLOOR_PORT"
# The real bot's callback route (bot/jobs/types.py) and its cap on a callback's body.
CALLBACK_PATH = "/callbacks/midjourney/"
MAX_CALLBACK_BYTES = 64 * 1024
PR_SET_PDEATHSIG = 1
NOBODY = discord.AllowedMentions.none()


class Buttons(discord.ui.View):
    """Buttons as the real bot's ResultButtons (bot/grid.py): (label, custom_id, green, row);
    never stored by discord.py for dispatch, as the real ones are not."""

    def __init__(self, buttons: list[tuple[str, str, bool, int]]) -> None:
        super().__init__(timeout=None)
        for label, custom_id, green, row in buttons:
            style = discord.ButtonStyle.success if green else discord.ButtonStyle.secondary
            self.add_item(discord.ui.Button(label=label, custom_id=custom_id, style=style, row=row))

    def is_dispatchable(self) -> bool:
        return False


def grid_buttons(task_id: str, green: int) -> Buttons:
    """A grid's two rows, U<green> green: U1–U4 🔄, V1–V4."""
    return Buttons(
        [(f"U{n}", f"mju:{task_id}:{n}", n == green, 0) for n in range(1, 5)]
        + [("🔄", f"mjr:{task_id}", False, 0)]
        + [(f"V{n}", f"mjv:{task_id}:{n}", False, 1) for n in range(1, 5)]
    )


def image_buttons(task_id: str) -> Buttons:
    """What goes under an upscaled image."""
    return Buttons(
        [
            ("🎬 Animate (low motion)", f"mjal:{task_id}", False, 0),
            ("🎬 Animate (high motion)", f"mjah:{task_id}", False, 0),
        ]
    )


@dataclass
class Job:
    id: str
    parent_task_id: str
    number: int
    requester_id: int
    channel: discord.PartialMessageable
    grid_message_id: int
    prompt: str
    status_message_id: int | None = None
    task_id: str | None = None


class UpscaleButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"mju:(?P<task>[A-Za-z0-9_-]{6,64}):(?P<n>[1-4])",
):
    def __init__(self, task_id: str, number: int) -> None:
        super().__init__(discord.ui.Button(label=f"U{number}", custom_id=f"mju:{task_id}:{number}"))
        self.task_id = task_id
        self.number = number

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
        /,
    ) -> Self:
        return cls(match["task"], int(match["n"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client = interaction.client
        assert isinstance(client, FloorBot)
        try:
            await client.clicked(interaction, self.task_id, self.number)
        except Exception:
            traceback.print_exc()


class FloorBot(discord.Client):
    def __init__(self, mj_api: str, mj_key: str, port: int) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(intents=intents, allowed_mentions=NOBODY, guild_ready_timeout=2.0)
        self.mj_api = mj_api.rstrip("/")
        self.mj_headers = {"Authorization": f"Bearer {mj_key}", "Content-Type": "application/json"}
        self.port = port
        self.jobs: dict[str, Job] = {}  # by callback secret
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.running: set[asyncio.Task[None]] = set()

    async def setup_hook(self) -> None:
        self.session = aiohttp.ClientSession()
        app = web.Application(client_max_size=MAX_CALLBACK_BYTES)
        app.router.add_post(CALLBACK_PATH + "{secret}", self.on_callback)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.add_dynamic_items(UpscaleButton)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()
        await super().close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            traceback.print_exception(error)

    async def api(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        assert self.session is not None
        async with self.session.request(
            method, self.mj_api + path, json=body, params=params, headers=self.mj_headers
        ) as response:
            raw = await response.read()
        answer = json.loads(raw)
        if answer.get("code") != 200:
            raise RuntimeError(f"{path} answered {answer}")
        return answer["data"]

    async def clicked(
        self, interaction: discord.Interaction[Any], parent: str, number: int
    ) -> None:
        await interaction.response.defer()
        assert interaction.channel_id is not None and interaction.message is not None
        requester = interaction.user.id
        job = Job(
            id=secrets.token_hex(12),
            parent_task_id=parent,
            number=number,
            requester_id=requester,
            channel=self.get_partial_messageable(
                interaction.channel_id, guild_id=interaction.guild_id
            ),
            grid_message_id=interaction.message.id,
            prompt=interaction.message.content.split(" - ", 1)[0],
        )
        secret = secrets.token_urlsafe(24)
        self.jobs[secret] = job
        status = await job.channel.send(
            f"⏳ Upscaling image #{number} for <@{requester}> (started <t:{int(time.time())}:R>)",
            allowed_mentions=NOBODY,
            nonce=f"s{job.id}",
        )
        job.status_message_id = status.id
        answer = await self.api(
            "POST",
            "/api/v1/mj/generateUpscale",
            body={
                "taskId": parent,
                "imageIndex": number - 1,
                "callBackUrl": f"http://127.0.0.1:{self.port}{CALLBACK_PATH}{secret}",
            },
        )
        job.task_id = answer["taskId"]
        self.spawn(self.mark_grid(job))

    async def mark_grid(self, job: Job) -> None:
        message = job.channel.get_partial_message(job.grid_message_id)
        await message.edit(
            view=grid_buttons(job.parent_task_id, job.number), allowed_mentions=NOBODY
        )

    async def on_callback(self, request: web.Request) -> web.Response:
        raw = await request.read()
        json.loads(raw)
        job = self.jobs.pop(request.match_info["secret"], None)
        if job is None:
            return web.json_response({"error": "unknown callback"}, status=404)
        self.spawn(self.deliver(job))
        return web.json_response({"ok": True})

    async def deliver(self, job: Job) -> None:
        assert self.session is not None and job.task_id is not None
        info = await self.api("GET", "/api/v1/mj/record-info", params={"taskId": job.task_id})
        url = info["resultInfoJson"]["resultUrls"][0]["resultUrl"]
        async with self.session.get(url) as response:
            data = await response.read()
        ext = "jpg" if data.startswith(b"\xff\xd8\xff") else "png"
        await job.channel.send(
            f"{job.prompt} - Image #{job.number} <@{job.requester_id}>",
            files=[discord.File(io.BytesIO(data), filename=f"{job.task_id}_0.{ext}")],
            view=image_buttons(job.task_id),
            nonce=job.id,
            allowed_mentions=discord.AllowedMentions(
                everyone=False,
                users=[discord.Object(job.requester_id)],
                roles=False,
                replied_user=False,
            ),
        )
        if job.status_message_id is not None:
            await job.channel.get_partial_message(job.status_message_id).delete()
        await self.mark_grid(job)


async def serve() -> None:
    client = FloorBot(os.environ[MJ_API_VAR], os.environ[MJ_KEY_VAR], int(os.environ[PORT_VAR]))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    running = asyncio.create_task(client.start(os.environ[TOKEN_VAR]))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    await client.close()
    stopping.cancel()
    if running.done():
        running.result()


def main() -> None:
    # Killed with the bench process, however that ends.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        sys.exit("the bench process is gone")
    discord.http.Route.BASE = os.environ[DISCORD_API_VAR]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ[GATEWAY_VAR])
    asyncio.run(serve())


if __name__ == "__main__":
    main()
