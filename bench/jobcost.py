"""A job's cost to the bot with real-sized images: CPU per completed job by kind, completion →
posted, the event loop's longest stall, and memory.

The real bot process against the Discord double and the sandbox (bench.rig), which serves
results of real sizes and formats, drawn with Pillow once per run (gradients, shapes and noise,
so that they compress like photographs, not like flat test patterns). Three sets:

- ``jpeg``: grid tiles 1024 px JPEG (~0.5 MiB), upscales 2048 px JPEG (~2 MiB);
- ``png``: grid tiles 1024 px PNG (~2 MiB), upscales 2048 px PNG (~8 MiB), all within the
  10 MiB a server without boosts takes;
- ``reencode``: noisier PNGs (tiles ~3 MiB, four of them over 10 MiB; upscales over 10 MiB),
  which the bot must re-encode to post.

For each set and kind (generation by /imagine, upscale by U1, variation by V1), ``--jobs`` jobs
are asked for and left running, then the sandbox completes them one at a time: CPU per job is
the bot's CPU from the first request to the last result posted and tidied, less its idle rate
(the keeper's sweep, the loop probe); completion → posted runs from the sandbox starting its
callback POST to the double storing the result message. Then a burst: U2, U3 and V2 of every
``reencode`` grid completed at once (every one a re-encode), while U4 of each is clicked.
The bot's event loop is probed inside its process (bench/costtrace, a sitecustomize on its
PYTHONPATH: a 10 ms timer noting how late it fires), and VmRSS/VmHWM are read from /proc.

    .venv/bin/python -m bench.jobcost [--jobs 8] [--profile FILE] [--env NAME=VALUE]

``--profile FILE``: cProfile of the bot's main thread over the measured part, written to FILE
and its top ten printed (the profiler slows the bot several times: its figures are not the
figures). Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter

from bench.rig import (
    API_KEY,
    BenchSandbox,
    MiB,
    Rig,
    begin,
    bench_gc_paused,
    percentile,
    print_figure,
    running_bot,
    wait_until,
)
from bot.grid import upscale_custom_id, vary_custom_id
from bot.midjourney.sandbox import UPSCALE_TASK_TYPE, SandboxTask
from tests.fakes.discord_double import StoredMessage

UPLOAD_LIMIT = 10 * MiB  # what discord.py reports for a server without boosts, as the double's
TARGET_UPSCALE_CPU_MS = 20.0
TARGET_STALL_MS = 50.0
PROBE_INTERVAL = 0.010  # bench/costtrace's timer
KINDS = ("generation", "upscale", "variation")
# name: (format, noise, grain)
SETS = {"jpeg": ("JPEG", 80, 0.25), "png": ("PNG", 30, 0.25), "reencode": ("PNG", 80, 0.6)}


# ----- the pictures -----------------------------------------------------------------------------


def photo_like(side: int, seed: int, noise: float, grain: float) -> PIL.Image.Image:
    """Smooth gradients, blurred shapes and grain: compresses like a photograph (``noise``, the
    grain's sigma, and ``grain``, its weight, set how well)."""
    across = PIL.Image.linear_gradient("L").resize((side, side))
    around = PIL.Image.radial_gradient("L").resize((side, side))
    picture = PIL.Image.merge("RGB", (across, around, across.rotate(90 + seed * 40)))
    draw = PIL.ImageDraw.Draw(picture)
    shapes = random.Random(seed)
    for _ in range(12):
        x, y = shapes.randrange(side), shapes.randrange(side)
        r = shapes.randrange(side // 16, side // 4)
        colour = (shapes.randrange(256), shapes.randrange(256), shapes.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    picture = picture.filter(PIL.ImageFilter.GaussianBlur(side / 256))
    grains = PIL.Image.merge("RGB", [PIL.Image.effect_noise((side, side), noise) for _ in range(3)])
    return PIL.Image.blend(picture, grains, grain)


def encoded(picture: PIL.Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    picture.save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue()


@dataclass(frozen=True)
class ImageSet:
    name: str
    tiles: tuple[bytes, ...]
    upscale: bytes

    def describe(self) -> str:
        tiles = statistics.mean(len(t) for t in self.tiles) / MiB
        return (
            f"{self.name}: tiles 1024 px {tiles:.2f} MiB each ({4 * tiles:.1f} MiB a grid), "
            f"upscale 2048 px {len(self.upscale) / MiB:.2f} MiB"
        )


def image_sets(only: list[str]) -> dict[str, ImageSet]:
    sets = {}
    for name in only:
        fmt, noise, grain = SETS[name]
        tiles = tuple(encoded(photo_like(1024, seed, noise, grain), fmt) for seed in range(4))
        sets[name] = ImageSet(name, tiles, encoded(photo_like(2048, 7, noise, grain), fmt))
    if "reencode" in sets:
        grid, upscale = sum(map(len, sets["reencode"].tiles)), len(sets["reencode"].upscale)
        if grid <= UPLOAD_LIMIT or upscale <= UPLOAD_LIMIT:
            raise RuntimeError("the reencode set fits the upload limit: it would not be re-encoded")
    return sets


class CostSandbox(BenchSandbox):
    """Serves each task's results from the image set that was current when it was created."""

    def __init__(self, sets: dict[str, ImageSet], **options: Any) -> None:
        super().__init__(**options)
        self.sets = sets
        self.current = "jpeg"
        self.set_of: dict[str, str] = {}

    def _start(self, task: SandboxTask) -> None:
        self.set_of[task.task_id] = self.current
        super()._start(task)

    def image_bytes(self, task_id: str, index: int) -> bytes:
        task = self.task(task_id)
        if not 0 <= index < task.result_count:
            raise IndexError(f"task {task_id} has {task.result_count} result(s), not {index + 1}")
        chosen = self.sets[self.set_of.get(task_id, self.current)]
        return chosen.upscale if task.task_type == UPSCALE_TASK_TYPE else chosen.tiles[index]


# ----- measuring --------------------------------------------------------------------------------


@dataclass
class Phase:
    set: str
    kind: str
    jobs: int
    cpu_ms: float
    posted: list[float]
    stall: float
    reencoded: int
    counts: Counter[str] = field(default_factory=Counter)

    def per_job(self, name: str) -> float:
        return self.counts[name] / self.jobs


def posted_message(rig: Rig, task_id: str) -> StoredMessage | None:
    prefix = f"{task_id}_0."
    for message in rig.double.messages(ephemeral=False):
        if message.files and message.files[0].filename.startswith(prefix):
            return message
    return None


def new_tasks(rig: Rig, before: set[str]) -> list[SandboxTask]:
    return [t for t in rig.sandbox.tasks() if t.task_id not in before]


def reencodes(rig: Rig) -> int:
    return sum("re-encoded " in line for line in rig.bot.log)


async def idle_rate(rig: Rig, seconds: float = 4.0) -> float:
    """The bot's CPU seconds per second with nothing to do."""
    await rig.settle()
    before = rig.proc.cpu_seconds()
    await asyncio.sleep(seconds)
    return (rig.proc.cpu_seconds() - before) / seconds


async def ask(rig: Rig, kind: str, grids: list[str], number: int) -> None:
    """Ask for one job of ``kind`` per grid (for a generation, one /imagine each)."""
    double, users = rig.double, rig.users
    if kind == "generation":
        handles = [
            await double.slash("imagine", {"prompt": f"cost {n}"}, users[n % len(users)])
            for n in range(len(grids))
        ]
    else:
        make = upscale_custom_id if kind == "upscale" else vary_custom_id
        handles = await asyncio.gather(
            *(
                double.click(message, make(task, number), users[n % len(users)])
                for n, (message, task) in enumerate(grid_messages(rig, grids))
            )
        )
    for handle in handles:
        await handle.wait_ack(timeout=30)


def grid_messages(rig: Rig, tasks: list[str]) -> list[tuple[int, str]]:
    found = []
    for task in tasks:
        message = posted_message(rig, task)
        if message is None:
            raise RuntimeError(f"no grid posted for {task}")
        found.append((message.id, task))
    return found


async def run_phase(
    rig: Rig, set_name: str, kind: str, grids: list[str], jobs: int, idle: float, pause: float
) -> tuple[Phase, list[str]]:
    """``jobs`` jobs of ``kind`` asked for, left running, then completed one at a time."""
    sandbox = rig.sandbox
    assert isinstance(sandbox, CostSandbox)
    sandbox.current = set_name
    before = {t.task_id for t in sandbox.tasks()}
    reencoded = reencodes(rig)
    counted = await rig.counts()
    started, cpu = time.perf_counter(), rig.proc.cpu_seconds()
    await ask(rig, kind, grids or [""] * jobs, 1)
    await wait_until(lambda: len(new_tasks(rig, before)) >= jobs, 60, f"{jobs} {kind} tasks")
    await rig.settle(quiet=0.3)
    tasks = [t.task_id for t in new_tasks(rig, before)]
    posted = []
    for task_id in tasks:
        sandbox.complete(task_id)
        await wait_until(lambda t=task_id: posted_message(rig, t) is not None, 60, task_id)
        message = posted_message(rig, task_id)
        assert message is not None
        posted.append(message.created_at - sandbox.callback_sent[task_id])
        await asyncio.sleep(pause)
    await rig.settle(quiet=0.3)
    ended = time.perf_counter()
    used = rig.proc.cpu_seconds() - cpu - idle * (ended - started)
    stall = max(rig.loop_lags(started, ended), default=0.0)
    phase = Phase(set_name, kind, jobs, used / jobs * 1000, posted, stall, 0)
    phase.counts = await rig.counts() - counted
    phase.reencoded = reencodes(rig) - reencoded
    return phase, tasks


async def burst(rig: Rig, grids: list[str]) -> bool:
    """U2, U3 and V2 of every grid completed at once, each a re-encode, while U4 is clicked."""
    sandbox = rig.sandbox
    assert isinstance(sandbox, CostSandbox)
    sandbox.current = "reencode"
    before = {t.task_id for t in sandbox.tasks()}
    for kind, number in (("upscale", 2), ("upscale", 3), ("variation", 2)):
        await ask(rig, kind, grids, number)
    count = 3 * len(grids)
    await wait_until(lambda: len(new_tasks(rig, before)) >= count, 60, "the burst's tasks")
    await rig.settle(quiet=0.3)
    tasks = [t.task_id for t in new_tasks(rig, before)]
    reencoded = reencodes(rig)
    with bench_gc_paused():
        started = time.perf_counter()
        for task_id in tasks:
            sandbox.complete(task_id)
        await asyncio.sleep(0.05)
        handles = await asyncio.gather(
            *(
                rig.double.click(message, upscale_custom_id(task, 4), rig.users[n])
                for n, (message, task) in enumerate(grid_messages(rig, grids))
            )
        )
        acks = [await h.wait_ack(timeout=30) for h in handles]
        await wait_until(
            lambda: all(posted_message(rig, t) is not None for t in tasks), 120, "burst posted"
        )
        ended = time.perf_counter()
    posted = []
    for task_id in tasks:
        message = posted_message(rig, task_id)
        assert message is not None
        posted.append(message.created_at - sandbox.callback_sent[task_id])
    stalls = rig.late_ticks(started, ended)
    lags = [tick.late for tick in stalls]
    print(
        f"burst: {len(tasks)} results completed at once ({reencodes(rig) - reencoded} re-encodes), "
        f"{len(acks)} clicks meanwhile; all posted in {ended - started:.2f} s"
    )
    print(f"    completion → posted: {spread(posted)}")
    print(f"    ack of the clicks during the burst: {spread([a.ack_seconds for a in acks])}")
    if stalls:
        _, late, cpu = max(stalls, key=lambda tick: tick.late)
        # The probe's CPU figure covers the whole interval since the tick before: its 10 ms
        # and the lateness.
        print(
            f"    the longest stall: the loop thread ran {cpu * 1000:.1f} ms of its "
            f"{(late + PROBE_INTERVAL) * 1000:.1f} ms since the tick before (the rest it "
            f"waited: for the GIL, or for a CPU)"
        )
    return print_figure(
        "    event loop's longest stall during the burst",
        f"{max(lags, default=0) * 1000:.1f} ms ({len(lags)} ticks 2 ms or more late, "
        f"{sum(lag >= TARGET_STALL_MS / 1000 for lag in lags)} of them "
        f"{TARGET_STALL_MS:g} ms or more)",
        f"≤ {TARGET_STALL_MS:g} ms",
        max(lags, default=0) * 1000 <= TARGET_STALL_MS,
    )


def print_counts(phase: Phase) -> None:
    """What one job of the phase did, counted: the statements and requests behind its CPU."""
    print(f"what one {phase.set} {phase.kind} did (bench/costtrace counts, per job):")
    for name, count in sorted(phase.counts.items(), key=lambda item: (-item[1], item[0])):
        if "(all)" not in name:
            print(f"    {count / phase.jobs:5.2f}  {name}")


def spread(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"n={len(ms)}  p50={statistics.median(ms):.1f} ms  p99={percentile(ms, 0.99):.1f} ms  "
        f"max={max(ms):.1f} ms"
    )


def print_profile(path: Path) -> None:
    stats = pstats.Stats(str(path))
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        stats.stream = out
        stats.sort_stats(order).print_stats(10)
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print(f"profile of the bot's main thread, top ten by {order} (cProfile):")
        print("\n".join("    " + line for line in lines[start:] if line.strip()))


async def run(
    jobs: int, pause: float, profile: Path | None, only: list[str], env: dict[str, str]
) -> None:
    started = time.perf_counter()
    sets = image_sets(only)
    print(f"    images drawn in {time.perf_counter() - started:.1f} s:")
    for image_set in sets.values():
        print(f"      {image_set.describe()}")
    sandbox = CostSandbox(sets, api_key=API_KEY, task_seconds=None, image_size=64, credits=10**9)
    async with running_bot(
        users=max(20, jobs),
        env=env,
        trace_cost=True,
        profile=profile,
        sandbox=sandbox,
    ) as rig:
        # For a sampling profiler from outside: py-spy record -p <pid> (docs/performance.md).
        print(f"    bot process pid={rig.bot.pid}", flush=True)
        idle = await idle_rate(rig)
        print(f"    bot idle: {idle * 1000:.1f} ms of CPU a second (subtracted below)")
        if profile is not None:
            rig.profiling(True)
        phases: list[Phase] = []
        burst_grids: list[str] = []
        for set_name in sets:
            made, grids = await run_phase(rig, set_name, "generation", [], jobs, idle, pause)
            phases.append(made)
            for kind in KINDS[1:]:
                phases.append((await run_phase(rig, set_name, kind, grids, jobs, idle, pause))[0])
            burst_grids = grids
        print(
            "set       kind        jobs  CPU/job   completion→posted p50 / p99   stall  re-enc"
            "   per job: SQL  HTTP  log lines"
        )
        for p in phases:
            print(
                f"{p.set:<9} {p.kind:<11} {p.jobs:>4}  {p.cpu_ms:6.1f} ms  "
                f"{statistics.median(p.posted) * 1000:8.1f} / "
                f"{percentile(p.posted, 0.99) * 1000:6.1f} ms   "
                f"{p.stall * 1000:5.1f} ms  {p.reencoded:>4}   "
                f"{p.per_job('sql (all)'):12.1f} {p.per_job('http (all)'):5.1f} "
                f"{p.per_job('log lines'):10.1f}"
            )
        print_counts(next(p for p in phases if p.kind == "upscale"))
        plain = [p.cpu_ms for p in phases if p.kind == "upscale" and p.set != "reencode"]
        if plain:
            print_figure(
                "CPU per completed upscale, results that need no re-encode",
                ", ".join(f"{ms:.1f} ms" for ms in plain),
                f"≤ {TARGET_UPSCALE_CPU_MS:g} ms",
                max(plain) <= TARGET_UPSCALE_CPU_MS,
            )
        if "reencode" in sets:
            await burst(rig, burst_grids)
        if profile is not None:
            rig.profiling(False)
            await wait_until(profile.exists, 30, "the profile written")
        await rig.settle()
        print(
            f"resident memory: VmRSS {rig.proc.status('VmRSS') / MiB:.1f} MiB, "
            f"peak VmHWM {rig.proc.status('VmHWM') / MiB:.1f} MiB"
        )
    if profile is not None:
        print_profile(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per set and kind")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between completions")
    parser.add_argument("--profile", type=Path, help="cProfile the bot into this file")
    parser.add_argument(
        "--sets",
        default=",".join(SETS),
        help="which image sets, comma-separated (the burst needs reencode)",
    )
    args, env = begin(parser, "a job's cost with real-sized images")
    profile = args.profile.absolute() if args.profile else None
    only = args.sets.split(",")
    if unknown := set(only) - set(SETS):
        parser.error(f"unknown set(s) {', '.join(sorted(unknown))}: choose among {', '.join(SETS)}")
    asyncio.run(run(args.jobs, args.pause, profile, only, env))


if __name__ == "__main__":
    main()
