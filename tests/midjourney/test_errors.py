"""bot/midjourney/errors.py: every vendor code in words a Discord user understands."""

from __future__ import annotations

import re

import pytest

from bot.midjourney.errors import ApiError, ApiUnreachable

CODES = (400, 401, 402, 404, 422, 429, 455, 500, 501, 505)

# What docs/reference/midjourney-api.md says a user should be told, as words the message must use.
MEANING = {
    400: r"invalid|not valid",
    401: r"\bkey\b",
    402: r"credit",
    404: r"unknown|expired",
    422: r"refused|invalid|not valid",
    429: r"busy|rate|try again",
    455: r"maintenance",
    500: r"try again|later",
    501: r"fail",
    505: r"disabled|not available",
}


@pytest.mark.parametrize("code", CODES)
def test_each_code_says_what_it_means_in_plain_words(code: int) -> None:
    message = ApiError(code).user_message
    assert re.search(MEANING[code], message, re.IGNORECASE), message
    # Plain words: neither the bare number nor the vendor's jargon.
    assert str(code) not in message
    assert "HTTP" not in message and "API error" not in message
    assert message == message.strip() and "\n" not in message


def test_every_code_has_its_own_message() -> None:
    messages = [ApiError(code).user_message for code in CODES]
    assert len(set(messages)) == len(CODES)


def test_operator_problems_point_to_the_admin() -> None:
    for code in (401, 402):
        assert "admin" in ApiError(code).user_message


def test_422_shows_the_api_message() -> None:
    error = ApiError(422, "aspectRatio must be one of 1:1, 16:9")
    assert "aspectRatio must be one of 1:1, 16:9" in error.user_message
    assert error.user_message.startswith(ApiError(422).user_message)


def test_422_without_message_has_no_dangling_colon() -> None:
    assert not ApiError(422, "").user_message.rstrip().endswith(":")


def test_messages_of_other_codes_do_not_echo_the_api() -> None:
    # Only validation errors repeat what the API said; the others are the bot's own words.
    for code in (401, 402, 404, 429, 455, 500, 501, 505):
        assert "secret detail" not in ApiError(code, "secret detail").user_message


def test_long_api_message_is_bounded() -> None:
    error = ApiError(422, "x" * 10_000)
    assert len(error.msg) <= 300
    assert len(error.user_message) < 500


@pytest.mark.parametrize("code", [418, 503, 999, 0])
def test_unknown_code_mentions_the_number(code: int) -> None:
    message = ApiError(code, "whatever").user_message
    assert str(code) in message
    assert message not in {ApiError(known).user_message for known in CODES}


def test_api_error_keeps_code_and_message() -> None:
    error = ApiError(402, "insufficient credits")
    assert (error.code, error.msg) == (402, "insufficient credits")
    assert "402" in str(error)


@pytest.mark.parametrize("maybe_done", [True, False])
def test_unreachable_keeps_maybe_done(maybe_done: bool) -> None:
    error = ApiUnreachable("cannot connect", maybe_done=maybe_done)
    assert error.maybe_done is maybe_done
    assert str(error) == "cannot connect"
    assert "cannot connect" not in error.user_message
    assert error.user_message not in {ApiError(code).user_message for code in CODES}


def test_maybe_done_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        ApiUnreachable("x", True)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("code", "maybe_done", "retryable"),
    [
        (400, False, False),
        (401, False, False),
        (402, False, False),
        (404, False, False),
        (422, False, False),
        (429, False, True),
        (455, True, False),
        (500, True, False),
        (501, False, False),
        (502, True, False),
        (505, False, False),
    ],
)
def test_which_refusals_may_hide_a_created_task(
    code: int, maybe_done: bool, retryable: bool
) -> None:
    error = ApiError(code)
    assert (error.maybe_done, error.retryable) == (maybe_done, retryable)


def test_only_a_request_never_sent_is_retryable() -> None:
    assert ApiUnreachable("refused", maybe_done=False).retryable
    assert not ApiUnreachable("timed out", maybe_done=True).retryable
