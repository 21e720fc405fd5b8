"""Typed errors of the upstream API and what a person should be told about each."""

from __future__ import annotations

import re

from bot.redaction import without_links_secrets

# The vendor's codes (docs/reference/midjourney-api.md) in words for the person who clicked.
_USER_MESSAGES = {
    400: "the request was not valid",
    401: "the bot's Midjourney API key is wrong or missing; ask the server admin to check it",
    402: "the bot's Midjourney account is out of credits; ask the server admin to top it up",
    404: "that task is unknown or has expired (results are kept about 14 days)",
    422: "the API refused the request",
    429: "the Midjourney API is busy right now; try again in a few seconds",
    455: "the Midjourney API is down for maintenance; try again later",
    500: "the Midjourney API had an internal error; try again later",
    501: "the generation failed",
    505: "this feature is disabled on the bot's Midjourney account",
}

# Codes that say the API did not take the request, so nothing started and nothing was charged.
# Any other refusal (500, 455, a proxy's 502…) may have come after the task was created.
_NOT_TAKEN = frozenset({400, 401, 402, 404, 422, 429, 501, 505})


# A refusal may quote the request back, callBackUrl and its per-job secret included, or a
# fileUrl with its /inputs/ token or a signed Discord link; the message reaches log lines and
# the person who clicked.
_CALLBACK_SECRET = re.compile(r"(callbacks/midjourney/)[A-Za-z0-9_-]+")


class ApiError(Exception):
    """The API answered, and the answer is a refusal (``code`` is the vendor's code)."""

    def __init__(self, code: int, msg: str = "") -> None:
        self.code = code
        self.msg = without_links_secrets(_CALLBACK_SECRET.sub(r"\1…", msg))[:300]
        super().__init__(f"API error {code}: {self.msg}")

    @property
    def maybe_done(self) -> bool:
        """True when a paid request answered this way may still have started a task."""
        return self.code not in _NOT_TAKEN

    @property
    def retryable(self) -> bool:
        """Rate limited: the request was not taken and the same request may be sent again."""
        return self.code == 429

    @property
    def user_message(self) -> str:
        base = _USER_MESSAGES.get(self.code, f"the Midjourney API answered with error {self.code}")
        if self.code in (400, 422) and self.msg:
            return f"{base}: {self.msg}"
        return base


class ApiUnreachable(Exception):
    """No usable answer arrived: a refused connection, a timeout, a non-JSON page.

    ``maybe_done`` is True when the request may have reached the API (so a paid call may have
    happened and must not be repeated blindly).
    """

    def __init__(self, message: str, *, maybe_done: bool) -> None:
        self.maybe_done = maybe_done
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        return not self.maybe_done

    @property
    def user_message(self) -> str:
        return "the Midjourney API could not be reached; try again in a minute"
