"""Sustained clicks: how many clicks per second the bot acknowledges with every ack under 3 s.

One bot process on SQLite (``--processes 1``), or three on one PostgreSQL database with two
shards, one standing by (``--processes 3``, tests/fakes/cluster.py: the local PostgreSQL at
TEST_POSTGRES_URL). The API is the sandbox served by this process; its upscales stay running,
so the first click on a button starts a job and later ones on it are told it runs (a crowd on
popular grids). Clicks go out evenly spaced, at each rate of ``--rates`` for ``--seconds``,
spread over 40 grids per guild and 20 members; an ack is timed at the Discord double, from
INTERACTION_CREATE sent to the interaction callback received. The ladder stops at the first
rate where an ack took 3 s or more (Discord's limit) or never came.

    .venv/bin/python -m bench.sustained [--processes 1|3] [--rates 25,50,100,200] [--seconds 10]

The double and the load run in this one process: at the highest rates it is part of what is
measured (its CPU is printed). Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.rig import (
    API_KEY,
    UNTHROTTLED,
    BenchSandbox,
    ProcStat,
    begin,
    grid_task,
    imagine_all,
    percentile,
    running_bot,
    serve,
    wait_until,
)
from bot.grid import upscale_custom_id
from tests.fakes.cluster import fresh_database, running_cluster
from tests.fakes.discord_double import Callback, DiscordDouble, StoredMessage
from tests.jobs.conftest import POSTGRES_URL

ACK_LIMIT = 3.0
GRIDS_PER_GUILD = 40


@dataclass
class Target:
    double: DiscordDouble
    sandbox: BenchSandbox
    channels: list[int]
    procs: list[ProcStat]
    # Each process's log lines as they come (three processes only).
    logs: list[list[str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def one_process(env: dict[str, str]) -> AsyncIterator[Target]:
    async with running_bot(env=env) as rig:
        yield Target(rig.double, rig.sandbox, [rig.double.channel_id], [rig.proc])


@contextlib.asynccontextmanager
async def three_processes(env: dict[str, str]) -> AsyncIterator[Target]:
    sandbox = BenchSandbox(api_key=API_KEY, task_seconds=None, image_size=64, credits=10**9)
    runner, api_port = await serve(sandbox.app)
    try:
        async with (
            DiscordDouble() as double,
            fresh_database(POSTGRES_URL) as database,
        ):
            with tempfile.TemporaryDirectory(prefix="mj-bench-") as tmp:
                async with running_cluster(
                    double,
                    api_base=f"http://127.0.0.1:{api_port}",
                    api_key=API_KEY,
                    database_url=database,
                    workdir=Path(tmp),
                    env={**UNTHROTTLED, **env},
                ) as cluster:
                    await cluster.start_all()
                    procs = [ProcStat(bot.pid) for bot in cluster.bots]
                    try:
                        yield Target(
                            double,
                            sandbox,
                            sorted(cluster.channels.values()),
                            procs,
                            [bot.log for bot in cluster.bots],
                        )
                    finally:
                        for number, bot in enumerate(cluster.bots):
                            print_warnings(f"process {number}", bot.log)
    finally:
        await sandbox.close()
        await runner.cleanup()


# Log lines that tell how a step went besides its acks.
NOTABLE = (
    "too late to answer",
    "left interaction",
    "lost the lease of shard",
    "took shard",
    "lease lost job",
    "could not renew",
    " ERROR ",
)


def print_warnings(name: str, log: list[str]) -> None:
    counts = Counter(text for line in log for text in NOTABLE if text in line)
    print(f"  {name}: " + ", ".join(f"{n} × {text.strip()!r}" for text, n in counts.items()))
    first = next((n for n, line in enumerate(log) if " ERROR " in line), None)
    if first is not None:
        lines = (line.rstrip()[:300] for line in log[first : first + 30])
        print("    first ERROR:", *lines, sep="\n")


async def make_grids(
    target: Target, user: int, per_guild: int = GRIDS_PER_GUILD
) -> list[StoredMessage]:
    double, sandbox = target.double, target.sandbox
    sandbox.task_seconds = 0
    await imagine_all(double, user, target.channels, per_guild)

    def grids() -> list[StoredMessage]:
        return [
            m
            for m in double.messages(ephemeral=False)
            if grid_task(m) is not None and len(m.files) == 4
        ]

    wanted = per_guild * len(target.channels)
    await wait_until(lambda: len(grids()) >= wanted, 180, f"{wanted} grids")
    sandbox.task_seconds = None
    return grids()


async def step(
    target: Target, grids: list[StoredMessage], users: list[int], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Clicks at ``rate`` per second for ``seconds``: every ack's seconds, and how many never
    came within 10 s."""
    double = target.double
    count = int(rate * seconds)
    buttons = [(g, n) for g in grids for n in range(1, 5)]

    async def one(i: int) -> Callback | None:
        grid, number = buttons[i % len(buttons)]
        task = grid_task(grid)
        assert task is not None
        handle = await double.click(grid.id, upscale_custom_id(task, number), users[i % len(users)])
        try:
            return await handle.wait_ack(timeout=10)
        except TimeoutError:
            return None

    started = time.perf_counter()
    pending = []
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(i)))
    # A refused acknowledgement (10062: after Discord's 3 s) counts with its time too.
    acks = await asyncio.gather(*pending)
    done = [a.ack_seconds for a in acks if a is not None]
    return done, count - len(done)


async def run(processes: int, rates: list[float], seconds: float, env: dict[str, str]) -> None:
    starter = one_process if processes == 1 else three_processes
    async with starter(env) as target:
        users = [target.double.add_user(f"bencher{n}") for n in range(20)]
        grids = await make_grids(target, users[0])
        print(f"{processes} process(es), {len(grids)} grids in {len(target.channels)} guild(s)")
        sustained = 0.0
        for rate in rates:
            bots = sum(proc.cpu_seconds() for proc in target.procs)
            own, began = time.process_time(), time.perf_counter()
            acks, missed = await step(target, grids, users, rate, seconds)
            took = time.perf_counter() - began
            bot_cpu = sum(proc.cpu_seconds() for proc in target.procs) - bots
            ms = sorted(a * 1000 for a in acks)
            worst = ms[-1] if ms else float("nan")
            ok = not missed and worst < ACK_LIMIT * 1000
            print(
                f"  {rate:g} clicks/s for {seconds:g} s: n={len(ms)} missed={missed} "
                f"p50={percentile(ms, 0.5):.0f} ms p99={percentile(ms, 0.99):.0f} ms "
                f"max={worst:.0f} ms  CPU per second: bots {bot_cpu / took:.2f}, "
                f"bench {(time.process_time() - own) / took:.2f}  "
                f"{'all under 3 s' if ok else 'OVER 3 s'}",
                flush=True,
            )
            if not ok:
                break
            sustained = rate
            # Let the jobs and whispers of the step drain before the next one.
            await asyncio.sleep(3)
        print(f"sustained with every ack under 3 s: {sustained:g} clicks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--rates", default="25,50,100,200,400")
    parser.add_argument("--seconds", type=float, default=10.0)
    args, env = begin(parser, "sustained clicks")
    rates = [float(r) for r in args.rates.split(",")]
    asyncio.run(run(args.processes, rates, args.seconds, env))


if __name__ == "__main__":
    main()
