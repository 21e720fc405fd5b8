"""The day turns at midnight of QUOTA_TIMEZONE: yesterday's uses stop counting, and a refusal
says when more comes. The store is real; only the policy's clock is set."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.jobs.admission import OverQuota
from bot.jobs.spending import Rules, Spending
from bot.jobs.store import JobKind, JobStore

BERLIN = ZoneInfo("Europe/Berlin")
GUILD, ALICE = 10, 20


async def test_an_allowance_used_up_late_in_the_day_is_back_after_local_midnight(
    tmp_path: Path,
) -> None:
    store = await JobStore.open(f"sqlite:///{tmp_path}/day.sqlite3")
    # Uses are stamped with the real time; the policy's clock starts there and is moved on.
    clock = [time.time()]
    spending = Spending(
        store.ledger, Rules(imagines=1, timezone="Europe/Berlin"), now=lambda: clock[0]
    )

    async def generate() -> None:
        quota = await spending.quota(JobKind.IMAGINE, ALICE, GUILD, ())
        await store.create(
            kind=JobKind.IMAGINE,
            requester_id=ALICE,
            guild_id=GUILD,
            channel_id=1,
            deadline_seconds=60,
            quota=quota,
        )

    try:
        await generate()
        with pytest.raises(OverQuota) as refused:
            await generate()
        text = spending.refusal(refused.value, JobKind.IMAGINE, ALICE).sentence("Not started")
        midnight = int(spending.today().end)
        assert datetime.fromtimestamp(midnight, BERLIN).strftime("%H:%M:%S") == "00:00:00"
        assert text == f"❌ You have used your 1 generation for today; more <t:{midnight}:R>."
        # The next day, by Berlin's clock: yesterday's use no longer counts.
        yesterday = spending.today().start
        clock[0] = spending.today().end + 60
        await generate()
        used = await store.ledger.member_uses(GUILD, ALICE, yesterday)
        assert used == {"generation": 2, "upscale": 0}
    finally:
        await store.close()
