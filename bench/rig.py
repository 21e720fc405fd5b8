"""What every bench script shares: the real bot process against the Discord double and a sandbox
API, both served by the bench process, and the printing of figures against their targets.

The bot is what ``python -m bot`` runs (through tests/fakes/bot_process.py, which only points
discord.py at the double), in a process of its own, configured by environment variables as an
operator would. The double and the sandbox live in this process, so they see every request and
time it on one clock (``time.perf_counter``). The bench process competes with the bot for the
machine's CPUs: on a 2-CPU machine that is a real cost, and every script prints both processes'
CPU use so that it can be judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web

from bot.grid import parse_upscale_custom_id, upscale_custom_id
from bot.jobs.store import Job, JobState, JobStore
from bot.midjourney.sandbox import SandboxAPI, SandboxTask, encode_png
from tests.fakes.bot_process import REPO_ROOT, BotProcess
from tests.fakes.cluster import free_port
from tests.fakes.discord_double import DiscordDouble, InteractionHandle, StoredMessage

TOKEN = "bench-token-for-the-discord-double"
API_KEY = "bench-api-key"
MiB = 1024 * 1024

# Settings that keep the bot's pacing and per-user limits out of the speed figures: the vendor's
# 20 tasks per 10 s (MJ_SUBMIT_RATE) would otherwise make 100 clicks wait up to 50 s for their
# turn, and MAX_JOBS_PER_USER=3 would refuse most of a click storm.
UNTHROTTLED = {
    "MJ_SUBMIT_RATE": "1000",
    "QUEUE_LIMIT": "10000",
    "MAX_JOBS_PER_USER": "1000",
    # A few members make hundreds of grids and clicks: allowances far above that, but set, so
    # that every click pays for counting them as an owner's would.
    "DAILY_IMAGINES_PER_USER": "1000000",
    "DAILY_UPSCALES_PER_USER": "1000000",
    "DAILY_JOBS_PER_SERVER": "1000000",
    # One member shows hundreds of grids with /upscale task_id:.
    "GRID_REPOSTS_PER_HOUR": "1000000",
}


# ----- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_latency(
    name: str, seconds: list[float], *, p50: float | None = None, p99: float | None = None
) -> bool:
    """One line: count, p50/p99/max in ms, the target and PASS/MISS; True when met."""
    ms = [s * 1000 for s in seconds]
    got50, got99 = statistics.median(ms), percentile(ms, 0.99)
    targets, ok = [], True
    if p50 is not None:
        targets.append(f"p50 ≤ {p50:g} ms")
        ok &= got50 <= p50
    if p99 is not None:
        targets.append(f"p99 ≤ {p99:g} ms")
        ok &= got99 <= p99
    print(
        f"{name}\n    n={len(ms)}  p50={got50:.1f} ms  p90={percentile(ms, 0.9):.1f} ms  "
        f"p99={got99:.1f} ms  max={max(ms):.1f} ms   target: {', '.join(targets)}   "
        f"{verdict(ok)}",
        flush=True,
    )
    return ok


def print_figure(name: str, value: str, target: str, ok: bool) -> bool:
    print(f"{name}\n    {value}   target: {target}   {verdict(ok)}", flush=True)
    return ok


@contextlib.contextmanager
def bench_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection in the bench process while a burst is timed: the double and
    the sandbox are the measuring instrument, and a full collection of their objects (stored
    messages, images) can stop this process for tens of milliseconds. The bot process is left
    as it is."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / MiB:.1f} GiB"
    return (
        f"{os.cpu_count()} CPU(s), {model}, {ram} RAM, Python {platform.python_version()} "
        f"({platform.system()} {platform.release()})"
    )


def header(title: str) -> None:
    print(f"== {title}\n   machine: {machine()}", flush=True)


# ----- the process under test -------------------------------------------------------------------


@dataclass
class ProcStat:
    """CPU seconds (user + system) of a process, read from /proc."""

    pid: int

    def cpu_seconds(self) -> float:
        user, system = self._times()
        return (user + system) / os.sysconf("SC_CLK_TCK")

    def system_seconds(self) -> float:
        """The part of its CPU seconds spent in the kernel (socket copies, mostly)."""
        return self._times()[1] / os.sysconf("SC_CLK_TCK")

    def _times(self) -> tuple[int, int]:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])

    def status(self, key: str) -> int:
        """A /proc/<pid>/status value in bytes (VmRSS, VmHWM, RssAnon, ...)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)


