"""A video's cost to the bot: CPU per delivered video (the bot's own and its ffmpeg child's),
completion → posted, the event loop's longest stall during a burst of re-encodes, and memory.

The real bot process against the Discord double and the sandbox (bench.rig). Members animate
upscales (🎬 Animate (low motion)); the sandbox serves each video task's result as a real MP4
made once per run by the imageio-ffmpeg binary, noisy so that it compresses like footage:

- ``sd``: 854×480, 5 s, ~4 Mbit/s (~2.5 MB), a fresh animation, under any channel's limit;
- ``hd``: 1280×720, 21 s, ~7 Mbit/s (~18 MB), an HD video extended four times.

Phases, each of ``--videos`` videos completed one at a time (the next once the last is posted):

1. ``sd`` into a channel that takes 8 MiB: posted as it is;
2. ``hd`` into a channel that takes 50 MiB (a server at boost level 2): posted as it is;
3. ``hd`` into a channel that takes 8 MiB: each re-encoded by ``VideoFitter`` (ffmpeg in a child
   process, idle-scheduled, one at a time) before it is posted.

The channel's limit is the ``attachment_size_limit`` the double puts in each interaction, which
the bot keeps with the job at the click. **CPU per video** is the bot's (user + system, all its
threads, from /proc/<pid>/stat) from the first completion to the last result posted and the
bot quiet again, less its idle rate, divided by the videos; **child CPU** is the same for its
waited-for children (cutime + cstime of the bot in /proc/<pid>/stat: the encoders).
**Completion → posted** runs from the sandbox starting its callback POST to the double storing
the message. Then **a burst**: ``--burst`` videos of phase 3 completed at once while a member
clicks a button every 250 ms (acks timed); the bot's event loop is probed inside its process
(bench/costtrace, as bench.jobcost). The burst is run again with each encoder moved out of idle
scheduling by this process (SCHED_OTHER, nice 0, every thread, as soon as it is seen: it needs
CAP_SYS_NICE; nothing of the bot changes), to show what the idle scheduling buys. A sampler reads
the bot's VmRSS and each child's VmHWM from /proc every 50 ms.

    .venv/bin/python -m bench.videocost [--videos 4] [--burst 4] [--quick] [--env NAME=VALUE]

Run by hand; nothing asserts on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from bench.jobcost import idle_rate, posted_message, spread
from bench.rig import (
    API_KEY,
    BenchSandbox,
    CpuMeter,
    Grid,
    MiB,
    ProcStat,
    Rig,
    begin,
    bench_gc_paused,
    print_figure,
    running_bot,
    wait_until,
)
from bot.midjourney.sandbox import UPSCALE_TASK_TYPE, SandboxTask

LOW = "🎬 Animate (low motion)"
SMALL_CHANNEL = 8 * MiB
BOOSTED_CHANNEL = 50 * MiB
TARGET_STALL_MS = 50.0
CLICK_EVERY = 0.25
SAMPLE_EVERY = 0.05


# ----- the videos -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoFile:
    name: str
    width: int
    height: int
    seconds: float
    bitrate: str
    data: bytes = b""

    def describe(self) -> str:
        return (
            f"{self.name}: {self.width}×{self.height}, {self.seconds:g} s, "
            f"{len(self.data) / MiB:.1f} MiB ({len(self.data) * 8 / self.seconds / 1e6:.1f} Mbit/s)"
        )


SETS = (
    VideoFile("sd", 854, 480, 5, "4M"),
    VideoFile("hd", 1280, 720, 21, "7M"),
)


def make_video(spec: VideoFile) -> VideoFile:
    """The video made by the imageio-ffmpeg binary: a moving test pattern under fresh noise in
    every frame (which no encoder can predict), at a high bitrate."""
    with tempfile.TemporaryDirectory(prefix="mj-bench-video-") as scratch:
        out = Path(scratch) / "video.mp4"
        pattern = (
            f"testsrc2=size={spec.width}x{spec.height}:rate=24:duration={spec.seconds},"
            "noise=alls=20:allf=t+u"
        )
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                *("-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", pattern),
                *("-c:v", "libx264", "-preset", "ultrafast", "-b:v", spec.bitrate),
                *("-maxrate", spec.bitrate, "-bufsize", "14M", "-pix_fmt", "yuv420p"),
                *("-movflags", "+faststart", "-f", "mp4", str(out)),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        return VideoFile(
            spec.name, spec.width, spec.height, spec.seconds, spec.bitrate, out.read_bytes()
        )


class VideoSandbox(BenchSandbox):
    """Serves every video task's result as the file of the set current when it was created."""

    def __init__(self, videos: dict[str, VideoFile], **options: Any) -> None:
        super().__init__(**options)
        self.videos = videos
        self.current = "sd"
        self.set_of: dict[str, str] = {}

    def _start(self, task: SandboxTask) -> None:
        self.set_of[task.task_id] = self.current
        super()._start(task)

    def video_bytes_of(self, task_id: str, index: int) -> bytes:
        task = self.task(task_id)
        if not task.is_video or not 0 <= index < task.result_count:
            raise IndexError(f"task {task_id} has no video {index + 1}")
        return self.videos[self.set_of.get(task_id, self.current)].data


