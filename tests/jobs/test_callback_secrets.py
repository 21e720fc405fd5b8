"""Callback secrets carry a tag of this bot's key: forged ones are told apart without the store."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import pytest

from bot.jobs.callback_secrets import SECRET_CHARS, CallbackSecrets

TOKEN = "a-bot-token-of-sixty-characters-or-so-............................"


def test_new_secrets_are_unguessable_and_fit_the_callback_path() -> None:
    made = CallbackSecrets.from_token(TOKEN)
    batch = [made.new() for _ in range(200)]
    assert len(set(batch)) == 200
    for secret in batch:
        # The listener refuses anything outside this alphabet and length before the tracker.
        assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", secret)
        assert len(secret) == SECRET_CHARS
        assert made.made_here(secret)


def test_the_same_token_recognises_its_secrets_after_a_restart() -> None:
    secret = CallbackSecrets.from_token(TOKEN).new()
    assert CallbackSecrets.from_token(TOKEN).made_here(secret)
    assert not CallbackSecrets.from_token(TOKEN + "x").made_here(secret)


def _flip(char: str) -> str:
    return "A" if char != "A" else "B"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda s: s[:-1] + _flip(s[-1]), id="tag changed"),
        pytest.param(lambda s: _flip(s[0]) + s[1:], id="nonce changed"),
        pytest.param(lambda s: s[:-1], id="one short"),
        pytest.param(lambda s: s + "A", id="one long"),
        pytest.param(lambda s: secrets.token_urlsafe(30), id="random of the same length"),
        pytest.param(lambda s: secrets.token_urlsafe(24), id="format from before the tags"),
        pytest.param(lambda s: s[:-1] + "é", id="non-ASCII"),
        pytest.param(lambda s: "", id="empty"),
    ],
)
def test_a_secret_this_key_did_not_make_is_not_recognised(forge: Callable[[str], str]) -> None:
    made = CallbackSecrets.from_token(TOKEN)
    forged = forge(made.new())
    assert not made.made_here(forged)


def test_the_key_stays_out_of_reprs() -> None:
    made = CallbackSecrets.from_token(TOKEN)
    assert TOKEN not in repr(made)
    assert "key hidden" in repr(made)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        CallbackSecrets(b"short")
