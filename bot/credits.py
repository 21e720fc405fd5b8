"""The credit watch: the low-credit warning, one message to the server admins at most once an
hour when the API account runs low (under ``LOW_CREDIT_THRESHOLD``) or the API refuses a request
for lack of credits (402); and, with ``DAILY_CREDIT_BUDGET``, every reading added to the day's
ledger (bot.jobs.ledger), a reading as the day turns, and one notice a day once it is spent.

Credits are read (a free call) at start, every ``check_interval`` and soon after a paid
submission, since only those spend credits. Whether a warning may go out is claimed in the
database (bot.jobs.coordination), so the hourly limit holds across restarts and replicas. This
module knows nothing of Discord: the message goes through ``notify`` (bot.app wires it to the
admin channel), or to the log when no admin channel is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.jobs.coordination import Coordination
from bot.jobs.spending import Day, Spending
from bot.midjourney.client import MidjourneyClient
from bot.midjourney.errors import ApiError, ApiUnreachable
from bot.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# Posts a warning to wherever the admins read it; raises NoticeFailed when that refuses it.
Notify = Callable[[str], Awaitable[None]]

NOTICE = "low_credits"
NOTICE_EVERY = 60 * 60.0
CHECK_INTERVAL = 10 * 60.0
# A burst of submissions costs one reading a minute, not one each; with a credit budget, one
# each 10 s, so that what was spent is known soon.
SUBMIT_CHECK_SPACING = 60.0
BUDGET_CHECK_SPACING = 10.0
# Once per day of the budget, whichever process gets there first.
BUDGET_NOTICE_EVERY = 2 * 24 * 60 * 60.0


class NoticeFailed(Exception):
    """The warning could not be posted; ``reason`` says why, in words for the operator."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def low_credit_text(credits: int, threshold: int) -> str:
    return (
        f"⚠️ Midjourney API credits are low: **{credits}** left (warning below {threshold}, "
        "`LOW_CREDIT_THRESHOLD`). Upscales and generations will fail once they run out: "
        "top up the account."
    )


def out_of_credits_text(credits: int | None) -> str:
    left = f" ({credits} left)" if credits is not None else ""
    return (
        f"⛔ The Midjourney API refused a request for lack of credits (402){left}: upscales and "
        "generations fail until the account is topped up."
    )


def budget_text(spent: int | None, budget: int, day: Day) -> str:
    measured = "no reading yet" if spent is None else f"**{spent}** by the last reading"
    return (
        f"⛔ The daily credit budget of {budget} credits (`DAILY_CREDIT_BUDGET`) is reached: "
        f"spent today {measured}, with the jobs under way reserved. New generations, "
        f"upscales and videos are refused until <t:{int(day.end)}:f>."
    )


def _plain(text: str) -> str:
    """The warning without its Discord markdown, for a log line."""
    return text.replace("**", "").replace("`", "")


