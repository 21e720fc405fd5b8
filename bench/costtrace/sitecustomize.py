"""Loaded at start-up by a bot process whose PYTHONPATH begins with this directory (bench.rig
does that with ``trace_cost=True``). Nothing of the bot is changed; it only watches:

- ``BENCH_LOOP_LAG=<file>``: a probe on the bot's event loop, a timer every 10 ms that notes how
  late it fired. Every lateness of 2 ms or more is appended to the file, one line each:
  ``<perf_counter when it was due> <seconds late>``. A callback that holds the loop for 80 ms
  shows as a tick 80 ms late; perf_counter is CLOCK_MONOTONIC, the bench's clock.
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

        def tick():
            nonlocal due
            late = loop.time() - due
            if late >= _REPORTED:
                _lag_out.write(f"{time.perf_counter() - late:.6f} {late:.6f}\n")
            due = loop.time() + _INTERVAL
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
