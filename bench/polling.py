"""Polling mode (no PUBLIC_URL): task done → result posted, and how often record-info is asked.

The bot process runs without PUBLIC_URL, so no callback can reach it and it polls the API with
the production PollPolicy (every 5 s at first, backing off after a minute). The sandbox, served
by this process, finishes each upscale at a random moment within ``--spread`` seconds after all
were submitted; the figure is from that moment to the double storing the result message. Every
record-info request the sandbox receives is timestamped, per task.

    .venv/bin/python -m bench.polling [--jobs 40] [--spread 30] [--env NAME=VALUE]

Run by hand; it takes about spread + 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import time

from bench.rig import (
    CpuMeter,
    begin,
    print_figure,
    print_latency,
    running_bot,
    wait_until,
)

TARGET_P50_MS = 5000.0
WINDOW = 5.0


async def run(jobs: int, spread: float, seed: int, env: dict[str, str]) -> bool:
    async with running_bot(callbacks=False, users=4, env=env) as rig:
        double, sandbox = rig.double, rig.sandbox
        submitted = await rig.upscale_submitted(jobs)
        tasks = [j.upstream_task_id for j in submitted]
        assert all(tasks)
        # When each task was created at the API: its polling starts from there.
        created = {t: sandbox.created_at[t] for t in tasks}  # type: ignore[index]
        print(f"    {len(tasks)} upscales submitted; finishing them over {spread:g} s", flush=True)

        cpu = CpuMeter(rig.proc)
        rng = random.Random(seed)
        start = time.perf_counter()
        schedule = sorted((rng.uniform(0, spread), t) for t in tasks)
        posted_at: dict[str, float] = {}

        def check_posted() -> None:
            for message in double.messages(ephemeral=False):
                for attached in message.files:
                    stem = attached.filename.rsplit("_", 1)[0]
                    if stem in created and stem not in posted_at:
                        posted_at[stem] = message.created_at

        for offset, task_id in schedule:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sandbox.complete(task_id)  # type: ignore[arg-type]
            check_posted()

        def all_posted() -> bool:
            check_posted()
            return len(posted_at) == len(tasks)

        await wait_until(all_posted, 60, "every result posted")
        waits = [posted_at[t] - sandbox.completed_at[t] for t in tasks]  # type: ignore[index]
        print(f"    {cpu.line()}")
        ok = print_latency("polling: task done → result message stored", waits, p50=TARGET_P50_MS)

        # record-info calls per job, from its creation at the API until its result was posted.
        worst_window, gaps, counts, lifetimes = 0, [], [], []
        for task_id in tasks:
            calls = sorted(sandbox.times("record-info", task_id))
            for i, moment in enumerate(calls):
                in_window = sum(1 for later in calls[i:] if later < moment + WINDOW)
                worst_window = max(worst_window, in_window)
            gaps += [b - a for a, b in itertools.pairwise(calls)]
            counts.append(len(calls))
            lifetimes.append(posted_at[task_id] - created[task_id])  # type: ignore[index]
        ok &= print_figure(
            "polling: record-info calls per job",
            f"most in any {WINDOW:g} s window: {worst_window}; shortest gap between two calls of "
            f"one job: {min(gaps):.3f} s; {statistics.mean(counts):.1f} calls per job over its "
            f"{statistics.mean(lifetimes):.1f} s (mean), the first at submission",
            f"≤ 1 per {WINDOW:g} s per job",
            worst_window <= 1,
        )
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--spread", type=float, default=30.0, help="seconds over which tasks end")
    parser.add_argument("--seed", type=int, default=4)
    args, env = begin(parser, "polling mode: task done → result posted")
    asyncio.run(run(args.jobs, args.spread, args.seed, env))


if __name__ == "__main__":
    main()
