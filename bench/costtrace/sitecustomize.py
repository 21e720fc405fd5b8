"""Loaded at start-up by a bot process whose PYTHONPATH begins with this directory (bench.rig
does that with ``trace_cost=True``). Nothing of the bot is changed; it only watches:

- ``BENCH_LOOP_LAG=<file>``: a probe on the bot's event loop, a timer every 10 ms that notes how
  late it fired. Every lateness of 2 ms or more is appended to the file, one line each:
  ``<perf_counter when it was due> <seconds late> <loop CPU seconds>``. A callback that holds
  the loop for 80 ms shows as a tick 80 ms late; perf_counter is CLOCK_MONOTONIC, the bench's
  clock. The third column is the loop thread's CPU since the tick before (``thread_time``).
- ``BENCH_COUNTS=<file>``: statements, requests, log lines and database connections opened
  counted; SIGRTMIN writes them.
- ``BENCH_SLOW_TURNS=<file>``: every turn of the loop (select's return to the next select) that
  ran 10 ms or more, one line each: its start (perf_counter), its length, the loop thread's CPU
  in it, its time runnable but waiting for a CPU (``runq``), the garbage collection in it, the
  number of callbacks it ran and the five longest, each with what it resumed (a task's
  coroutine and the line it had waited at); then the turn's most sampled stacks of the main
  thread (a sample each millisecond of the process's CPU). A long turn with little CPU and
  little ``runq`` waited for the GIL.
- ``BENCH_PROFILE=<file>``: cProfile of the bot's main thread (the event loop's), started by
  SIGUSR1 and stopped by SIGUSR2, which writes the stats to the file (pstats format).
"""

import asyncio
import os
import signal
import time

_INTERVAL = 0.010
_REPORTED = 0.002

_lag_path = os.environ.get("BENCH_LOOP_LAG")
if _lag_path:
    _lag_out = open(_lag_path, "a", buffering=1)

    def _probe(loop):
        due = loop.time() + _INTERVAL
        ran = time.thread_time()

        def tick():
            nonlocal due, ran
            late = loop.time() - due
            now = time.thread_time()
            if late >= _REPORTED:
                # With the loop thread's CPU since the last tick: a late tick with little of
                # it means the loop waited (for the GIL, or for a CPU), not that it ran long.
                _lag_out.write(f"{time.perf_counter() - late:.6f} {late:.6f} {now - ran:.6f}\n")
            due, ran = loop.time() + _INTERVAL, now
            loop.call_at(due, tick)

        loop.call_at(due, tick)


_turns_path = os.environ.get("BENCH_SLOW_TURNS")
if _turns_path:
    import collections
    import gc
    import selectors
    import types

    _turns_out = open(_turns_path, "a", buffering=1)
    _turn: list = []
    _gc = [0.0, 0.0]

    def _collected(phase, info):
        if phase == "start":
            _gc[1] = time.perf_counter()
        else:
            _gc[0] += time.perf_counter() - _gc[1]

    gc.callbacks.append(_collected)

    def _label(callback):
        task = getattr(callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            coro = task.get_coro()
            waited = coro
            while isinstance(getattr(waited, "cr_await", None), types.CoroutineType):
                waited = waited.cr_await
            frame = getattr(waited, "cr_frame", None)
            at = f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}" if frame else ""
            return f"task {getattr(coro, '__qualname__', coro)} @ {at}"
        # Never repr() the callback: a bound method's repr is its object's, and some (aiohttp's
        # response) cache properties when shown.
        return getattr(callback, "__qualname__", None) or type(callback).__qualname__

    _handle_run = asyncio.events.Handle._run

    def _timed_run(self):
        label = _label(self._callback)
        began = time.perf_counter()
        _handle_run(self)
        _turn.append((time.perf_counter() - began, label))

    asyncio.events.Handle._run = _timed_run

    # Where a long turn spends itself: the main thread's stack sampled every millisecond of the
    # process's CPU (ITIMER_PROF), kept for the turn under way.
    _samples: collections.Counter = collections.Counter()
    _in_turn = [False]

    def _sample(signum, frame):
        if not _in_turn[0]:
            return
        stack = []
        while frame is not None and len(stack) < 6:
            code = frame.f_code
            stack.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}:{code.co_name}")
            frame = frame.f_back
        _samples[" < ".join(stack)] += 1

    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)

    def _run_delay():
        # Nanoseconds the loop's thread has waited for a CPU, runnable (the kernel's
        # schedstat): a long turn with little CPU and little of this waited for the GIL.
        with open("/proc/thread-self/schedstat", "rb") as stat:
            return int(stat.read().split()[1])

    class _TurnSelector(selectors.DefaultSelector):
        began = 0.0
        cpu = 0.0

        delay = 0

        def select(self, timeout=None):
            now = time.perf_counter()
            if self.began and now - self.began >= 0.010 and _turn:
                waited = (_run_delay() - self.delay) / 1e6
                longest = sorted(_turn, key=lambda item: -item[0])[:5]
                listed = "; ".join(f"{took * 1000:.1f} {label}" for took, label in longest)
                _turns_out.write(
                    f"{self.began:.6f} {(now - self.began) * 1000:.1f}ms "
                    f"cpu={(time.thread_time() - self.cpu) * 1000:.1f} runq={waited:.1f} "
                    f"gc={_gc[0] * 1000:.1f} n={len(_turn)} | {listed}\n"
                )
                for stack, count in _samples.most_common(4):
                    _turns_out.write(f"    {count} {stack}\n")
            _in_turn[0] = False
            ready = super().select(timeout)
            _in_turn[0] = True
            _samples.clear()
            _turn.clear()
            _gc[0] = 0.0
            self.began, self.cpu = time.perf_counter(), time.thread_time()
            self.delay = _run_delay()
            return ready


