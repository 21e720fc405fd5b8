"""A storm of clicks with a credit budget on PostgreSQL against three processes: how fast requests
are admitted, and how long the write that keeps a paid task's id waits behind them.

Three bot processes on one fresh PostgreSQL database (tests/fakes/cluster.py: two shards, one
process standing by), ``DAILY_CREDIT_BUDGET`` set (so every admission counts the day's spending
under one advisory lock) and the pace and allowances far above the storm. ``--clicks`` members
click as many different U-buttons at once. From the processes' log lines:

- admissions per second: stored requests (``requested``) over the time from the first click to
  the last request stored;
- the post-payment write: from ``paid call answered`` to ``submitted`` of each job, the time the
  task id was known only to the process's memory and log.

    .venv/bin/python -m bench.storm [--clicks 500] [--budget 1000000]

Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime

from bench.rig import begin, grid_task, percentile, wait_until
from bench.sustained import make_grids, three_processes
from bot.grid import upscale_custom_id


def times_of(lines: list[str], marker: str) -> dict[str, float]:
    """job id → when the (JSON) log line whose message holds ``marker`` was written."""
    found: dict[str, float] = {}
    for line in lines:
        if marker not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if marker in entry.get("message", "") and entry.get("job"):
            at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
            found.setdefault(entry["job"], at)
    return found


async def run(clicks: int, budget: int, env: dict[str, str]) -> None:
    settings = {
        "DAILY_CREDIT_BUDGET": str(budget),
        "GRID_REPOSTS_PER_HOUR": "unlimited",
        # Timed to the millisecond, one object a line.
        "LOG_FORMAT": "json",
        **env,
    }
    async with three_processes(settings) as target:
        double = target.double
        users = [double.add_user(f"stormer{n}") for n in range(50)]
        per_guild = -(-clicks // 4 // len(target.channels))
        grids = await make_grids(target, users[0], per_guild)
        buttons = [(g, n) for g in grids for n in range(1, 5)][:clicks]
        bots = target.procs
        print(f"3 processes, {len(grids)} grids, {len(buttons)} clicks at once, budget {budget}")
        cpu = sum(p.cpu_seconds() for p in bots)

        async def click(i: int) -> None:
            grid, number = buttons[i]
            task = grid_task(grid)
            assert task is not None
            handle = await double.click(grid.id, upscale_custom_id(task, number), users[i % 50])
            await handle.wait_ack(timeout=30)

        began = time.time()
        await asyncio.gather(*(click(i) for i in range(len(buttons))))
        await wait_until(
            lambda: target.sandbox.count("generateUpscale") >= len(buttons), 300, "every upscale"
        )
        await asyncio.sleep(2)
        lines = [line for log in target.logs for line in log]
        requested = {
            job: at
            for job, at in times_of(lines, "upscale requested job=").items()
            if at >= began - 1
        }
        answered = times_of(lines, "paid call answered job=")
        submitted = times_of(lines, "submitted job=")
        admitted = sorted(requested.values())
        span = admitted[-1] - began if admitted else float("nan")
        waits = sorted(
            (submitted[j] - answered[j]) * 1000
            for j in requested
            if j in answered and j in submitted
        )
        print(f"  admitted {len(admitted)} requests in {span:.2f} s: {len(admitted) / span:.0f}/s")
        print(
            f"  post-payment write, {len(waits)} jobs: p50 {percentile(waits, 0.5):.0f} ms, "
            f"p99 {percentile(waits, 0.99):.0f} ms, longest {waits[-1]:.0f} ms"
        )
        print(f"  bot CPU in all: {sum(p.cpu_seconds() for p in bots) - cpu:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=500)
    parser.add_argument("--budget", type=int, default=1_000_000)
    args, env = begin(parser, "a storm of clicks with a budget, three processes")
    asyncio.run(run(args.clicks, args.budget, env))


if __name__ == "__main__":
    main()
