"""Three real bot processes (what ``python -m bot`` runs) on one PostgreSQL database, against the
Discord double with two guilds on two shards: two processes run a shard each, the third stands by.

Callbacks reach the processes through a round-robin proxy, as through a load balancer in front
of them all: most land on a process that is not the job's. One process holding a shard is
SIGKILLed while its upscales run; the standby takes its shard over, the others take its jobs
over, every job is posted once, and no 10 s window at the API holds more than the pace.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.grid import parse_upscale_custom_id, upscale_custom_id
from bot.midjourney.sandbox import SandboxAPI
from tests.conftest import StartSandbox
from tests.fakes.bot_process import BotProcess
from tests.fakes.discord_double import DiscordDouble, StoredMessage
from tests.jobs.conftest import POSTGRES_URL, postgres_admin

TOKEN = "fake-discord-token-for-the-double"
RATE = 3
PER = 10.0
PAID = ("generate", "generateUpscale", "generateVary")
# The standby takes a shard within 30 s of its process's death (issue 12); the jobs of the dead
# process are taken over once their 20 s leases run out, then confirmed and posted.
TAKEOVER = 45.0


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
    sandbox: SandboxAPI
    proxy: Proxy
    bots: list[BotProcess]
    # The channel of a guild on each shard.
    channels: dict[int, int]

    def shard_owner(self, shard: int) -> BotProcess:
        """The process whose latest start took ``shard``."""
        owners = [
            bot
            for bot in self.bots
            if bot.running and any(f"took shard {shard} of 2" in line for line in bot.current_log())
        ]
        assert len(owners) == 1, f"shard {shard} owners: {owners}"
        return owners[0]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database of its own on the local PostgreSQL (the processes make the schema)."""
    admin = await postgres_admin()
    name = f"mjbot_procs_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield re.sub(r"/[^/]*$", f"/{name}", POSTGRES_URL)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def cluster(
    double: DiscordDouble, start_sandbox: StartSandbox, database: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    double.shard_count = 2
    first = double.shard_of(double.guild_id)
    _, other_channel = double.add_guild("Second Guild", shard=1 - first)
    channels = {first: double.channel_id, 1 - first: other_channel}
    served = await start_sandbox(task_seconds=None)
    ports = [free_port() for _ in range(3)]
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
            workdir = tmp_path / f"process-{number}"
            workdir.mkdir()
            env = {
                "DISCORD_TOKEN": TOKEN,
                "MJ_API_BASE_URL": served.base_url,
                "MJ_API_KEY": served.key,
                "DATABASE_URL": database,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "PUBLIC_URL": f"http://127.0.0.1:{proxy_port}",
                "SHARDS_PER_PROCESS": "1",
                "MJ_SUBMIT_RATE": str(RATE),
            }
            bots.append(BotProcess(double, env, workdir))
        try:
            yield Cluster(double, served.api, proxy, bots, channels)
        finally:
            for bot in bots:
                await bot.stop()
            await runner.cleanup()
            for number, bot in enumerate(bots):
                print(f"===== process {number} =====\n{bot.stderr()}")


async def start_all(cluster: Cluster) -> None:
    """The first two take a shard each (one after the other, so which is known), the third
    stands by."""
    await cluster.bots[0].start(timeout=30)
    await cluster.bots[1].start(timeout=30)
    await cluster.bots[2].start(timeout=30, standby=True)


async def imagine(
    cluster: Cluster, shard: int, user: int, prompt: str
) -> tuple[StoredMessage, str]:
    """/imagine in the guild on ``shard``, its generation finished at the API: the grid."""
    double, sandbox = cluster.double, cluster.sandbox
    channel = cluster.channels[shard]
    before = {t.task_id for t in sandbox.tasks()}
    handle = await double.slash("imagine", {"prompt": prompt}, user, channel_id=channel)
    await handle.wait_ack(timeout=10)
    task = await new_task(sandbox, before)
    sandbox.complete(task)
    grid = await double.wait_for_message(
        lambda m: len(m.attachments) == 4 and prompt in m.content and m.channel_id == channel,
        timeout=30,
    )
    parsed = parse_upscale_custom_id(grid.buttons()[0].custom_id or "")
    assert parsed is not None and parsed[0] == task
    return grid, task


async def new_task(sandbox: SandboxAPI, before: set[str], timeout: float = 30) -> str:
    """The task the API is asked for next (the pace may hold it back a few seconds)."""
    async with asyncio.timeout(timeout):
        while True:
            fresh = [t.task_id for t in sandbox.tasks() if t.task_id not in before]
            if fresh:
                assert len(fresh) == 1, fresh
                return fresh[0]
            await asyncio.sleep(0.05)


