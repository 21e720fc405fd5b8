"""Loaded at start-up by a bot process whose PYTHONPATH begins with this directory (bench.rig
does that with ``trace_gc=True``): appends every cyclic garbage collection that takes 1 ms or
more to the file named by BENCH_GC_LOG, one line each: ``<perf_counter at start> <seconds>
<generation>``. perf_counter is CLOCK_MONOTONIC on Linux, the clock the bench process times
with, so pauses can be matched with the moments the bench measured. Nothing else is changed."""

import gc
import os
import time

_path = os.environ.get("BENCH_GC_LOG")
if _path:
    _out = open(_path, "a", buffering=1)
    _started = [0.0]

    def _pause(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        seconds = time.perf_counter() - _started[0]
        if seconds >= 0.001:
            _out.write(f"{_started[0]:.6f} {seconds:.6f} {info['generation']}\n")

    gc.callbacks.append(_pause)
