"""A job is not paid for when its result could no longer be posted: one whose deadline passed
(or is too near) when its turn comes fails unpaid, given back; and a store fault while a refused
request is put back does not leave it waiting as maybe paid."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.jobs import texts
from bot.jobs.store import JobState, JobStore
from tests.jobs.conftest import Rig
from tests.names import JobKind

USER = 42


async def test_a_click_recorded_before_a_long_outage_is_not_paid_for_at_restart(rig: Rig) -> None:
    # The bot died after recording the click and stayed down past the job's deadline.
    job = await rig.recorded(JobKind.UPSCALE, rig.grid(), 1, user=USER)
    await rig.store.update(job.id, deadline_at=time.time() - 1)
    tracker = rig.tracker()
    assert await tracker.recover() == 1
    await rig.publisher.wait_for(lambda: len(rig.publisher.failures) == 1)
    assert rig.publisher.failures == [(job.id, texts.waited_too_long())]
    assert rig.sandbox.count("generateUpscale") == 0
    assert await rig.store.ledger.member_uses(1, USER, 0) == {
        "generation": 0,
        "upscale": 0,
        "video": 0,
    }


async def test_a_store_fault_while_putting_back_a_refused_request_loses_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = JobStore.transition
    faults = [OSError("connection reset (a failover)")]

    async def transition(self: JobStore, job_id: str, *args: Any, **kw: Any) -> Any:
        if args[1] is JobState.REQUESTED and faults:
            raise faults.pop()
        return await real(self, job_id, *args, **kw)

    monkeypatch.setattr(JobStore, "transition", transition)
    tracker = rig.tracker()
    # The API refuses with a 429 (nothing taken); putting the job back meets the fault once.
    rig.sandbox.fail_next("generateUpscale", 429)
    outcome = await tracker.request_on_grid(
        JobKind.UPSCALE,
        parent_task_id=rig.grid(),
        image_index=0,
        requester_id=USER,
        guild_id=1,
        channel_id=555,
        grid_message_id=777,
    )
    assert faults == []
    await rig.publisher.wait_for(lambda: len(rig.publisher.marked) == 1)
    sent = await rig.store.get(outcome.job.id)
    assert sent is not None and sent.upstream_task_id is not None
    assert rig.sandbox.count("generateUpscale") == 2
