"""RetryPolicy: how the submitter tries again, as data with one answer per question."""

from __future__ import annotations

from bot.jobs.types import RetryPolicy
from bot.midjourney.errors import ApiError, ApiUnreachable


def test_the_defaults_are_the_pauses_the_tracker_always_used() -> None:
    policy = RetryPolicy()
    assert policy.submit_delays == (2.0, 5.0, 10.0, 20.0)
    assert policy.keep_delays == (0.5, 1.0, 2.0, 5.0, 10.0)


def test_a_refusal_that_took_nothing_is_sent_again_after_each_pause_then_not() -> None:
    policy = RetryPolicy()
    for refused in (ApiError(429), ApiUnreachable("refused", maybe_done=False)):
        assert [policy.resend_after(refused, n) for n in range(5)] == [2.0, 5.0, 10.0, 20.0, None]


def test_a_refusal_that_may_hide_a_task_or_is_final_is_never_sent_again() -> None:
    policy = RetryPolicy()
    assert policy.resend_after(ApiUnreachable("timed out", maybe_done=True), 0) is None
    assert policy.resend_after(ApiError(500), 0) is None
    assert policy.resend_after(ApiError(402), 0) is None


def test_the_last_pause_of_a_write_that_must_not_be_lost_repeats() -> None:
    policy = RetryPolicy(keep_delays=(0.5, 1.0))
    assert [policy.keep_after(n) for n in range(1, 5)] == [0.5, 1.0, 1.0, 1.0]
    assert RetryPolicy(keep_delays=()).keep_after(3) == 0.0
