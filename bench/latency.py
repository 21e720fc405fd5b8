"""Interaction acknowledgement time and task-done → result-posted time, measured on loopback.

Runs the real bot (discord.py, cogs, tracker, SQLite store, listener with the sandbox API
mounted, callbacks to itself) against the Discord double from tests/fakes.

    .venv/bin/python -m bench.latency [--grids 10] [--api-delay 0]

Prints each figure with its target. Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from dataclasses import replace

from bot.app import UpscaleBot
from bot.config import load_settings
from bot.grid import parse_upscale_custom_id, upscale_custom_id
from bot.jobs.tracker import PollPolicy
from bot.midjourney.sandbox import SandboxAPI
from tests.fakes.discord_double import DiscordDouble, point_discord_at

TOKEN = "bench-token-for-the-discord-double"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(name: str, seconds: list[float], target: str) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{name:<44} n={len(ms):<4} p50={statistics.median(ms):7.1f} ms  "
        f"p99={percentile(ms, 0.99):7.1f} ms  max={max(ms):7.1f} ms   target: {target}"
    )


async def run(grids: int, api_delay: float, image_size: int) -> None:
    async with DiscordDouble() as double:
        with point_discord_at(double), tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                {
                    "DISCORD_TOKEN": TOKEN,
                    "MJ_API_BASE_URL": "sandbox",
                    "HOST": "127.0.0.1",
                    "DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3",
                    "DISCORD_GUILD_ID": str(double.guild_id),
                }
            )
            sandbox = SandboxAPI(task_seconds=None, image_size=image_size)
            bot = UpscaleBot(
                replace(settings, port=0),
                sandbox=sandbox,
                poll=PollPolicy(),
                guild_ready_timeout=0.05,
            )
            runner = asyncio.create_task(bot.start(TOKEN))
            await asyncio.wait_for(bot.wait_until_ready(), 10)
            try:
                await measure(double, sandbox, bot, grids, api_delay)
            finally:
                await bot.close()
                await runner


async def measure(
    double: DiscordDouble, sandbox: SandboxAPI, bot: UpscaleBot, grids: int, api_delay: float
) -> None:
    user = double.add_user("bencher")
    # Grids to click on, shown through /upscale without an image (no generation to wait for).
    messages = []
    for n in range(grids):
        task = sandbox.add_generation(prompt=f"bench grid {n}")
        handle = await double.slash("upscale", {"task_id": task}, user)
        await handle.wait_ack()
        messages.append(
            await double.wait_for_message(
                lambda m, t=task: len(m.attachments) == 4 and _grid(m) == t
            )
        )

    sandbox.answer_delay = api_delay
    handles = await asyncio.gather(
        *(
            double.click(m.id, upscale_custom_id(_grid(m), number), user)
            for m in messages
            for number in range(1, 5)
        )
    )
    acks = [(await h.wait_ack()).ack_seconds for h in handles]
    report(f"ack, {len(acks)} concurrent clicks, API delay {api_delay:g} s", acks, "p99 ≤ 50 ms")

    await sandbox.wait_for_call("generateUpscale", n=len(handles), timeout=30 + api_delay)
    jobs = []
    for message in messages:
        for index in range(4):
            for _ in range(1000):
                job = await bot.tracker.store.live_upscale(_grid(message), index)
                if job is not None and job.upstream_task_id:
                    break
                await asyncio.sleep(0.01)
            jobs.append(job)

    posted: list[float] = []
    for job in jobs:
        assert job is not None and job.upstream_task_id
        started = time.perf_counter()
        sandbox.complete(job.upstream_task_id)
        expected = f"**{job.prompt}** - Image #{(job.image_index or 0) + 1} "
        message = await double.wait_for_message(
            lambda m, e=expected: bool(m.attachments) and m.content.startswith(e)
        )
        posted.append(message.created_at - started)
    report("task done → callback → result posted", posted, "p50 ≤ 25 ms, p99 ≤ 100 ms")


def _grid(message: object) -> str | None:
    buttons = message.buttons()  # type: ignore[attr-defined]
    parsed = parse_upscale_custom_id(buttons[0].custom_id or "") if buttons else None
    return parsed[0] if parsed else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=10, help="grids to click U1–U4 on")
    parser.add_argument("--api-delay", type=float, default=0.0, help="seconds the API takes")
    parser.add_argument("--image-size", type=int, default=512, help="sandbox image side, px")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.grids, args.api_delay, args.image_size))


if __name__ == "__main__":
    main()