async def click(cluster: Cluster, grid: StoredMessage, task: str, number: int, user: int) -> str:
    """U``number`` clicked and acknowledged; the upscale task it started at the API."""
    before = {t.task_id for t in cluster.sandbox.tasks()}
    handle = await cluster.double.click(grid.id, upscale_custom_id(task, number), user)
    ack = await handle.wait_ack(timeout=10)
    assert ack.accepted
    return await new_task(cluster.sandbox, before)


def results(double: DiscordDouble, grid: StoredMessage, number: int) -> list[StoredMessage]:
    return [
        m
        for m in double.messages(ephemeral=False)
        if m.channel_id == grid.channel_id
        and f"- Image #{number} <@" in m.content
        and m.attachments
        and m.id != grid.id
    ]


async def posted_once(cluster: Cluster, grid: StoredMessage, number: int, timeout: float) -> None:
    await cluster.double.wait_for(lambda: results(cluster.double, grid, number) or None, timeout)


def crowded_windows(sandbox: SandboxAPI) -> list[float]:
    """Arrival times of paid calls that open a window of PER seconds holding more than RATE."""
    arrivals = sorted(c.at for c in sandbox.calls if c.endpoint in PAID)
    return [
        arrivals[i] for i in range(len(arrivals) - RATE) if arrivals[i + RATE] - arrivals[i] < PER
    ]


async def test_a_standby_takes_over_the_shard_and_the_jobs_of_a_killed_process(
    cluster: Cluster,
) -> None:
    double, sandbox = cluster.double, cluster.sandbox
    await start_all(cluster)
    assert sorted(s for s in double.identified_shards() if s is not None) == [0, 1]
    user = double.add_user("clicker")
    grids = {shard: await imagine(cluster, shard, user, f"lighthouse {shard}") for shard in (0, 1)}

    # A click on each shard, finished through the proxy: posted by whichever holds the job.
    for grid, task in grids.values():
        sandbox.complete(await click(cluster, grid, task, 1, user))
    for grid, _ in grids.values():
        await posted_once(cluster, grid, 1, timeout=30)

    # Upscales running on both shards; then the process running shard 0 dies.
    running = [await click(cluster, grid, task, 2, user) for grid, task in grids.values()]
    victim = cluster.shard_owner(0)
    standby = cluster.bots[2]
    await victim.killed()
    for task in running:
        sandbox.complete(task)
    await double.wait_for(
        lambda: double.identified_shards().count(0) == 2 or None, timeout=TAKEOVER
    )
    assert cluster.shard_owner(0) is standby
    for grid, _ in grids.values():
        await posted_once(cluster, grid, 2, timeout=TAKEOVER)

    # Shard 0 answers again, now from the standby.
    grid, task = grids[0]
    sandbox.complete(await click(cluster, grid, task, 3, user))
    await posted_once(cluster, grid, 3, timeout=30)

    for grid, _ in grids.values():
        for number in (1, 2):
            assert len(results(double, grid, number)) == 1
    assert len(results(double, grids[0][0], 3)) == 1
    assert double.shard_overlaps == []
    assert crowded_windows(sandbox) == []
    # Round robin: callbacks reached every process that was up, not only the jobs' own.
    callbacks = [port for path, port in cluster.proxy.forwarded if path.startswith("/callbacks/")]
    assert len(set(callbacks)) == 3
    # Nothing was asked of the API twice: two generations, five upscales.
    assert sum(c.endpoint == "generateUpscale" for c in sandbox.calls) == 5
    for bot in cluster.bots:
        if bot is not victim:
            assert "Traceback" not in bot.stderr()


async def test_all_three_restarted_resume_what_was_running(cluster: Cluster) -> None:
    double, sandbox = cluster.double, cluster.sandbox
    await start_all(cluster)
    user = double.add_user("clicker")
    grids = {shard: await imagine(cluster, shard, user, f"harbour {shard}") for shard in (0, 1)}
    running = [await click(cluster, grid, task, 4, user) for grid, task in grids.values()]

    for bot in cluster.bots:
        bot.terminate()
    for bot in cluster.bots:
        code, _ = await bot.wait_exit(20)
        assert code == 0
    await start_all(cluster)
    for task in running:
        sandbox.complete(task)
    for grid, _ in grids.values():
        await posted_once(cluster, grid, 4, timeout=30)
    assert all(len(results(double, grid, 4)) == 1 for grid, _ in grids.values())
    # The same shards as before, by the processes that took them on the way back up.
    assert double.shard_overlaps == []
    assert sum(c.endpoint == "generateUpscale" for c in sandbox.calls) == 2
    for bot in cluster.bots:
        assert "Traceback" not in bot.stderr()
