"""Every figure of docs/performance.md, one script after the other, then a summary.

    .venv/bin/python -m bench.all [--env NAME=VALUE ...]

Runs bench.ack, bench.callback, bench.polling, bench.forged, bench.memory, bench.jobcost and
bench.videocost, each in a process of its own (each starts its own bot process), passing
``--env`` settings on to every one. Takes about nine minutes. Run by hand; nothing asserts on
these numbers.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time

from bench.rig import header

SCRIPTS = ("ack", "callback", "polling", "forged", "memory", "jobcost", "videocost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--only", action="append", choices=SCRIPTS, help="run only these")
    args = parser.parse_args()
    header("all figures")
    verdicts: list[str] = []
    for name in args.only or SCRIPTS:
        started = time.monotonic()
        command = [sys.executable, "-m", f"bench.{name}"]
        for pair in args.env:
            command += ["--env", pair]
        print(f"\n$ {' '.join(command[1:])}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        lines = result.stdout.splitlines()
        # Each script's own header repeats the machine line; the rest is its report.
        print("\n".join(line for line in lines if not line.startswith(("==", "   machine:"))))
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            verdicts.append(f"{name}: FAILED TO RUN (exit {result.returncode})")
            continue
        for title, figure in itertools.pairwise(lines):
            if figure.rstrip().endswith(("PASS", "MISS")) and not title.startswith("round "):
                verdicts.append(f"{name}: {title.strip()} -> {figure.split()[-1]}")
        print(f"({time.monotonic() - started:.0f} s)", flush=True)
    print("\nsummary")
    for line in verdicts:
        print(f"  {line}")


if __name__ == "__main__":
    main()
