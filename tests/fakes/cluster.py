"""Several real bot processes (what ``python -m bot`` runs) on one PostgreSQL database, against
the Discord double with a guild on each of two shards, behind a round-robin proxy for the
callback URL, as behind a load balancer. Used by tests/test_several_processes.py and
bench/sustained.py."""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from tests.fakes.bot_process import BotProcess
from tests.fakes.discord_double import DiscordDouble

TOKEN = "fake-discord-token-for-the-double"
SHARDS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proxy:
    """What a load balancer does for the callback URL: each request to the next live process."""

    ports: list[int]
    session: aiohttp.ClientSession
    forwarded: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._turns = itertools.cycle(range(len(self.ports)))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        for _ in self.ports:
            port = self.ports[next(self._turns)]
            url = f"http://127.0.0.1:{port}{request.path_qs}"
            try:
                async with self.session.request(
                    request.method, url, data=body, headers={"Content-Type": request.content_type}
                ) as answer:
                    payload = await answer.read()
            except aiohttp.ClientConnectionError:
                continue
            self.forwarded.append((request.path, port))
            return web.Response(status=answer.status, body=payload)
        return web.Response(status=502)


@dataclass
class Cluster:
    double: DiscordDouble
    proxy: Proxy
    bots: list[BotProcess]
    # The channel of a guild on each shard.
    channels: dict[int, int]

    def shard_owner(self, shard: int) -> BotProcess:
        """The running process whose latest start took ``shard``."""
        owners = [
            bot
            for bot in self.bots
            if bot.running
            and any(f"took shard {shard} of {SHARDS}" in line for line in bot.current_log())
        ]
        assert len(owners) == 1, f"shard {shard} owners: {owners}"
        return owners[0]

    async def start_all(self, timeout: float = 30) -> None:
        """One after the other, so that which runs what is known: the first processes take a
        shard each, the rest stand by."""
        for number, bot in enumerate(self.bots):
            await bot.start(timeout=timeout, standby=number >= SHARDS)


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """A new database on the PostgreSQL of ``admin_url`` (the processes make the schema),
    dropped afterwards; yields its URL."""
    admin = await asyncpg.connect(admin_url, timeout=2)
    name = f"mjbot_procs_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield re.sub(r"/[^/]*$", f"/{name}", admin_url)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def running_cluster(
    double: DiscordDouble,
    *,
    api_base: str,
    api_key: str,
    database_url: str,
    workdir: Path,
    processes: int = 3,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """``processes`` bot processes, not started yet, each running at most one shard."""
    double.shard_count = SHARDS
    first = double.shard_of(double.guild_id)
    other_guild, other_channel = double.add_guild("Second Guild", shard=1 - first)
    channels = {first: double.channel_id, 1 - first: other_channel}
    ports = [free_port() for _ in range(processes)]
    async with aiohttp.ClientSession() as session:
        proxy = Proxy(ports, session)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        proxy_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
        bots = []
        for number, port in enumerate(ports):
            home = workdir / f"process-{number}"
            home.mkdir()
            settings = {
                "DISCORD_TOKEN": TOKEN,
                "MJ_API_BASE_URL": api_base,
                "MJ_API_KEY": api_key,
                "DATABASE_URL": database_url,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "PUBLIC_URL": f"http://127.0.0.1:{proxy_port}",
                "SHARDS_PER_PROCESS": "1",
                "ALLOWED_GUILD_IDS": f"{double.guild_id},{other_guild}",
                **(env or {}),
            }
            bots.append(BotProcess(double, settings, home))
        try:
            yield Cluster(double, proxy, bots, channels)
        finally:
            for bot in bots:
                await bot.stop()
            await runner.cleanup()
