"""Run a heavy tool (the ffmpeg binary) in a child process the bot can afford: its address space
capped, no core dump, the lowest CPU priority there is, a deadline, and killed with its whole
process group when the deadline passes or the caller is cancelled (a shutdown), or as the bot
dies (Linux's parent-death signal: a SIGKILLed bot leaves no encoder running)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# An encoder of 720p video needs a few hundred MiB; more is a bug or a hostile input.
MEMORY_CAP = 1024**3
NICENESS = 10
# What the child writes to its stderr when the system refuses it idle scheduling; the parent
# cannot log from between fork and exec, so it reads this instead.
NOT_IDLE = b"[child: SCHED_IDLE not permitted]"
# The end of a child's stderr kept for the log; its error is at the end.
STDERR_TAIL = 2000


# prctl(PR_SET_PDEATHSIG): the child is killed when the bot dies, even by SIGKILL, which
# leaves no chance to kill it; looked up once here, not between fork and exec.
PR_SET_PDEATHSIG = 1


def _death_signal() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _death_signal()


class ChildTimedOut(Exception):
    """The child ran past its deadline and was killed."""


@dataclass(frozen=True)
class Finished:
    returncode: int
    # The last STDERR_TAIL bytes it wrote.
    stderr: bytes

    @property
    def idle(self) -> bool:
        """Whether it ran under SCHED_IDLE (only ever CPU the bot's own threads leave)."""
        return NOT_IDLE not in self.stderr


async def run_limited(argv: Sequence[str], *, timeout: float, memory: int = MEMORY_CAP) -> Finished:
    """Run ``argv`` to its end within ``timeout`` seconds, capped (see the module); raises
    ChildTimedOut when killed at the deadline, and kills it when cancelled."""
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so that a kill reaches anything it started too.
            start_new_session=True,
            # Only system calls between fork and exec: no lock the bot's threads may hold is
            # taken.
            preexec_fn=functools.partial(_limit_self, memory),
        )
    )
    try:
        process = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # Cancelled while asyncio was still connecting its pipes: the child runs already, and
        # asyncio would kill only it, not what it started. Its whole group is killed here.
        with contextlib.suppress(Exception):
            started = await starting
            _kill_group(started)
            await started.wait()
        raise
    try:
        async with asyncio.timeout(timeout):
            stderr = await _tail(process)
            await process.wait()
    except TimeoutError:
        raise ChildTimedOut(f"killed after {timeout:g} s") from None
    finally:
        if process.returncode is None:
            _kill_group(process)
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, stderr)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def _tail(process: asyncio.subprocess.Process) -> bytes:
    """The end of what the child writes to its stderr until it closes it: a child that writes
    without end (a hostile input's errors) costs the bot STDERR_TAIL bytes, not all of it."""
    assert process.stderr is not None
    kept = b""
    while chunk := await process.stderr.read(65536):
        kept = (kept + chunk)[-STDERR_TAIL:]
    return kept


def _limit_self(memory: int) -> None:
    """In the child, before exec: the caps that keep it from starving or swapping out the bot."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.nice(NICENESS)
    try:
        # Idle scheduling: the encoder runs only when no other thread of the host wants a CPU,
        # so the event loop's acks and callbacks never wait behind it. Linux only; a container's
        # seccomp profile may refuse it, and niceness alone is still something.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.write(2, NOT_IDLE)
