"""Interaction acknowledgement: 100 concurrent U-button clicks while the API takes 5 s to answer.

Measured at the Discord double, from the moment it sends INTERACTION_CREATE on the gateway to the
moment the bot's interaction callback POST reaches it (``Callback.ack_seconds``). The bot is the
real process (``python -m bot``); the API is the project's sandbox served by this process with
``answer_delay=5``, so every upscale the clicks start is still waiting for its API answer while
later clicks arrive.

    .venv/bin/python -m bench.ack [--rounds 5] [--clicks 100] [--gap 2] [--env NAME=VALUE]

Each round clicks U1–U4 on clicks/4 fresh grids (made by /imagine beforehand), all at once, by
20 different members, ``--gap`` seconds after the previous round: the upscales of earlier rounds
are still waiting for the API then. Round 1 is the first burst the process sees (it opens a new
connection to Discord for nearly every acknowledgement); the figure is over all rounds. The bot's
garbage-collection pauses during each burst are listed (bench/gctrace). Run by hand; nothing
asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.rig import (
    begin,
    bench_gc_paused,
    print_figure,
    print_latency,
    running_bot,
)
from bot.jobs.store import JobState

TARGET_P99_MS = 50.0


async def run(rounds: int, clicks: int, gap: float, api_delay: float, env: dict[str, str]) -> bool:
    per_round_grids = clicks // 4
    async with running_bot(users=20, env=env, trace_gc=True) as rig:
        grids = await rig.show_grids(per_round_grids * rounds)
        await rig.settle()
        rig.sandbox.answer_delay = api_delay
        cpu_start = rig.proc.cpu_seconds()
        pooled: list[float] = []
        for number in range(rounds):
            batch = grids[number * per_round_grids : (number + 1) * per_round_grids]
            with bench_gc_paused():
                handles = await asyncio.gather(
                    *(
                        rig.click(grid, button, rig.users[(i * 4 + button) % len(rig.users)])
                        for i, grid in enumerate(batch)
                        for button in range(1, 5)
                    )
                )
                acks = [await h.wait_ack(timeout=10) for h in handles]
            refused = [a for a in acks if not a.accepted or a.type != 6]
            if refused:
                raise RuntimeError(f"{len(refused)} click(s) not acknowledged with a deferral")
            seconds = [a.ack_seconds for a in acks]
            pooled += seconds
            print_latency(
                f"round {number + 1}: ack of {len(seconds)} concurrent clicks, "
                f"API answering in {api_delay:g} s",
                seconds,
                p99=TARGET_P99_MS,
            )
            first = min(h.dispatched_at for h in handles)
            last = max(a.arrived_at for a in acks)
            pauses = rig.gc_pauses(first, last)
            if pauses:
                print(
                    "    bot GC pauses while it lasted: "
                    + ", ".join(f"gen{g} {s * 1000:.1f} ms" for _, s, g in pauses)
                )
            await asyncio.sleep(gap)
        ok = print_latency(
            f"ack, {rounds} rounds of {clicks} concurrent clicks pooled", pooled, p99=TARGET_P99_MS
        )
        # The paid calls did go out, and were answered after the delay: the clicks were real.
        await rig.wait_jobs(
            grids,
            (JobState.SUBMITTED, JobState.SUCCEEDED, JobState.DELIVERED),
            timeout=api_delay + 60,
        )
        await rig.settle()
        bot_cpu = rig.proc.cpu_seconds() - cpu_start
        print(
            f"    bot CPU per click, from the click to its upscale submitted and watched: "
            f"{bot_cpu / len(pooled) * 1000:.1f} ms"
        )
        print_figure(
            "every click became a submitted upscale",
            f"{len(grids) * 4} jobs submitted, {rig.sandbox.count('generateUpscale')} API calls",
            "all",
            rig.sandbox.count("generateUpscale") == len(grids) * 4,
        )
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=100, help="clicks per round (multiple of 4)")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--api-delay", type=float, default=5.0, help="seconds the API takes")
    args, env = begin(parser, "interaction acknowledgement under a click storm")
    asyncio.run(run(args.rounds, args.clicks, args.gap, args.api_delay, env))


if __name__ == "__main__":
    main()