if _lag_path or _turns_path:

    class _WatchedPolicy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self):
            if not _turns_path:
                loop = super().new_event_loop()
            else:
                loop = asyncio.SelectorEventLoop(_TurnSelector())
            if _lag_path:
                loop.call_soon(_probe, loop)
            return loop

    asyncio.set_event_loop_policy(_WatchedPolicy())

_profile_path = os.environ.get("BENCH_PROFILE")
if _profile_path:
    import cProfile

    _profiler = cProfile.Profile()

    def _start(signum, frame):
        _profiler.enable()

    def _stop(signum, frame):
        _profiler.disable()
        _profiler.dump_stats(_profile_path)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)

_counts_path = os.environ.get("BENCH_COUNTS")
if _counts_path:
    # What the bot does per job, counted rather than timed (counts do not move with the
    # machine's load): SQL statements by their first words, HTTP requests by method and path
    # (numbers and tokens folded), log lines. SIGRTMIN writes the totals so far, as JSON.
    import collections
    import json
    import logging
    import re
    import sys

    import aiohttp
    import greenlet
    import sqlalchemy

    _counts = collections.Counter()
    _folded = re.compile(r"/[^/]*\d[^/]*")

    _table = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)

    def _statement(conn, cursor, statement, parameters, context, executemany):
        verb = statement.split(None, 1)[0].upper()
        table = _table.search(statement)
        _counts[f"sql {verb} {table.group(1) if table else ''}".rstrip()] += 1
        _counts["sql (all)"] += 1
        if _sites:
            _counts[f"  at {_site()}"] += 1

    _sites = os.environ.get("BENCH_SQL_SITES")

    def _site():
        # The bot's frames that led to the statement: up the stack, and on through the
        # greenlet SQLAlchemy runs it in to the coroutine that awaited it.
        names = []
        frame = sys._getframe(2)
        current = greenlet.getcurrent()
        while len(names) < 5:
            if frame is None:
                current = current.parent
                if current is None:
                    break
                frame = current.gr_frame
                continue
            path = frame.f_code.co_filename
            name = path.rsplit("/", 1)[-1]
            if ("/bot/" in path or "/cogs/" in path) and name not in _PLUMBING:
                names.append(f"{name}:{frame.f_lineno}")
            frame = frame.f_back
        return " < ".join(names)

    _PLUMBING = {"database.py", "statements.py", "sqlite_driver.py"}

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", _statement)

    def _opened(dbapi_connection, record):
        _counts["db connections opened"] += 1

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", _opened)

    _request = aiohttp.ClientSession._request

    async def _counted(self, method, str_or_url, *args, **kwargs):
        path = _folded.sub("/#", str(aiohttp.client.URL(str_or_url).path))
        _counts[f"http {method} {path}"] += 1
        _counts["http (all)"] += 1
        return await _request(self, method, str_or_url, *args, **kwargs)

    aiohttp.ClientSession._request = _counted

    _call_handlers = logging.Logger.callHandlers

    def _logged(self, record):
        _counts["log lines"] += 1
        _call_handlers(self, record)

    logging.Logger.callHandlers = _logged

    def _dump(signum, frame):
        with open(_counts_path + ".tmp", "w") as out:
            json.dump(dict(_counts), out)
        os.replace(_counts_path + ".tmp", _counts_path)

    signal.signal(signal.SIGRTMIN, _dump)
