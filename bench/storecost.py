"""CPU of the store's hot calls on a SQLite file (JobStore through aiosqlite).

In this process, no bot and no network: each call is repeated ``--calls`` times and timed with
``time.process_time`` (all threads: aiosqlite's count), so the figure is the CPU a call costs,
not its latency. Counts of CPU are far steadier than the end-to-end benches on a shared VM: the
figure to compare when the store's way of running SQL changes (docs/performance.md §8).

    .venv/bin/python -m bench.storecost [--calls 2000]

Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.jobs.store import JobState, JobStore


async def per_call(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """Microseconds of this process's CPU per call, after a warm-up."""
    for n in range(calls // 10):
        await call(n)
    started = time.process_time()
    for n in range(calls):
        await call(n)
    return (time.process_time() - started) / calls * 1e6


async def measure(store: JobStore, calls: int, grid: str) -> dict[str, float]:
    job = await store.create(
        kind="upscale",
        requester_id=1,
        guild_id=2,
        channel_id=3,
        deadline_seconds=3600,
        parent_task_id=grid,
        image_index=0,
        callback_secret=grid * 10,
    )
    states = (JobState.REQUESTED, JobState.SUBMITTING)

    async def create(n: int) -> object:
        return await store.create(
            kind="imagine", requester_id=n, guild_id=2, channel_id=3, deadline_seconds=3600
        )

    async def transition(n: int) -> object:
        return await store.transition(job.id, states, states[(n + 1) % 2])

    return {
        "get (by id)": await per_call(lambda _: store.get(job.id), calls),
        "by_secret": await per_call(lambda _: store.by_secret(job.callback_secret), calls),
        "grid_use": await per_call(lambda _: store.grid_use(grid, 2), calls),
        "update": await per_call(lambda n: store.update(job.id, status_message_id=n), calls // 4),
        "transition": await per_call(transition, calls // 4),
        "create": await per_call(create, calls // 4),
    }


async def run(calls: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = await JobStore.open(f"sqlite:///{Path(folder)}/store.sqlite3")
        try:
            costs = await measure(store, calls, "grid")
        finally:
            await store.close()
    print(f"CPU per call, µs ({calls} reads, {calls // 4} writes each)")
    for name, cost in costs.items():
        print(f"{name:<14} {cost:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="reads per call; writes a 4th")
    args = parser.parse_args()
    asyncio.run(run(args.calls))


if __name__ == "__main__":
    main()
