"""The real bot (what ``python -m bot`` runs) in a process of its own, against the Discord double.

Run as ``python -m tests.fakes.bot_process``, this module points discord.py at the double named by
``DISCORD_DOUBLE_API_BASE`` and ``DISCORD_DOUBLE_GATEWAY`` (the two class attributes
``point_discord_at`` patches) and hands over to ``bot.__main__.main()``: production code runs
unchanged, so a test can SIGKILL or SIGTERM it for real. ``BOT_SHUTDOWN_GRACE_SECONDS`` shortens
the drain on SIGTERM, so a test of a delivery that never ends does not wait the production grace.

Imported, it offers :class:`BotProcess`, which starts such a process from a test's event loop,
waits until the double sees it on the gateway, and keeps its log for failure reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import discord.gateway
import discord.http
import yarl

import bot.services
from bot.__main__ import main
from tests.fakes.discord_double import DiscordDouble

API_BASE_VAR = "DISCORD_DOUBLE_API_BASE"
GATEWAY_VAR = "DISCORD_DOUBLE_GATEWAY"
GRACE_VAR = "BOT_SHUTDOWN_GRACE_SECONDS"
REPO_ROOT = Path(__file__).resolve().parents[2]


class BotExited(RuntimeError):
    """The bot process is not running where a test needs it to; the message carries its log."""


class BotProcess:
    """One bot process at a time, restartable on the same settings (and so the same database).

    ``env`` holds the bot's settings; the process gets nothing else from the test's environment,
    and runs in ``workdir`` so that no stray ``.env`` file is loaded.
    """

    def __init__(self, double: DiscordDouble, env: Mapping[str, str], workdir: Path) -> None:
        self.double = double
        self.env = dict(env)
        self.workdir = workdir
        self.log: list[str] = []
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._first_line = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the bot process was never started")
        return self._process.pid

    def stderr(self) -> str:
        return "".join(self.log)

    def current_log(self) -> list[str]:
        """The log lines of the latest start."""
        return self.log[self._first_line :]

    async def start(self, timeout: float = 20, *, standby: bool = False) -> None:
        """Start the bot and wait until it is connected to the double's gateway (``standby``:
        until it says it stands by, every shard being run by another process).

        The bot identifies only after its setup hook: the store is open, the listener bound and
        unfinished jobs are already resumed by then.
        """
        if self.running:
            raise RuntimeError("the previous bot process is still running")
        self.starts += 1
        self._first_line = len(self.log)
        self.log.append(f"----- bot process start #{self.starts} -----\n")
        identified = len(self.double.identifies)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            API_BASE_VAR: self.double.api_base,
            GATEWAY_VAR: self.double.gateway_url,
            **self.env,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakes.bot_process",
            cwd=self.workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._process = process
        self._reader = asyncio.create_task(self._read_log(process))

        async def connected() -> None:
            if standby:
                await self.wait_for_log("standing by", timeout)
                return
            # A new identify, not the session of a process killed a moment ago.
            await self.double.wait_for(
                lambda: len(self.double.identifies) > identified or None, timeout
            )
            await self.double.wait_until_connected(timeout)

        waiter = asyncio.ensure_future(connected())
        exited = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait({waiter, exited}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            exited.cancel()
            waiter.cancel()
        if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            state = "ended" if process.returncode is not None else "is still starting"
            raise BotExited(f"the bot {state} instead of connecting\n{self.stderr()}")

    async def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """The first log line of the current process containing ``text``, existing or future."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = self._first_line
        while True:
            for line in self.log[seen:]:
                if text in line:
                    return line
            seen = len(self.log)
            remaining = deadline - loop.time()
            if remaining <= 0 or (self._reader is not None and self._reader.done()):
                raise TimeoutError(f"no log line with {text!r}\n{self.stderr()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything."""
        self._signal(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process hangs, its connections stay open (as a machine that stalls)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on where it stood, late for everything."""
        self._signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM, what a Procfile host sends before it kills."""
        self._signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> tuple[int, float]:
        """Until the process has ended (TimeoutError otherwise): its exit code, and how many
        seconds the wait took."""
        if self._process is None:
            raise RuntimeError("the bot process was never started")
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            code = await self._process.wait()
            if self._reader is not None:
                await self._reader
        return code, time.monotonic() - started

    async def killed(self) -> None:
        """SIGKILL, and wait until the process is gone (its port and files are free then)."""
        self.kill()
        code, _ = await self.wait_exit(10)
        assert code == -signal.SIGKILL, f"the bot ended with {code} before it was killed"

    async def stop(self) -> None:
        """Teardown: whatever the test did, no bot process outlives it."""
        if self.running:
            self.kill()
        if self._process is not None:
            with contextlib.suppress(TimeoutError):
                await self.wait_exit(10)
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise BotExited(f"the bot process is not running\n{self.stderr()}")
        assert self._process is not None
        self._process.send_signal(signum)

    async def _read_log(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            self.log.append(line.decode(errors="replace"))
            self._wake()
        await process.wait()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def run() -> None:
    discord.http.Route.BASE = os.environ[API_BASE_VAR]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ[GATEWAY_VAR])
    grace = os.environ.get(GRACE_VAR)
    if grace is not None:
        bot.services.SHUTDOWN_GRACE_SECONDS = float(grace)
    main()


if __name__ == "__main__":
    run()
