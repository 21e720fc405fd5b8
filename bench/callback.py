"""Callback received → result message posted, for a 1 MiB upscale, everything on loopback.

From the moment the sandbox API starts its callback POST to the bot's listener (PUBLIC_URL) to
the moment the Discord double has stored the result message with its attachment. In between, the
real bot process answers the callback, confirms the task with record-info, downloads the 1 MiB
PNG from the sandbox and uploads it to the double (multipart). One upscale at a time: this is
the latency of the path, not of a queue.

    .venv/bin/python -m bench.callback [--jobs 100] [--png-mib 1] [--env NAME=VALUE]

The sandbox draws flat checkerboards that PNG compresses a thousandfold, so the upscales are
served as noise PNGs of the asked size (see bench.rig.BenchSandbox). Run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from bench.rig import (
    CpuMeter,
    MiB,
    begin,
    print_latency,
    running_bot,
    wait_until,
)

TARGET_P50_MS, TARGET_P99_MS = 25.0, 100.0


async def run(jobs: int, png_bytes: int, pause: float, env: dict[str, str]) -> bool:
    async with running_bot(users=4, upscale_png_bytes=png_bytes, env=env) as rig:
        double, sandbox = rig.double, rig.sandbox
        submitted = await rig.upscale_submitted(jobs)
        sizes = []
        for job in submitted:
            assert job.upstream_task_id is not None
            # Made now so that encoding the PNG is not part of what is timed.
            sizes.append(len(sandbox.image_bytes(job.upstream_task_id, 0)))
        await rig.settle()
        print(
            f"    {len(submitted)} upscales waiting; result PNG {statistics.mean(sizes) / MiB:.3f} "
            f"MiB each",
            flush=True,
        )

        cpu = CpuMeter(rig.proc)
        seconds: list[float] = []
        phases: dict[str, list[float]] = {"record-info": [], "download": [], "posted": []}
        for job in submitted:
            task_id = job.upstream_task_id
            assert task_id is not None
            filename = f"{task_id}_0.png"

            def posted(name: str = filename) -> bool:
                return any(
                    f.filename == name for m in double.messages(ephemeral=False) for f in m.files
                )

            sandbox.complete(task_id)
            await wait_until(posted, 30, f"the result of {task_id}")
            message = next(
                m
                for m in double.messages(ephemeral=False)
                if m.files and m.files[0].filename == filename
            )
            if message.files[0].data != sandbox.image_bytes(task_id, 0):
                raise RuntimeError(f"the posted image of {task_id} is not the API's")
            sent = sandbox.callback_sent[task_id]
            seconds.append(message.created_at - sent)
            (asked,) = sandbox.times("record-info", task_id)[-1:]
            (fetched,) = sandbox.times("files", task_id)[-1:]
            phases["record-info"].append(asked - sent)
            phases["download"].append(fetched - asked)
            phases["posted"].append(message.created_at - fetched)
            # The bot then removes the status line and turns the button green; let it finish.
            await wait_until(lambda j=job: _status_gone(double, j.status_message_id), 10, "tidy")
            await asyncio.sleep(pause)

        print(f"    {cpu.line()} (while measuring, pauses included)")
        ok = print_latency(
            f"callback sent → result message stored, {png_bytes / MiB:g} MiB PNG, one at a time",
            seconds,
            p50=TARGET_P50_MS,
            p99=TARGET_P99_MS,
        )
        print(
            "    where the time goes (median ms): "
            + ", ".join(
                f"{name} {statistics.median(v) * 1000:.1f}"
                for name, v in (
                    ("callback sent → record-info asked", phases["record-info"]),
                    ("→ image requested", phases["download"]),
                    ("→ message stored", phases["posted"]),
                )
            )
        )
        return ok


def _status_gone(double, message_id: int | None) -> bool:
    if message_id is None:
        return True
    try:
        return double.message(message_id).deleted
    except KeyError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--png-mib", type=float, default=1.0, help="size of each upscale PNG")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between upscales")
    args, env = begin(parser, "callback received → result posted")
    asyncio.run(run(args.jobs, int(args.png_mib * MiB), args.pause, env))


if __name__ == "__main__":
    main()