class CreditWatch:
    def __init__(
        self,
        client: MidjourneyClient,
        coordination: Coordination,
        notify: Notify | None,
        *,
        threshold: int,
        check_interval: float = CHECK_INTERVAL,
        submit_check_spacing: float = SUBMIT_CHECK_SPACING,
        every: float = NOTICE_EVERY,
        now: Callable[[], float] = time.time,
        spending: Spending | None = None,
    ) -> None:
        self._client = client
        # Each reading goes into the credit budget's ledger; None keeps no ledger.
        self._spending = spending
        self._store = coordination
        self._notify = notify
        # 0 turns the threshold off; a 402 still warns.
        self._threshold = threshold
        self._check_interval = check_interval
        self._spacing = (
            BUDGET_CHECK_SPACING
            if spending is not None and spending.rules.budget is not None
            else submit_check_spacing
        )
        self._every = every
        self._now = now
        # When this process last sent the warning: spares the store a claim that must fail.
        self._sent_at: float | None = None
        self._check_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._submit_checks: asyncio.Task[None] | None = None
        self._check_again = False
        self._last_submit_check = -float("inf")
        self._refusal_warning: asyncio.Task[None] | None = None
        self._tasks = BackgroundTasks(log)
        self._closing = False
        self._budget_tried: str | None = None

    def start(self) -> None:
        """Read the credits now, in the background, and every ``check_interval`` after."""
        if self._loop_task is None and not self._closing:
            self._loop_task = self._tasks.spawn(self._run(), "credit-watch")

    async def close(self) -> None:
        self._closing = True
        await self._tasks.close()

    async def wait_quiet(self) -> None:
        """Until the checks and warnings started by submissions and refusals are done."""
        while pending := [
            t for t in (self._submit_checks, self._refusal_warning) if t and not t.done()
        ]:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- what the rest of the bot tells it ----------------------------------------------------

    def submitted(self) -> None:
        """A paid request was taken (the tracker's hook): read the credits soon."""
        if self._closing:
            return
        self._check_again = True
        if self._submit_checks is None or self._submit_checks.done():
            self._submit_checks = self._tasks.spawn(
                self._checks_after_submissions(), "credit-check"
            )

    def api_refused(self, error: ApiError) -> None:
        """Any API call was refused (the client's observer): a 402 warns at once."""
        if error.code != 402 or self._closing or self._recently_sent():
            return
        # One at a time: a storm of 402s (and the reading below, should it meet one) is one.
        if self._refusal_warning is None or self._refusal_warning.done():
            self._refusal_warning = self._tasks.spawn(self._warn_out_of_credits(), "credit-402")

    def budget_reached(self, day: Day) -> None:
        """A request was refused for the credit budget (Spending's hook): tell the admins."""
        # A storm of refusals is one notice: one try per day from this process is enough here
        # (the readings try again).
        if not self._closing and self._budget_tried != day.key:
            self._budget_tried = day.key
            self._tasks.spawn(self._warn_budget(day, refused=True), "credit-budget")

    # -- checks -------------------------------------------------------------------------------

    async def check(self) -> int | None:
        """Read the credits once and warn when under the threshold; the reading, or None."""
        async with self._check_lock:
            at = self._now()
            credits = await self._read()
            if credits is not None and credits < self._threshold:
                await self._warn(low_credit_text(credits, self._threshold))
            if credits is not None and self._spending is not None:
                await self._record(credits, at)
            return credits

    async def _record(self, credits: int, at: float) -> None:
        assert self._spending is not None
        try:
            await self._spending.record_credits(credits, at)
        except Exception as exc:
            log.warning("credit reading not recorded: the job store failed (%r)", exc)
            return
        if self._spending.rules.budget is not None:
            await self._warn_budget(self._spending.today())

    async def _warn_budget(self, day: Day, *, refused: bool = False) -> None:
        """Tell the admins once a day: when a request was refused for the budget, or when a
        reading shows it spent."""
        assert self._spending is not None and self._spending.rules.budget is not None
        ledger = await self._spending.credits_today()
        if refused or self._spending.budget_spent(ledger):
            spent = ledger.spent if ledger is not None else None
            text = budget_text(spent, self._spending.rules.budget, day)
            await self._post(f"budget:{day.key}", BUDGET_NOTICE_EVERY, text)

    async def _read(self) -> int | None:
        try:
            return await self._client.credits()
        except (ApiError, ApiUnreachable) as exc:
            log.warning("credit check failed: %s", exc)
            return None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("credit check crashed; trying again at the next one")
            pause = self._check_interval
            if self._spending is not None and self._spending.rules.budget is not None:
                # A reading right as the day turns is where the new day's spending starts.
                pause = min(pause, max(1.0, self._spending.today().end - self._now() + 1.0))
            await asyncio.sleep(pause)

    async def _checks_after_submissions(self) -> None:
        loop = asyncio.get_running_loop()
        # A submission during a reading may have spent credits after it: read again, spaced.
        while self._check_again:
            wait = self._last_submit_check + self._spacing - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._check_again = False
            self._last_submit_check = loop.time()
            await self.check()

    async def _warn_out_of_credits(self) -> None:
        # The credit endpoint is free: the warning says how many are left when it answers.
        await self._warn(out_of_credits_text(await self._read()))

    # -- the warning --------------------------------------------------------------------------

    def _recently_sent(self) -> bool:
        return self._sent_at is not None and self._now() - self._sent_at < self._every

    async def _warn(self, text: str) -> bool:
        """Send ``text`` unless a warning went out (from any process) within the hour."""
        if self._recently_sent():
            return False
        now = self._now()
        if not await self._post(NOTICE, self._every, text, now):
            return False
        self._sent_at = now
        return True

    async def _post(self, name: str, every: float, text: str, now: float | None = None) -> bool:
        """Send notice ``name`` unless one went out (from any process) within ``every``."""
        now = self._now() if now is None else now
        try:
            if not await self._store.claim_notice(name, now=now, every=every):
                return False
        except Exception as exc:
            log.warning("notice %s not sent: the job store failed (%r)", name, exc)
            return False
        try:
            if self._notify is None:
                log.warning("%s (set ADMIN_CHANNEL_ID to have this posted)", _plain(text))
            else:
                await self._notify(text)
                log.info("notice %s posted to the admin channel: %s", name, _plain(text))
        except NoticeFailed as exc:
            log.warning(
                "notice %s not posted to the admin channel: %s; trying again at the next check",
                name,
                exc.reason,
            )
            await self._give_back(name, now)
            return False
        except Exception:
            log.exception("notice %s not posted; trying again at the next check", name)
            await self._give_back(name, now)
            return False
        return True

    async def _give_back(self, name: str, claimed_at: float) -> None:
        try:
            await self._store.release_notice(name, claimed_at=claimed_at)
        except Exception as exc:
            log.warning("notice %s claim not given back (%r)", name, exc)