def late_ticks(lag_log: Path | None, since: float, until: float) -> list[LateTick]:
    """The ticks of bench/costtrace's loop probe in ``lag_log`` that were 2 ms or more late
    and due within [since, until]."""
    if lag_log is None or not lag_log.exists():
        return []
    ticks = [
        LateTick(*map(float, line.split())) for line in lag_log.read_text().split("\n") if line
    ]
    return [tick for tick in ticks if since <= tick.due <= until]


async def counted(path: Path, signal_bot: Callable[[signal.Signals], None]) -> Counter[str]:
    """What a bot under bench/costtrace has done so far, written to ``path`` on SIGRTMIN."""
    _forget(path)
    signal_bot(signal.SIGRTMIN)
    await wait_until(path.exists, 10, "the bot's counts")
    return _counts_in(path)


def _forget(path: Path) -> None:
    path.unlink(missing_ok=True)


def _counts_in(path: Path) -> Counter[str]:
    return Counter(json.loads(path.read_text()))


async def settled(proc: ProcStat, quiet: float = 0.5, timeout: float = 30) -> None:
    """Until ``proc`` has used next to no CPU for ``quiet`` seconds (its queues are empty)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = proc.cpu_seconds()
        await asyncio.sleep(quiet)
        if proc.cpu_seconds() - before <= 0.02 * quiet + 0.011:
            return


class CpuMeter:
    """CPU share of the bot and of this bench process over a stretch of time."""

    def __init__(self, bot: ProcStat) -> None:
        self._bot = bot
        self._start = (time.perf_counter(), bot.cpu_seconds(), time.process_time())

    def read(self) -> tuple[float, float]:
        wall, bot, bench = self._start
        elapsed = time.perf_counter() - wall
        return (
            (self._bot.cpu_seconds() - bot) / elapsed,
            (time.process_time() - bench) / elapsed,
        )

    def line(self) -> str:
        bot, bench = self.read()
        return f"CPU: bot process {bot:.0%} of one core, bench process {bench:.0%}"


# ----- the sandbox, instrumented ----------------------------------------------------------------


class BenchSandbox(SandboxAPI):
    """The project's sandbox API with timestamps, and optionally larger upscale results.

    ``call_times`` holds (endpoint, task id or None, perf_counter) for every request as it
    arrives; ``created_at``, ``completed_at`` and ``callback_sent`` the moments each task was
    created, finished, and its first callback POST started.
    ``upscale_png_bytes``: the sandbox draws flat checkerboards that PNG compresses a
    thousandfold (an 8192 px upscale is 0.4 MiB), so for a result of a given size each upscale
    is served as an incompressible (noise) PNG of about that many bytes, like a photograph. The
    PNG is made when first asked for (``image_bytes``), which a script does before the task
    completes so that encoding it is not timed.
    """

    def __init__(self, *, upscale_png_bytes: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.upscale_png_bytes = upscale_png_bytes
        self.call_times: list[tuple[str, str | None, float]] = []
        self.callback_sent: dict[str, float] = {}
        self.completed_at: dict[str, float] = {}
        self.created_at: dict[str, float] = {}

    def _record(self, endpoint: str, body: Any) -> None:
        task_id = body.get("taskId") if isinstance(body, dict) else None
        if endpoint == "files" and isinstance(body, str):
            # A result file is named <task>_0_<index>.png.
            task_id = body.rsplit("_0_", 1)[0]
        self.call_times.append((endpoint, task_id, time.perf_counter()))
        super()._record(endpoint, body)

    async def _post_callback(
        self, task: SandboxTask, payload: dict[str, Any]
    ) -> tuple[int | None, str | None]:
        self.callback_sent.setdefault(task.task_id, time.perf_counter())
        return await super()._post_callback(task, payload)

    def _start(self, task: SandboxTask) -> None:
        self.created_at[task.task_id] = time.perf_counter()
        super()._start(task)

    def complete(self, task_id: str) -> None:
        self.completed_at[task_id] = time.perf_counter()
        super().complete(task_id)

    def image_bytes(self, task_id: str, index: int) -> bytes:
        task = self.task(task_id)
        if self.upscale_png_bytes is None or task.parent_task_id is None:
            return super().image_bytes(task_id, index)
        key = (task_id, index)
        if key not in self._png_cache:
            side = max(1, int((self.upscale_png_bytes / 3) ** 0.5))
            noise = random.Random(task_id)
            rows = [noise.randbytes(3 * side) for _ in range(side)]
            self._png_cache[key] = encode_png(rows, {"Source": f"mj bench upscale {task_id}"})
        return self._png_cache[key]

    def times(self, endpoint: str, task_id: str | None = None) -> list[float]:
        return [t for e, k, t in self.call_times if e == endpoint and task_id in (None, k)]

    def upscale_of(self, parent_task_id: str, image_index: int) -> SandboxTask | None:
        for task in self._tasks.values():
            if task.parent_task_id == parent_task_id and task.image_index == image_index:
                return task
        return None


# ----- the rig ----------------------------------------------------------------------------------


@dataclass
class Grid:
    message: StoredMessage
    task_id: str


class LateTick(NamedTuple):
    """One line of the loop probe's log (bench/costtrace): when the tick was due (perf_counter),
    how late it fired, and the loop thread's CPU seconds since the tick before."""

    due: float
    late: float
    cpu: float


