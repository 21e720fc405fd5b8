"""The vendor's pace as the vendor sees it: when the submissions arrive at the API."""

from __future__ import annotations

import asyncio

from bot.jobs.throttle import SubmitThrottle
from bot.midjourney.sandbox import SandboxAPI
from tests.jobs.conftest import Rig

RATE, PER = 5, 1.0


def crowded_windows(sandbox: SandboxAPI, endpoint: str, rate: int, per: float) -> list[float]:
    """Arrival times that open a window of ``per`` seconds holding more than ``rate`` calls."""
    arrivals = sorted(c.at for c in sandbox.calls if c.endpoint == endpoint)
    return [
        arrivals[i] for i in range(len(arrivals) - rate) if arrivals[i + rate] - arrivals[i] < per
    ]


async def test_no_window_at_the_api_holds_more_than_the_pace(rig: Rig) -> None:
    """30 generations at once, paced to 5 a second. Counted from each turn's grant, the
    requests went out a little after their grants, by however long their jobs took to be
    written, and the API saw 6 in less than a second; counted until each answer, never."""
    rig.sandbox.answer_delay = 0.02
    tracker = rig.tracker(throttle=SubmitThrottle(RATE, PER, max_waiting=100))
    outcomes = await asyncio.gather(
        *(
            tracker.request_imagine(
                prompt=f"lighthouse {n}",
                options={"speed": "fast"},
                requester_id=n,
                guild_id=1,
                channel_id=555,
                status_message_id=None,
            )
            for n in range(30)
        )
    )
    assert all(o.job.upstream_task_id for o in outcomes)
    assert rig.sandbox.count("generate") == 30
    assert crowded_windows(rig.sandbox, "generate", RATE, PER) == []
