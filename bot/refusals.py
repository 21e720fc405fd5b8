"""Refusals to whoever is on the internet, logged bounded: a line each for the first few of a
window, then one line that sums up the rest (``RefusalLog``), also for what aiohttp itself
refuses (``ServerLog``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp.http_exceptions import HttpProcessingError

# Refusals logged one line each per window; beyond them they are counted and summed up in one line
# at the window's end.
REFUSAL_LOG_BURST = 10
REFUSAL_LOG_WINDOW_SECONDS = 60.0


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


# How a refusal log asks to be called back later: ``(delay in seconds, callback) → handle``.
Schedule = Callable[[float, Callable[[], None]], _Cancellable]


class RefusalLog:
    """The callback route's refusal lines, bounded whatever a sender does.

    The first ``burst`` refusals of a window of ``window`` seconds are logged one line each, as
    they come (a wrong HMAC key or PUBLIC_URL shows at once); the rest of that window's are only
    counted, by status, and said in one summary line when the window ends: a forged flood writes
    ``burst + 1`` lines a window instead of a line a request. A window begins with the first
    refusal after the last one ended, so a quiet window logs nothing at all.

    The summary comes from a timer (``schedule``, the running loop's ``call_later`` unless
    given), so it is written even when the flood stops; ``close`` writes what is pending at once
    and cancels the timer. ``clock`` (seconds, monotonic) is injectable for tests. Lines hold the
    status, the peer and the reason only: never the path, so never a secret.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = REFUSAL_LOG_BURST,
        window: float = REFUSAL_LOG_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
    ) -> None:
        if burst < 0 or window <= 0:
            raise ValueError("burst must be >= 0 and window > 0")
        self._log = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._schedule = schedule
        self._started: float | None = None  # when the current window began; None: no window
        self._logged = 0
        self._left_out: Counter[int] = Counter()
        self._timer: _Cancellable | None = None

    def refused(self, status: int, remote: str | None, why: str) -> None:
        """Log one refusal, or count it when this window's lines are spent."""
        now = self._clock()
        if self._started is not None and now - self._started >= self._window:
            self._end_window(now)
        if self._started is None:
            self._started = now
        if self._logged < self._burst:
            self._logged += 1
            self._log.warning("callback refused %d from %s: %s", status, remote, why)
            return
        if not self._left_out:
            self._start_timer(self._started + self._window - now)
        self._left_out[status] += 1

    @property
    def left_out(self) -> dict[int, int]:
        """The refusals of the current window counted but not logged yet, by status."""
        return dict(self._left_out)

    def window_ended(self) -> None:
        """The timer's callback: the window is over; say what it left out."""
        self._timer = None
        self._end_window(self._clock())

    def close(self) -> None:
        """Say what is pending now rather than never, and stop the timer."""
        self._end_window(self._clock())

    def _end_window(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._left_out and self._started is not None:
            elapsed = min(max(now - self._started, 0.0), self._window)
            self._log.warning(
                "callbacks refused: %s more in the last %s s not logged one by one (%s)",
                f"{self._left_out.total():,}",
                f"{elapsed:.1f}".removesuffix(".0"),
                ", ".join(
                    f"{status}: {count:,}"
                    for status, count in sorted(
                        self._left_out.items(), key=lambda item: (-item[1], item[0])
                    )
                ),
            )
        self._started = None
        self._logged = 0
        self._left_out.clear()

    def _start_timer(self, delay: float) -> None:
        delay = max(delay, 0.0)
        if self._schedule is not None:
            self._timer = self._schedule(delay, self.window_ended)
        else:
            self._timer = asyncio.get_running_loop().call_later(delay, self.window_ended)


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """What aiohttp's connection handler logs for one listener.

    aiohttp answers malformed HTTP (a bad request line, header or chunk) with 400 itself and logs
    a traceback whose message quotes the offending bytes, which can be a request line holding a
    callback secret. Such a fault becomes one refusal naming only its kind, counted in the
    listener's refusal log like any other, so a flood of garbage is bounded too. What aiohttp
    logs at debug level (non-HTTP bytes sent to the port, common on the internet) stays a debug
    line, also without the bytes.
    """

    def __init__(self, refusals: RefusalLog, http_log: logging.Logger) -> None:
        super().__init__(http_log, {})
        self._refusals = refusals

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        # aiohttp logs "Error handling request from %s" with the peer as the only argument.
        remote = str(args[0]) if args else None
        fault = f"malformed HTTP ({type(exc).__name__})"
        if level >= logging.WARNING:
            self._refusals.refused(exc.code, remote, fault)
        else:
            super().log(level, "refused %d from %s: %s", exc.code, remote, fault)