@dataclass
class Rig:
    double: DiscordDouble
    sandbox: BenchSandbox
    bot: BotProcess
    store: JobStore
    port: int
    env: dict[str, str]
    users: list[int] = field(default_factory=list)
    gc_log: Path | None = None
    lag_log: Path | None = None
    profile: Path | None = None

    @property
    def listener(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gc_pauses(self, since: float, until: float) -> list[tuple[float, float, int]]:
        """The bot's garbage-collection pauses of 1 ms or more that overlap [since, until]
        (perf_counter seconds), as (start, seconds, generation); needs ``trace_gc=True``."""
        if self.gc_log is None or not self.gc_log.exists():
            return []
        pauses = []
        for line in self.gc_log.read_text().splitlines():
            start, seconds, generation = line.split()
            begun, took = float(start), float(seconds)
            if begun <= until and begun + took >= since:
                pauses.append((begun, took, int(generation)))
        return pauses

    def loop_lags(self, since: float, until: float) -> list[float]:
        """How late (seconds) the bot's loop probe fired, each time it was 2 ms or more late,
        for the ticks due within [since, until]; needs ``trace_cost=True``."""
        return [tick.late for tick in self.late_ticks(since, until)]

    def late_ticks(self, since: float, until: float) -> list[LateTick]:
        """The probe's ticks 2 ms or more late that were due within [since, until], with the
        loop thread's CPU since the tick before (lateness with little of it is the loop waiting:
        the GIL, a CPU; not a long callback)."""
        return late_ticks(self.lag_log, since, until)

    async def counts(self) -> Counter[str]:
        """What the bot has done so far, counted (SQL statements, HTTP requests, log lines:
        bench/costtrace); needs ``trace_cost=True``."""
        if self.lag_log is None:
            return Counter()
        return await counted(self.lag_log.with_name("counts.json"), self.bot._signal)

    def profiling(self, on: bool) -> None:
        """Start (True) or stop and write (False) the bot's cProfile; needs a ``profile`` path
        given to ``running_bot``."""
        self.bot._signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    @property
    def proc(self) -> ProcStat:
        return ProcStat(self.bot.pid)

    async def show_grids(
        self, count: int, *, via: str = "imagine", concurrency: int = 8
    ) -> list[Grid]:
        """``count`` grids with U1–U4 in the channel.

        ``via="imagine"``: made by ``/imagine`` as users make them (the sandbox finishes each
        generation at once), so the bot's store knows each grid's job, as for any grid the bot
        generated. ``via="upscale"``: shown by ``/upscale task_id:`` of generations seeded in the
        sandbox, grids the bot never generated (a click on one first checks the task with the
        API).
        """
        user = self.users[0]
        before = {m.id for m in self.double.messages()}
        gate = asyncio.Semaphore(concurrency)
        saved = self.sandbox.task_seconds
        self.sandbox.task_seconds = 0

        async def show(task_id: str) -> None:
            async with gate:
                handle = await self.double.slash("upscale", {"task_id": task_id}, user)
                # The bot's "✅ Posted the four images." comes after the grid is posted.
                await handle.wait_followup(timeout=60)

        if via == "imagine":
            await imagine_all(self.double, user, [self.double.channel_id], count, concurrency)
        else:
            seeded = [self.sandbox.add_generation(prompt=f"bench grid {n}") for n in range(count)]
            await asyncio.gather(*(show(t) for t in seeded))

        def grids() -> list[Grid]:
            found = []
            for message in self.double.messages(ephemeral=False):
                task = grid_task(message)
                if message.id not in before and task is not None and len(message.files) == 4:
                    found.append(Grid(message, task))
            return found

        try:
            await wait_until(lambda: len(grids()) >= count, 120, f"{count} grids")
        except TimeoutError:
            raise RuntimeError(f"grids not shown\n{self.bot.stderr()[-3000:]}") from None
        finally:
            self.sandbox.task_seconds = saved
        if via == "imagine":
            # Until every /imagine job is delivered, so that none of its work is left over.
            await wait_until(lambda: not _status_lines(self.double), 60, "status lines gone")
        return grids()[:count]

    async def click(self, grid: Grid, number: int, user: int) -> InteractionHandle:
        return await self.double.click(
            grid.message.id, upscale_custom_id(grid.task_id, number), user
        )

    async def upscale_submitted(self, jobs: int) -> list[Job]:
        """Click U1–U4 on enough fresh grids for ``jobs`` upscales; those jobs once submitted."""
        grids = await self.show_grids(-(-jobs // 4))
        handles = await asyncio.gather(
            *(
                self.click(grid, number, self.users[number - 1])
                for grid in grids
                for number in range(1, 5)
            )
        )
        for handle in handles:
            await handle.wait_ack(timeout=30)
        return (await self.wait_jobs(grids, JobState.SUBMITTED))[:jobs]

    async def wait_jobs(
        self,
        grids: list[Grid],
        state: JobState | tuple[JobState, ...],
        *,
        timeout: float = 60,
        numbers: tuple[int, ...] = (1, 2, 3, 4),
    ) -> list[Job]:
        """Until the upscales of these grids are all in ``state`` (read from the bot's database
        file); they come back in grid order, U1 to U4."""
        states = state if isinstance(state, tuple) else (state,)
        deadline = time.monotonic() + timeout
        while True:
            jobs = [
                await self.store.live_twin("upscale", g.task_id, n - 1)
                for g in grids
                for n in numbers
            ]
            if all(j is not None and j.state in states for j in jobs):
                return [j for j in jobs if j is not None]
            if time.monotonic() > deadline:
                seen = [j.state if j else None for j in jobs]
                raise TimeoutError(f"jobs not all {states}: {seen}\n{self.bot.stderr()[-3000:]}")
            await asyncio.sleep(0.1)

    async def settle(self, quiet: float = 0.5, timeout: float = 30) -> None:
        """Until the bot has used next to no CPU for ``quiet`` seconds (its queues are empty)."""
        await settled(self.proc, quiet, timeout)


async def imagine_all(
    double: DiscordDouble, user: int, channels: list[int], count: int, concurrency: int = 8
) -> None:
    """``/imagine`` ``count`` times in each of ``channels``, ``concurrency`` at a time, until
    each is acknowledged (the grids follow once the sandbox has finished them)."""
    gate = asyncio.Semaphore(concurrency)

    async def imagine(channel: int, n: int) -> None:
        async with gate:
            handle = await double.slash(
                "imagine", {"prompt": f"bench grid {n}"}, user, channel_id=channel
            )
            await handle.wait_ack(timeout=60)

    await asyncio.gather(*(imagine(c, n) for c in channels for n in range(count)))


def _status_lines(double: DiscordDouble) -> list[StoredMessage]:
    return [m for m in double.messages(ephemeral=False) if m.content.startswith("⏳")]


def grid_task(message: StoredMessage) -> str | None:
    for button in message.buttons():
        parsed = parse_upscale_custom_id(button.custom_id or "")
        if parsed is not None:
            return parsed[0]
    return None


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def running_bot(
    *,
    callbacks: bool = True,
    env: Mapping[str, str] | None = None,
    users: int = 1,
    trace_gc: bool = False,
    trace_cost: bool = False,
    profile: Path | None = None,
    sandbox: BenchSandbox | None = None,
    **sandbox_options: Any,
) -> AsyncIterator[Rig]:
    """Start the double, the sandbox (served here, as the remote API) and one bot process.

    ``callbacks``: PUBLIC_URL names the bot's listener, so the sandbox calls back; without it the
    bot polls. ``env`` adds or overrides bot settings (UNTHROTTLED is always applied).
    ``trace_gc``: the bot process logs its garbage-collection pauses (bench/gctrace), read with
    ``Rig.gc_pauses``. ``trace_cost``: the bot's event loop is probed for stalls
    (bench/costtrace), read with ``Rig.loop_lags``, and with ``profile`` (an absolute path) its
    main thread can be profiled with cProfile (``Rig.profiling``) into that file; not with
    ``trace_gc`` (one sitecustomize).
    ``sandbox``: one made by the script (a subclass), instead of a BenchSandbox of
    ``sandbox_options``.
    """
    if trace_gc and trace_cost:
        raise ValueError("trace_gc and trace_cost each need the bot's sitecustomize")
    sandbox_options.setdefault("task_seconds", None)
    sandbox_options.setdefault("image_size", 64)
    # The sandbox charges credits like the vendor; a bench must not run out.
    sandbox_options.setdefault("credits", 10**9)
    if sandbox is None:
        sandbox = BenchSandbox(api_key=API_KEY, **sandbox_options)
    runner, api_port = await serve(sandbox.app)
    try:
        async with DiscordDouble() as double:
            with tempfile.TemporaryDirectory(prefix="mj-bench-") as tmp:
                port = free_port()
                database_url = f"sqlite:///{tmp}/bot.sqlite3"
                bot_env = {
                    "DISCORD_TOKEN": TOKEN,
                    "MJ_API_BASE_URL": f"http://127.0.0.1:{api_port}",
                    "MJ_API_KEY": API_KEY,
                    "DATABASE_URL": database_url,
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "DISCORD_GUILD_ID": str(double.guild_id),
                    **UNTHROTTLED,
                    **(env or {}),
                }
                if callbacks:
                    bot_env["PUBLIC_URL"] = f"http://127.0.0.1:{port}"
                gc_log = None
                if trace_gc:
                    gc_log = Path(tmp) / "gc.log"
                    bot_env["PYTHONPATH"] = f"{Path(__file__).parent / 'gctrace'}:{REPO_ROOT}"
                    bot_env["BENCH_GC_LOG"] = str(gc_log)
                lag_log = None
                if trace_cost:
                    lag_log = Path(tmp) / "lag.log"
                    bot_env["PYTHONPATH"] = f"{Path(__file__).parent / 'costtrace'}:{REPO_ROOT}"
                    bot_env["BENCH_LOOP_LAG"] = str(lag_log)
                    bot_env["BENCH_COUNTS"] = str(lag_log.with_name("counts.json"))
                    if profile is not None:
                        bot_env["BENCH_PROFILE"] = str(profile)
                bot = BotProcess(double, bot_env, Path(tmp))
                store = await JobStore.open(database_url)
                try:
                    await bot.start(timeout=30)
                    rig = Rig(
                        double,
                        sandbox,
                        bot,
                        store,
                        port,
                        bot_env,
                        gc_log=gc_log,
                        lag_log=lag_log,
                        profile=profile,
                    )
                    rig.users = [double.add_user(f"bencher{n}") for n in range(users)]
                    yield rig
                finally:
                    await bot.stop()
                    await store.close()
                    errors = [line for line in bot.log if "Traceback" in line or "ERROR" in line]
                    if errors:
                        print(f"bot log had {len(errors)} error line(s):", file=sys.stderr)
                        print(bot.stderr()[-4000:], file=sys.stderr)
    finally:
        await sandbox.close()
        await runner.cleanup()


def begin(parser: Any, title: str) -> tuple[Any, dict[str, str]]:
    """What every script does first: add ``--env NAME=VALUE`` (repeatable: extra settings for
    the bot process), parse the command line, quiet the bench's own logging and print the
    header; returns the parsed arguments and those settings."""
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the bot process (repeatable), e.g. LOG_LEVEL=WARNING",
    )
    args = parser.parse_args()
    env = {}
    for pair in args.env:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env wants NAME=VALUE, got {pair!r}")
        env[name] = value
    logging.basicConfig(level=logging.WARNING)
    header(title)
    return args, env


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> Any:
    """Poll ``check`` every 20 ms (cheap for the bench process while the bot works)."""

    async def waiting() -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)

    return waiting()
