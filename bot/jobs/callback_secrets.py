"""Callback secrets that prove this bot made them.

A secret is a random nonce followed by an HMAC tag of it. A callback whose secret carries no valid
tag cannot belong to any job, so it is refused without asking the store: a flood of forged
callbacks then costs a hash each, not a database query each.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# The key is derived from the bot token, so that every replica of one bot shares it without a new
# setting. The label keeps this key apart from any other use of the token.
_KEY_LABEL = b"mjbot callback secrets v1\0"
_NONCE_BYTES = 18
_TAG_BYTES = 12
# Both sizes are multiples of 3, so their urlsafe base64 has no padding: 24 + 16 characters.
_NONCE_CHARS = _NONCE_BYTES * 4 // 3
SECRET_CHARS = _NONCE_CHARS + _TAG_BYTES * 4 // 3


class CallbackSecrets:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a callback secret key needs at least 16 bytes")
        self._key = key

    @classmethod
    def from_token(cls, token: str) -> CallbackSecrets:
        return cls(hashlib.sha256(_KEY_LABEL + token.encode()).digest())

    def new(self) -> str:
        nonce = secrets.token_urlsafe(_NONCE_BYTES)
        return nonce + self._tag(nonce)

    def made_here(self, secret: str) -> bool:
        """Whether ``secret`` was made with this key (a secret of a job from before a change of
        bot token, or of another bot, is not)."""
        if len(secret) != SECRET_CHARS:
            return False
        nonce, tag = secret[:_NONCE_CHARS], secret[_NONCE_CHARS:]
        return hmac.compare_digest(self._tag(nonce).encode(), tag.encode())

    def sign(self, text: str) -> str:
        """A tag of ``text`` that only a holder of this key makes (the self-check's answer)."""
        return self._tag(text)

    def _tag(self, nonce: str) -> str:
        digest = hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:_TAG_BYTES]).decode()

    def __repr__(self) -> str:
        return "CallbackSecrets(<key hidden>)"
