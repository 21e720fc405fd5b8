"""Loaded at start-up by a bot process whose PYTHONPATH begins with this directory (bench.rig
does that with ``trace_cost=True``). Nothing of the bot is changed; it only watches:

- ``BENCH_LOOP_LAG=<file>``: a probe on the bot's event loop, a timer every 10 ms that notes how
  late it fired. Every lateness of 2 ms or more is appended to the file, one line each:
  ``<perf_counter when it was due> <seconds late> <loop CPU seconds>``. A callback that holds
  the loop for 80 ms shows as a tick 80 ms late; perf_counter is CLOCK_MONOTONIC, the bench's
  clock. The third column is the loop thread's CPU since the tick before (``thread_time``).
- ``BENCH_COUNTS=<file>``: statements, requests and log lines counted; SIGRTMIN writes them.
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

    class _ProbedPolicy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self):
            loop = super().new_event_loop()
            loop.call_soon(_probe, loop)
            return loop

    asyncio.set_event_loop_policy(_ProbedPolicy())

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

    import aiohttp
    import sqlalchemy

    _counts = collections.Counter()
    _folded = re.compile(r"/[^/]*\d[^/]*")

    _table = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)

    def _statement(conn, cursor, statement, parameters, context, executemany):
        verb = statement.split(None, 1)[0].upper()
        table = _table.search(statement)
        _counts[f"sql {verb} {table.group(1) if table else ''}".rstrip()] += 1
        _counts["sql (all)"] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", _statement)

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
