"""Forged callbacks: how many the listener rejects per second while real traffic goes on.

Several keep-alive connections from this process POST well-formed callback bodies to
``/callbacks/midjourney/<secret>`` with secrets no job has (the same shape and length as real
ones), as fast as the bot answers them, for ``--seconds``. Meanwhile users click U1–U4 in bursts
of 100 (the API answering each upscale in 5 s, as in bench.ack), and the upscales they start
finish and call back for real. Reported: rejections (404) per second, anything else the forged
requests got, the acknowledgement times of the clicks made during the blast, and the real
callbacks that were accepted and delivered meanwhile.

    .venv/bin/python -m bench.forged [--seconds 15] [--connections 8] [--rate 0] [--env ...]

``--rate N`` offers N forged requests per second instead of as many as the bot can answer, to
see the acknowledgement times at a given load.

The forging client is a minimal HTTP/1.1 client on asyncio's Protocol (a request is written the
moment the previous answer is complete), so that it costs the shared CPUs as little as possible;
the bench process still runs it, the Discord double and the sandbox on the same 2 CPUs as the
bot. Run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import time
import uuid

from bench.rig import (
    CpuMeter,
    begin,
    bench_gc_paused,
    percentile,
    print_figure,
    print_latency,
    running_bot,
)

TARGET_RATE = 3000.0
TARGET_ACK_P99_MS = 50.0


class _Forger(asyncio.Protocol):
    """One keep-alive connection sending forged callbacks back to back."""

    def __init__(self, blast: Blast) -> None:
        self._blast = blast
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._next_at = self._loop.time()
        self.closed = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        if self._blast.stopping:
            self._transport.close()
            return
        interval = self._blast.interval
        if interval:
            # Paced: this connection's share of the offered rate, without bunching up.
            now = self._loop.time()
            # Behind schedule (a slow answer) it catches up, by at most a second's worth.
            self._next_at = max(self._next_at + interval, now - 1.0)
            if self._next_at > now:
                self._loop.call_at(self._next_at, self._write)
                return
        self._write()

    def _write(self) -> None:
        assert self._transport is not None
        request = None if self._blast.stopping else self._blast.next_request()
        if request is None or self._transport.is_closing():
            self._transport.close()
            return
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length :]
            self._blast.answered(int(head[9:12]))
            if b"connection: close" in head:
                assert self._transport is not None
                self._transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Blast:
    def __init__(self, port: int, connections: int, rate: float = 0.0) -> None:
        self.port = port
        self.connections = connections
        # Seconds between two requests of one connection; 0: as fast as the answers come.
        self.interval = connections / rate if rate > 0 else 0.0
        self.rate = rate
        self.sent = 0
        self._limit: int | None = None
        self.stopping = False
        self.statuses: collections.Counter[int] = collections.Counter()
        self.reconnects = 0
        self._requests = [self._request(secrets.token_urlsafe(24)) for _ in range(1024)]
        self._next = 0

    def _request(self, secret: str) -> bytes:
        body = json.dumps(
            {
                "code": 200,
                "msg": "success",
                "data": {
                    "taskId": uuid.uuid4().hex,
                    "promptJson": "{}",
                    "resultUrls": ["https://tempfile.aiquickdraw.com/forged.png"],
                },
            }
        ).encode()
        return (
            f"POST /callbacks/midjourney/{secret} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def next_request(self) -> bytes | None:
        """The next forged request, or None once a paced blast has sent its rate × seconds."""
        if self._limit is not None and self.sent >= self._limit:
            self.stopping = True
            return None
        self.sent += 1
        self._next = (self._next + 1) % len(self._requests)
        return self._requests[self._next]

    def answered(self, status: int) -> None:
        self.statuses[status] += 1

    async def run(self, seconds: float) -> float:
        """Blast for ``seconds``; the time it really took."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = started + seconds
        if self.rate:
            self._limit = round(self.rate * seconds)

        async def connection() -> None:
            while (
                time.perf_counter() < deadline + (5.0 if self.rate else 0.0) and not self.stopping
            ):
                _, forger = await loop.create_connection(
                    lambda: _Forger(self), "127.0.0.1", self.port
                )
                await forger.closed
                if not self.stopping:
                    self.reconnects += 1

        async def stop() -> None:
            # A paced blast ends when it has sent rate × seconds; this is only a safety net then.
            await asyncio.sleep(seconds + (5.0 if self.rate else 0.0))
            self.stopping = True

        stopper = asyncio.create_task(stop())
        await asyncio.gather(*(connection() for _ in range(self.connections)))
        stopper.cancel()
        self.stopping = True
        return time.perf_counter() - started