# ----- the bot's children -----------------------------------------------------------------------


def children_cpu(proc: ProcStat) -> float:
    """CPU seconds (user + system) of the bot's children it has waited for (the encoders)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sampler:
    """Every SAMPLE_EVERY: the bot's VmRSS, each child's VmHWM, and (``promote``) each child's
    threads moved out of SCHED_IDLE to SCHED_OTHER at nice 0."""

    bot: int
    promote: bool = False
    bot_rss: int = 0
    child_hwm: int = 0
    children: set[int] = field(default_factory=set)
    promoted: int = 0
    refused: int = 0

    def reset(self) -> None:
        self.bot_rss = self.child_hwm = self.promoted = self.refused = 0
        self.children = set()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.bot_rss = max(self.bot_rss, status_bytes(self.bot, "VmRSS"))
        for pid in children_of(self.bot):
            self.children.add(pid)
            with contextlib.suppress(OSError):
                self.child_hwm = max(self.child_hwm, status_bytes(pid, "VmHWM"))
            if self.promote:
                self._promote(pid)

    def _promote(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                try:
                    if os.sched_getscheduler(tid) != os.SCHED_IDLE:
                        continue
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                    os.setpriority(os.PRIO_PROCESS, tid, 0)
                    self.promoted += 1
                except PermissionError:
                    self.refused += 1
                except OSError:
                    pass

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY)


# ----- measuring --------------------------------------------------------------------------------


_REENCODED = re.compile(r"video re-encoded .*?bytes=(\d+)->(\d+) .*?idle=(\w+) ms=(\d+)")


@dataclass
class Encode:
    before: int
    after: int
    idle: bool
    ms: float


def encodes(rig: Rig, since: int) -> list[Encode]:
    """The fitter's log lines from line ``since`` on."""
    found = []
    for line in rig.bot.log[since:]:
        match = _REENCODED.search(line)
        if match:
            found.append(Encode(int(match[1]), int(match[2]), match[3] == "yes", float(match[4])))
    return found


@dataclass
class Phase:
    name: str
    limit: int
    videos: int
    bot_ms: float
    child_ms: float
    posted: list[float]
    sizes: list[int]
    encodes: list[Encode]
    bot_rss: int
    child_hwm: int
    stall: float
    stall_context: str
    wall: float = 0.0
    acks: list[float] = field(default_factory=list)
    promoted: int = 0


def video_tasks(rig: Rig, before: set[str]) -> list[SandboxTask]:
    return [t for t in rig.sandbox.tasks() if t.is_video and t.task_id not in before]


