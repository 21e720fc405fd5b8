"""The floor of a completed upscale's CPU: bench.jobcost's ``jpeg`` upscale phase, with the real
bot replaced by the least a discord.py bot can do for the same traffic (bench/floorbot.py).

Issue 25 asks for at most 20 ms of the bot's CPU per completed upscale of a 2 MiB JPEG. This
says how much of that the network work alone costs in discord.py and aiohttp: if the floor is
near the target, no change to the bot's own code can meet it.

The minimal bot is a ``discord.Client`` (the real bot's intents) and an aiohttp listener, in a
process of its own, against the same Discord double and the same sandbox API (``CostSandbox``
with bench.jobcost's ``jpeg`` set: the upscale is a 2048 px JPEG of about 2 MiB), with the same
probe and counters (bench/costtrace) as bench.jobcost's bot. No store, no job logic, no logging:
per click the requests the real bot makes, in its order (ack, status line, generateUpscale,
grid's buttons edited; on the callback record-info, download, result posted with the image,
status line deleted, grid's buttons edited again).

Measured as bench.jobcost measures: ``--jobs`` grids (posted by this process, each a seeded
generation of the sandbox with the real grid's buttons and four JPEG tiles), U1 clicked on each,
the upscales left running, then completed one at a time ``--pause`` seconds apart; CPU per job is
the bot process's CPU (/proc) from the first click to the last result posted and tidied, less
its idle rate measured before, divided by the jobs (and the system-time part of it, the
kernel's: mostly the socket copies of the image). The requests are counted per job, and the
minimal bot's buttons checked against the real bot's (bot/grid.py), its status lines gone: a
warning says when they are not.

    .venv/bin/python -m bench.floor [--jobs 16] [--pause 0.2]

The process's pid is printed, for a sampling profiler from outside (py-spy record -p PID).
Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import floorbot
from bench.jobcost import (
    TARGET_UPSCALE_CPU_MS,
    CostSandbox,
    Phase,
    image_sets,
    print_counts,
    spread,
)
from bench.rig import (
    API_KEY,
    MiB,
    ProcStat,
    begin,
    counted,
    late_ticks,
    serve,
    settled,
    verdict,
    wait_until,
)
from bot.delivery.texts import grid_text
from bot.grid import GridButtons, ResultButtons, result_buttons, upscale_custom_id
from bot.jobs.kinds import Product
from bot.jobs.kinds.use import ParentUse
from bot.midjourney.sandbox import UPSCALE_TASK_TYPE
from tests.fakes.bot_process import REPO_ROOT
from tests.fakes.cluster import free_port
from tests.fakes.discord_double import DiscordDouble, StoredMessage

TOKEN = "floor-token-for-the-discord-double"
COSTTRACE = Path(__file__).parent / "costtrace"


# ----- the minimal bot's process ----------------------------------------------------------------


@dataclass
class FloorProcess:
    process: asyncio.subprocess.Process
    log: Path
    lag_log: Path
    counts_path: Path

    @property
    def proc(self) -> ProcStat:
        return ProcStat(self.process.pid)

    def system_seconds(self) -> float:
        return self.proc.system_seconds()

    async def counts(self) -> Counter[str]:
        """Requests so far, counted by bench/costtrace (as ``Rig.counts``)."""
        return await counted(self.counts_path, self.process.send_signal)

    def loop_lags(self, since: float, until: float) -> list[float]:
        """How late the loop probe fired (as ``Rig.loop_lags``)."""
        return [tick.late for tick in late_ticks(self.lag_log, since, until)]

    async def settle(self, quiet: float = 0.5, timeout: float = 30) -> None:
        await settled(self.proc, quiet, timeout)


@contextlib.asynccontextmanager
async def floor_bot(double: DiscordDouble, api_port: int, tmp: Path) -> AsyncIterator[FloorProcess]:
    """The minimal bot connected to the double; killed on the way out, whatever happened."""
    lag_log = tmp / "lag.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{COSTTRACE}:{REPO_ROOT}",
        "PYTHONUNBUFFERED": "1",
        "BENCH_LOOP_LAG": str(lag_log),
        "BENCH_COUNTS": str(tmp / "counts.json"),
        floorbot.DISCORD_API_VAR: double.api_base,
        floorbot.GATEWAY_VAR: double.gateway_url,
        floorbot.TOKEN_VAR: TOKEN,
        floorbot.MJ_API_VAR: f"http://127.0.0.1:{api_port}",
        floorbot.MJ_KEY_VAR: API_KEY,
        floorbot.PORT_VAR: str(free_port()),
    }
    log = tmp / "floorbot.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floorbot",
            cwd=tmp,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    bot = FloorProcess(process, log, lag_log, tmp / "counts.json")
    try:
        connected = asyncio.ensure_future(double.wait_until_connected(30))
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait({connected, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if not connected.done() or connected.exception() is not None:
            connected.cancel()
            raise RuntimeError(f"the minimal bot did not connect\n{log.read_text()}")
        yield bot
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if text := log.read_text().strip():
            print(f"the minimal bot's stderr:\n{text[-4000:]}", file=sys.stderr)


# ----- the grids and the phase ------------------------------------------------------------------


async def post_grids(
    double: DiscordDouble, sandbox: CostSandbox, users: list[int], count: int
) -> list[tuple[int, str]]:
    """``count`` grids in the channel as the real bot posts them (four JPEG tiles, both rows of
    buttons), each of a generation seeded in the sandbox: (message id, task id)."""
    tiles = sandbox.sets["jpeg"].tiles
    grids = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {TOKEN}"}) as http:
        for n in range(count):
            prompt = f"floor grid {n}"
            task = sandbox.add_generation(prompt=prompt)
            payload = {
                "content": grid_text(prompt, users[n % len(users)]),
                "components": GridButtons(task).to_components(),
                "attachments": [{"id": i, "filename": f"{task}_{i}.jpg"} for i in range(4)],
                "allowed_mentions": {"parse": []},
            }
            form = aiohttp.FormData()
            form.add_field("payload_json", json.dumps(payload), content_type="application/json")
            for i, tile in enumerate(tiles):
                form.add_field(
                    f"files[{i}]", tile, filename=f"{task}_{i}.jpg", content_type="image/jpeg"
                )
            url = f"{double.api_base}/channels/{double.channel_id}/messages"
            async with http.post(url, data=form) as response:
                response.raise_for_status()
                grids.append((int((await response.json(content_type=None))["id"]), task))
    return grids


def posted(double: DiscordDouble, task_id: str) -> StoredMessage | None:
    """The result message of upscale ``task_id`` (as bench.jobcost's ``posted_message``)."""
    prefix = f"{task_id}_0."
    for message in double.messages(ephemeral=False):
        if message.files and message.files[0].filename.startswith(prefix):
            return message
    return None


def is_posted(double: DiscordDouble, task_id: str) -> bool:
    return posted(double, task_id) is not None


def upscales(sandbox: CostSandbox, before: set[str]) -> list[str]:
    return [
        t.task_id
        for t in sandbox.tasks()
        if t.task_id not in before and t.task_type == UPSCALE_TASK_TYPE
    ]


async def idle_rate(bot: FloorProcess, seconds: float = 4.0) -> tuple[float, float]:
    """The bot's CPU seconds per second with nothing to do (as bench.jobcost's), and the
    system part of them."""
    await bot.settle()
    before, system = bot.proc.cpu_seconds(), bot.system_seconds()
    await asyncio.sleep(seconds)
    return (
        (bot.proc.cpu_seconds() - before) / seconds,
        (bot.system_seconds() - system) / seconds,
    )


async def upscale_phase(
    double: DiscordDouble,
    sandbox: CostSandbox,
    bot: FloorProcess,
    grids: list[tuple[int, str]],
    users: list[int],
    idle: tuple[float, float],
    pause: float,
) -> tuple[Phase, float, list[str]]:
    """U1 of every grid clicked, the upscales left running, then completed one at a time (as
    bench.jobcost's ``run_phase``); with the system part of the CPU per job, in ms."""
    jobs = len(grids)
    before = {t.task_id for t in sandbox.tasks()}
    counted = await bot.counts()
    started, cpu, system = time.perf_counter(), bot.proc.cpu_seconds(), bot.system_seconds()
    handles = await asyncio.gather(
        *(
            double.click(message, upscale_custom_id(task, 1), users[n % len(users)])
            for n, (message, task) in enumerate(grids)
        )
    )
    for handle in handles:
        await handle.wait_ack(timeout=30)
    await wait_until(lambda: len(upscales(sandbox, before)) >= jobs, 60, f"{jobs} upscale tasks")
    await bot.settle(quiet=0.3)
    tasks = upscales(sandbox, before)
    seconds = []
    for task_id in tasks:
        sandbox.complete(task_id)
        await wait_until(functools.partial(is_posted, double, task_id), 60, task_id)
        message = posted(double, task_id)
        assert message is not None
        seconds.append(message.created_at - sandbox.callback_sent[task_id])
        await asyncio.sleep(pause)
    await bot.settle(quiet=0.3)
    ended = time.perf_counter()
    used = bot.proc.cpu_seconds() - cpu - idle[0] * (ended - started)
    system = bot.system_seconds() - system - idle[1] * (ended - started)
    stall = max(bot.loop_lags(started, ended), default=0.0)
    phase = Phase("jpeg", "upscale", jobs, used / jobs * 1000, seconds, stall, 0)
    phase.counts = await bot.counts() - counted
    return phase, system / jobs * 1000, tasks


def same_buttons(double: DiscordDouble, grids: list[tuple[int, str]], tasks: list[str]) -> bool:
    """Whether the minimal bot's buttons are the real bot's: the grid's after its edits (U1
    green), the result's; and whether every status line is gone."""
    message, parent = grids[0]
    use = ParentUse(frozenset({("upscale", 0)}))
    grid = ResultButtons(parent, Product.GRID, use).to_components()
    result = posted(double, tasks[0])
    under = result_buttons(tasks[0], Product.IMAGE)
    statuses = [m for m in double.messages(ephemeral=False) if m.content.startswith("⏳")]
    return (
        double.message(message).components == grid
        and result is not None
        and under is not None
        and result.components == under.to_components()
        and not statuses
    )


async def run(jobs: int, pause: float) -> None:
    started = time.perf_counter()
    sets = image_sets(["jpeg"])
    print(f"    images drawn in {time.perf_counter() - started:.1f} s: {sets['jpeg'].describe()}")
    sandbox = CostSandbox(sets, api_key=API_KEY, task_seconds=None, image_size=64, credits=10**9)
    runner, api_port = await serve(sandbox.app)
    try:
        async with DiscordDouble() as double:
            users = [double.add_user(f"bencher{n}") for n in range(max(20, jobs))]
            with tempfile.TemporaryDirectory(prefix="mj-floor-") as tmp:
                async with floor_bot(double, api_port, Path(tmp)) as bot:
                    print(f"    minimal bot process pid={bot.process.pid}", flush=True)
                    grids = await post_grids(double, sandbox, users, jobs)
                    idle = await idle_rate(bot)
                    print(
                        f"    bot idle: {idle[0] * 1000:.1f} ms of CPU a second "
                        f"({idle[1] * 1000:.1f} ms system; subtracted below)"
                    )
                    bench_cpu = time.process_time()
                    phase, system, tasks = await upscale_phase(
                        double, sandbox, bot, grids, users, idle, pause
                    )
                    bench_cpu = time.process_time() - bench_cpu
                    print(
                        f"jpeg upscale, {jobs} jobs: completion → posted {spread(phase.posted)}; "
                        f"longest loop stall {phase.stall * 1000:.1f} ms; "
                        f"bench process {bench_cpu / jobs * 1000:.1f} ms of CPU a job"
                    )
                    print_counts(phase)
                    print(
                        f"    {phase.per_job('http (all)'):5.2f}  HTTP requests made, in all "
                        f"(plus the click over the gateway and the callback received)"
                    )
                    if not same_buttons(double, grids, tasks):
                        print("    WARNING: posts differ from the real bot's (buttons or tidying)")
                    print(
                        f"resident memory: VmRSS {bot.proc.status('VmRSS') / MiB:.1f} MiB, "
                        f"peak VmHWM {bot.proc.status('VmHWM') / MiB:.1f} MiB"
                    )
                    print(
                        "CPU per completed upscale (minimal discord.py bot, same traffic): "
                        f"{phase.cpu_ms:.1f} ms ({system:.1f} ms of it system time)   "
                        f"target: ≤ {TARGET_UPSCALE_CPU_MS:g} ms   "
                        f"{verdict(phase.cpu_ms <= TARGET_UPSCALE_CPU_MS)}",
                        flush=True,
                    )
    finally:
        await sandbox.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="upscales completed")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between completions")
    args, env = begin(parser, "the floor: a completed upscale's CPU in a minimal discord.py bot")
    if env:
        parser.error("--env: the minimal bot has no settings")
    asyncio.run(run(args.jobs, args.pause))


if __name__ == "__main__":
    main()