async def run(
    seconds: float, connections: int, bursts: int, rate: float, env: dict[str, str]
) -> bool:
    async with running_bot(users=20, task_seconds=1.0, env=env, trace_gc=True) as rig:
        double, sandbox = rig.double, rig.sandbox
        grids = await rig.show_grids(25 * bursts)
        await rig.settle()
        sandbox.answer_delay = 5.0
        blast = Blast(rig.port, connections, rate)
        cpu = CpuMeter(rig.proc)
        callbacks_before = len(sandbox.callback_attempts)
        posted_before = len([m for m in double.messages(ephemeral=False) if len(m.files) == 1])
        acks: list[float] = []
        bursts_seen: list[str] = []
        blaster = asyncio.create_task(blast.run(seconds))

        async def clicks() -> None:
            # Bursts spread over the first part of the blast, so that their upscales call back
            # (5 s API answer + 1 s task) while the blast still runs.
            gap = max(0.5, (seconds - 7.0) / max(1, bursts))
            for number in range(bursts):
                await asyncio.sleep(1.0 if number == 0 else gap)
                batch = grids[number * 25 : (number + 1) * 25]
                with bench_gc_paused():
                    handles = await asyncio.gather(
                        *(
                            rig.click(grid, button, rig.users[(i * 4 + button) % len(rig.users)])
                            for i, grid in enumerate(batch)
                            for button in range(1, 5)
                        )
                    )
                    burst = []
                    for handle in handles:
                        ack = await handle.wait_ack(timeout=30)
                        if not ack.accepted:
                            raise RuntimeError("a click was not acknowledged in time")
                        burst.append(ack)
                acks.extend(a.ack_seconds for a in burst)
                first = min(h.dispatched_at for h in handles)
                last = max(a.arrived_at for a in burst)
                big = [p for p in rig.gc_pauses(first, last) if p[1] >= 0.005]
                note = ", ".join(f"gen{g} {s * 1000:.0f} ms" for _, s, g in big)
                p99 = percentile([a.ack_seconds for a in burst], 0.99) * 1000
                bursts_seen.append(f"p99 {p99:.0f} ms" + (f" (bot GC {note})" if note else ""))

        await clicks()
        took = await blaster
        bot_cpu, bench_cpu = cpu.read()
        real = sandbox.callback_attempts[callbacks_before:]
        posted = len([m for m in double.messages(ephemeral=False) if len(m.files) == 1])
        rejected = blast.statuses.get(404, 0)
        # The answers came within the nominal window unless the bot fell behind a paced blast.
        window = seconds if took < seconds + 0.5 else took
        others = {s: n for s, n in blast.statuses.items() if s != 404}
        offered = f"offered {rate:,.0f}/s" if rate else "as fast as answered"
        print(
            f"    {connections} connections, {offered}, for {took:.1f} s; CPU: bot process "
            f"{bot_cpu:.0%} of one core, bench process {bench_cpu:.0%}; "
            f"{blast.reconnects} reconnects",
            flush=True,
        )
        ok = print_figure(
            "forged callbacks rejected (404) per second",
            f"{rejected / window:,.0f}/s ({rejected:,} answered within {window:.1f} s); "
            f"other answers: "
            f"{others or 'none'}",
            f"≥ {TARGET_RATE:,.0f}/s",
            round(rejected / window) >= TARGET_RATE and not others,
        )
        ok &= print_latency(
            f"ack during the blast, {bursts} bursts of 100 concurrent clicks",
            acks,
            p99=TARGET_ACK_P99_MS,
        )
        print(f"    bursts: {'; '.join(bursts_seen)}")
        print(
            f"    real traffic meanwhile: {len(real)} callback POSTs to the bot "
            f"({sum(1 for a in real if a.status == 200)} answered 200), "
            f"{posted - posted_before} results posted during the blast",
            flush=True,
        )
        return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--bursts", type=int, default=3, help="bursts of 100 clicks")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="forged requests offered per second (0: max)"
    )
    args, env = begin(parser, "forged callbacks while serving real traffic")
    asyncio.run(run(args.seconds, args.connections, args.bursts, args.rate, env))


if __name__ == "__main__":
    main()