async def upscales(rig: Rig, count: int) -> tuple[list[Grid], list[int]]:
    """``count`` upscales posted (U1–U4 of fresh grids): the messages under which 🎬 sits."""
    grids = await rig.show_grids(-(-count // 4))
    sandbox = rig.sandbox
    sandbox.task_seconds = 0
    before = {t.task_id for t in sandbox.tasks()}
    handles = await asyncio.gather(
        *(
            rig.click(grid, n, rig.users[0])
            for grid, n in itertools.islice(itertools.product(grids, range(1, 5)), count)
        )
    )
    for handle in handles:
        await handle.wait_ack(timeout=30)

    def done() -> list[int] | None:
        tasks = [
            t.task_id
            for t in sandbox.tasks()
            if t.task_id not in before and t.task_type == UPSCALE_TASK_TYPE
        ]
        messages = [posted_message(rig, t) for t in tasks]
        if len(tasks) < count or None in messages:
            return None
        return [m.id for m in messages if m is not None]

    await wait_until(lambda: done() is not None, 120, f"{count} upscales posted")
    sandbox.task_seconds = None
    await rig.settle()
    found = done()
    assert found is not None
    return grids, found


async def animate(
    rig: Rig, messages: list[int], set_name: str, limit: int
) -> tuple[list[str], float]:
    """🎬 Animate (low motion) under each upscale, the videos left running at the API; their
    task ids and the bot's CPU seconds per click (click → submitted)."""
    sandbox = rig.sandbox
    assert isinstance(sandbox, VideoSandbox)
    sandbox.current = set_name
    # Each interaction tells the bot the channel's limit, and the bot keeps it with the job.
    rig.double.attachment_size_limit = limit
    before = {t.task_id for t in sandbox.tasks()}
    cpu = rig.proc.cpu_seconds()
    handles = []
    for n, message_id in enumerate(messages):
        button = rig.double.message(message_id).button(label=LOW)
        assert button.custom_id is not None
        handles.append(
            await rig.double.click(message_id, button.custom_id, rig.users[n % len(rig.users)])
        )
    for handle in handles:
        await handle.wait_ack(timeout=30)
    await wait_until(
        lambda: len(video_tasks(rig, before)) >= len(messages), 60, f"{len(messages)} videos"
    )
    await rig.settle(quiet=0.3)
    per_click = (rig.proc.cpu_seconds() - cpu) / len(messages)
    return [t.task_id for t in video_tasks(rig, before)], per_click


def posted_video(rig: Rig, task_id: str) -> tuple[float, int] | None:
    message = posted_message(rig, task_id)
    if message is None or not message.attachments:
        return None
    return message.created_at, len(message.attachments[0][1])


def is_posted(rig: Rig, task_id: str) -> bool:
    return posted_video(rig, task_id) is not None


@dataclass
class Started:
    """What a phase's figures are counted from."""

    since: int
    at: float
    cpu: float
    child: float

    @classmethod
    def now(cls, rig: Rig) -> Started:
        proc = rig.proc
        return cls(len(rig.bot.log), time.perf_counter(), proc.cpu_seconds(), children_cpu(proc))


def measured(
    rig: Rig,
    sampler: Sampler,
    name: str,
    limit: int,
    tasks: list[str],
    idle: float,
    start: Started,
    ended: float,
    settled: float,
    acks: list[float] | None = None,
) -> Phase:
    """The phase's figures: CPU from ``start`` to ``settled`` less the idle rate, the event
    loop's stalls up to ``ended`` (the last video posted), each video's completion → posted."""
    posted, sizes = [], []
    for task_id in tasks:
        got = posted_video(rig, task_id)
        assert got is not None
        posted.append(got[0] - rig.sandbox.callback_sent[task_id])
        sizes.append(got[1])
    used = rig.proc.cpu_seconds() - start.cpu - idle * (settled - start.at)
    return Phase(
        name,
        limit,
        len(tasks),
        used / len(tasks) * 1000,
        (children_cpu(rig.proc) - start.child) / len(tasks) * 1000,
        posted,
        sizes,
        encodes(rig, start.since),
        sampler.bot_rss,
        sampler.child_hwm,
        max(rig.loop_lags(start.at, ended), default=0.0),
        around_worst_stall(rig, start.at, ended),
        ended - start.at,
        acks or [],
        sampler.promoted,
    )


async def one_at_a_time(
    rig: Rig, sampler: Sampler, name: str, tasks: list[str], limit: int, idle: float
) -> Phase:
    sampler.reset()
    start = Started.now(rig)
    for task_id in tasks:
        rig.sandbox.complete(task_id)
        await wait_until(functools.partial(is_posted, rig, task_id), 600, task_id)
        await asyncio.sleep(0.2)
    await rig.settle(quiet=0.3)
    ended = time.perf_counter()
    return measured(rig, sampler, name, limit, tasks, idle, start, ended, ended)


async def burst(
    rig: Rig, sampler: Sampler, grids: list[Grid], tasks: list[str], idle: float, promote: bool
) -> Phase:
    """Every video completed at once, while a member clicks every CLICK_EVERY seconds."""
    sampler.reset()
    sampler.promote = promote
    buttons = itertools.cycle(itertools.product(grids, range(2, 5)))
    handles = []
    try:
        with bench_gc_paused():
            start = Started.now(rig)
            for task_id in tasks:
                rig.sandbox.complete(task_id)
            while not all(posted_video(rig, t) is not None for t in tasks):
                if time.perf_counter() - start.at > 900:
                    raise TimeoutError("the burst's videos not all posted in 900 s")
                grid, number = next(buttons)
                handles.append(await rig.click(grid, number, rig.users[-1]))
                await asyncio.sleep(CLICK_EVERY)
            ended = time.perf_counter()
            acks = [await h.wait_ack(timeout=30) for h in handles]
        await rig.settle(quiet=0.3)
    finally:
        sampler.promote = False
    name = "burst, encoder idle" if not promote else "burst, encoder not idle"
    return measured(
        rig,
        sampler,
        name,
        SMALL_CHANNEL,
        tasks,
        idle,
        start,
        ended,
        time.perf_counter(),
        [a.ack_seconds for a in acks],
    )


def around_worst_stall(rig: Rig, since: float, until: float) -> str:
    """When the loop's worst stall in [since, until] began, and what the bench saw the bot do
    from 0.5 s before it to its end: the probe cannot say what held the loop, this hints."""
    ticks = rig.late_ticks(since, until)
    if not ticks:
        return "no tick 2 ms late"
    due, late, _ = max(ticks, key=lambda tick: tick.late)
    sandbox = rig.sandbox
    videos = {t.task_id for t in sandbox.tasks() if t.is_video}
    events = [
        (t, "video download asked")
        for e, k, t in sandbox.call_times
        if e == "files" and k in videos
    ]
    events += [(t, "callback sent") for t in sandbox.callback_sent.values()]
    events += [
        (m.created_at, "message with a video stored")
        for m in rig.double.messages(ephemeral=False)
        if any(name.endswith(".mp4") for name, _ in m.attachments)
    ]
    near = sorted((t - due, what) for t, what in events if due - 0.5 <= t <= due + late)
    seen = ", ".join(f"{what} at {ms * 1000:+.0f} ms" for ms, what in near) or "nothing"
    return f"{late * 1000:.1f} ms from +{due - since:.2f} s; around it: {seen}"


def report(phases: list[Phase]) -> None:
    print(
        "\nphase                        limit  videos  bot CPU/video  child CPU/video  "
        "completion→posted p50 / max   posted size   re-encodes"
    )
    for p in phases:
        idle = sum(e.idle for e in p.encodes)
        # A burst's CPU includes the clicks made meanwhile (see the note below the table).
        name = f"{p.name} *" if p.acks else p.name
        print(
            f"{name:<28} {p.limit // MiB:>3} MiB {p.videos:>5}  {p.bot_ms:9.0f} ms  "
            f"{p.child_ms:11.0f} ms   {statistics.median(p.posted):9.2f} / "
            f"{max(p.posted):6.2f} s   {statistics.mean(p.sizes) / MiB:6.1f} MiB   "
            f"{len(p.encodes)} (idle {idle})"
        )
    if any(p.acks for p in phases):
        print(
            "* with the clicks made during the burst (each a few to 25 ms of the bot's CPU): "
            "compare its child CPU, not its bot CPU"
        )
    print("\nphase                        bot VmRSS peak  encoder VmHWM  loop stall  encode (each)")
    for p in phases:
        each = ", ".join(f"{e.ms / 1000:.1f} s" for e in p.encodes) or "—"
        print(
            f"{p.name:<28} {p.bot_rss / MiB:10.1f} MiB  {p.child_hwm / MiB:9.1f} MiB  "
            f"{p.stall * 1000:7.1f} ms  {each}"
        )
    print("\nthe worst stall of each phase, and what the bench saw meanwhile:")
    for p in phases:
        print(f"    {p.name}: {p.stall_context}")


def report_burst(p: Phase) -> None:
    print(
        f"\n{p.name}: {p.videos} videos completed at once, all posted after {p.wall:.1f} s "
        f"({len(p.encodes)} re-encodes, one at a time)"
        + (f"; {p.promoted} encoder threads moved out of SCHED_IDLE" if p.promoted else "")
    )
    print(f"    completion → posted: {spread(p.posted)}")
    if p.acks:
        print(f"    acks of {len(p.acks)} clicks, one every {CLICK_EVERY:g} s: {spread(p.acks)}")
    print_figure(
        "    event loop's longest stall during the burst",
        f"{p.stall * 1000:.1f} ms",
        f"≤ {TARGET_STALL_MS:g} ms",
        p.stall * 1000 <= TARGET_STALL_MS,
    )


async def run(
    videos: int, burst_size: int, compare: bool, not_idle_first: bool, env: dict[str, str]
) -> None:
    started = time.perf_counter()
    made = await asyncio.gather(*(asyncio.to_thread(make_video, spec) for spec in SETS))
    files = {v.name: v for v in made}
    print(
        f"    videos made by {Path(imageio_ffmpeg.get_ffmpeg_exe()).name} in "
        f"{time.perf_counter() - started:.1f} s:"
    )
    for video in made:
        print(f"      {video.describe()}")
    if len(files["hd"].data) <= SMALL_CHANNEL or len(files["sd"].data) > SMALL_CHANNEL:
        raise RuntimeError("the videos' sizes do not make the phases they are for")
    sandbox = VideoSandbox(files, api_key=API_KEY, task_seconds=None, image_size=64, credits=10**9)
    settings = {"DAILY_VIDEOS_PER_USER": "1000000", **env}
    async with running_bot(users=8, env=settings, trace_cost=True, sandbox=sandbox) as rig:
        print(f"    bot process pid={rig.bot.pid}", flush=True)
        sampler = Sampler(rig.bot.pid)
        sampling = asyncio.create_task(sampler.run())
        try:
            order = (True, False) if not_idle_first else (False, True)
            await phases(rig, sampler, videos, burst_size, order[: 2 if compare else 1])
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling


async def phases(
    rig: Rig, sampler: Sampler, videos: int, burst_size: int, promotes: tuple[bool, ...]
) -> None:
    """The three phases one video at a time, then a burst for each of ``promotes`` (whether
    its encoders are moved out of idle scheduling)."""
    grids, messages = await upscales(rig, 3 * videos + len(promotes) * burst_size)
    idle = await idle_rate(rig)
    rss_idle = rig.proc.status("VmRSS")
    print(
        f"    bot idle: {idle * 1000:.1f} ms of CPU a second (subtracted below), "
        f"VmRSS {rss_idle / MiB:.1f} MiB with {len(messages)} upscales posted"
    )
    meter = CpuMeter(rig.proc)
    done: list[Phase] = []
    clicks: list[float] = []
    for name, set_name, limit in (
        ("sd, fits", "sd", SMALL_CHANNEL),
        ("hd, fits (boosted)", "hd", BOOSTED_CHANNEL),
        ("hd, re-encoded", "hd", SMALL_CHANNEL),
    ):
        chosen, messages = messages[:videos], messages[videos:]
        tasks, per_click = await animate(rig, chosen, set_name, limit)
        clicks.append(per_click)
        done.append(await one_at_a_time(rig, sampler, name, tasks, limit, idle))
        print(f"    {name}: done ({done[-1].wall:.1f} s)", flush=True)
    for promote in promotes:
        chosen, messages = messages[:burst_size], messages[burst_size:]
        tasks, per_click = await animate(rig, chosen, "hd", SMALL_CHANNEL)
        clicks.append(per_click)
        done.append(await burst(rig, sampler, grids, tasks, idle, promote))
        print(f"    {done[-1].name}: done ({done[-1].wall:.1f} s)", flush=True)
    print(f"    {meter.line()} over the measured part")
    print(
        f"    bot CPU per 🎬 click (click → submitted): "
        f"{statistics.mean(clicks) * 1000:.1f} ms (not in the figures below)"
    )
    report(done)
    for p in done:
        if p.acks:
            report_burst(p)
    refused = sampler.refused
    if refused:
        print(
            f"    {refused} encoder threads could not be moved out of SCHED_IDLE (no CAP_SYS_NICE)"
        )
    print(
        f"\nresident memory: VmRSS {rig.proc.status('VmRSS') / MiB:.1f} MiB at the end, "
        f"peak VmHWM {rig.proc.status('VmHWM') / MiB:.1f} MiB "
        f"(idle with the upscales posted: {rss_idle / MiB:.1f} MiB)"
    )
    single = next(p for p in done if p.encodes and not p.acks)
    plain = next(p for p in done if p.name.startswith("hd, fits"))
    print(
        f"a video re-encoded to fit, one at a time: {single.bot_ms:.0f} ms of the bot's CPU "
        f"(as it is: {plain.bot_ms:.0f} ms) + {single.child_ms / 1000:.1f} s of the encoder's; "
        f"completion → posted p50 {statistics.median(single.posted):.1f} s "
        f"(as it is: {statistics.median(plain.posted):.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4, help="videos per phase")
    parser.add_argument("--burst", type=int, default=4, help="videos completed at once")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 videos a phase, a burst of 2, no burst without idle scheduling (under a minute)",
    )
    parser.add_argument(
        "--not-idle-first",
        action="store_true",
        help="the burst without idle scheduling before the one with it",
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the burst without idle scheduling"
    )
    args, env = begin(parser, "a video's cost: delivered as it is and re-encoded to fit")
    videos, size = (2, 2) if args.quick else (args.videos, args.burst)
    compare = not (args.quick or args.no_compare)
    asyncio.run(run(videos, size, compare, args.not_idle_first, env))


if __name__ == "__main__":
    main()
