"""Resident memory of the bot process with 1,000 upscales in flight.

1,000 U-button clicks on 250 grids (by 10 members), each upscale taken by the sandbox API and left
running (``task_seconds=None``), so the bot holds 1,000 submitted jobs, each watched until its
callback. Then the bot's VmRSS (and its peak, VmHWM) is read from /proc. The grids are made by
/imagine first, so the figure includes what showing 250 grids left behind, as in real use.

    .venv/bin/python -m bench.memory [--jobs 1000] [--env NAME=VALUE]

MJ_SUBMIT_RATE=1000, QUEUE_LIMIT=10000 and MAX_JOBS_PER_USER=1000 let the 1,000 clicks through.
Run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.rig import (
    MiB,
    ProcStat,
    begin,
    print_figure,
    running_bot,
)
from bot.jobs.stats import JobStats
from bot.jobs.store import JobState

TARGET_MIB = 150.0


def _rss(proc: ProcStat) -> str:
    return (
        f"VmRSS {proc.status('VmRSS') / MiB:.1f} MiB (anonymous {proc.status('RssAnon') / MiB:.1f}"
        f" MiB), peak VmHWM {proc.status('VmHWM') / MiB:.1f} MiB"
    )


async def run(jobs: int, env: dict[str, str]) -> bool:
    async with running_bot(users=10, env=env) as rig:
        proc = rig.proc
        await rig.settle()
        print(f"    connected, idle:            {_rss(proc)}", flush=True)
        started = time.perf_counter()
        grids = await rig.show_grids(-(-jobs // 4), concurrency=16)
        await rig.settle()
        print(
            f"    {len(grids)} grids shown ({time.perf_counter() - started:.0f} s):  {_rss(proc)}",
            flush=True,
        )
        before = proc.status("VmRSS")

        started = time.perf_counter()
        clicks = [(grid, number) for grid in grids for number in range(1, 5)][:jobs]
        for first in range(0, len(clicks), 100):
            batch = clicks[first : first + 100]
            handles = await asyncio.gather(
                *(
                    rig.click(grid, number, rig.users[(first + i) % len(rig.users)])
                    for i, (grid, number) in enumerate(batch)
                )
            )
            for handle in handles:
                ack = await handle.wait_ack(timeout=30)
                if not ack.accepted:
                    raise RuntimeError("a click was not acknowledged in time")
        count = await _wait_submitted(rig, jobs)
        await rig.settle(quiet=1.0)
        rss = proc.status("VmRSS")
        print(
            f"    {count} upscales submitted and waiting ({time.perf_counter() - started:.0f} s): "
            f"{_rss(proc)}",
            flush=True,
        )
        print(f"    growth per job in flight: {(rss - before) / max(1, count) / 1024:.1f} KiB")
        return print_figure(
            f"resident memory with {count} jobs in flight",
            f"VmRSS {rss / MiB:.1f} MiB",
            f"≤ {TARGET_MIB:g} MiB",
            rss / MiB <= TARGET_MIB and count >= jobs,
        )


async def _wait_submitted(rig, jobs: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        states = await JobStats(rig.store.database).states_since(0)
        count = states.get(JobState.SUBMITTED, 0)
        upscales = rig.sandbox.count("generateUpscale")
        if count >= jobs and upscales >= jobs:
            return count
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count} submitted, {upscales} API calls: {states}")
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    args, env = begin(parser, "resident memory with jobs in flight")
    asyncio.run(run(args.jobs, env))


if __name__ == "__main__":
    main()
