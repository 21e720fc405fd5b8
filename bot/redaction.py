"""Secrets kept out of log lines: the configured ones, and those of known URL shapes; and out
of outside text shown to members (``without_links_secrets``)."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote, urlsplit


def redact_url(url: str) -> str:
    """The URL without its password, for log lines."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparseable URL)"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def password_forms(url: str) -> tuple[str, ...]:
    """The URL's password as written in it, decoded, and encoded again: a driver's error or a
    logged URL may carry any of them."""
    try:
        written = urlsplit(url).password
    except ValueError:
        return ()
    if not written:
        return ()
    plain = unquote(written)
    return tuple(dict.fromkeys((written, plain, quote(plain, safe=""))))


# A path separator, also percent-encoded (a URL quoted inside another, a query string).
_SEP = r"(?:/|%2[Ff])"
# One path segment, as far as it can run in a URL.
_SEGMENT = r"[^/%\s\"'<>?#&]+(?:%(?!2[Ff])[^/%\s\"'<>?#&]*)*"
# Secrets made per job or per click, which no list of settings can hold: the callback path's
# secret, the token of an image given to /imagine, Discord's webhook and interaction tokens
# (discord.py logs its routes at debug level), and any password in a URL's user info.
_INPUT_TOKEN = (re.compile(rf"({_SEP}inputs{_SEP}){_SEGMENT}"), r"\1***")
_PATTERNS = (
    (re.compile(rf"({_SEP}callbacks{_SEP}midjourney{_SEP}){_SEGMENT}"), r"\1***"),
    _INPUT_TOKEN,
    (re.compile(rf"({_SEP}webhooks{_SEP}\d+{_SEP}){_SEGMENT}"), r"\1***"),
    (re.compile(rf"({_SEP}interactions{_SEP}\d+{_SEP}){_SEGMENT}"), r"\1***"),
    (re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
)


# A URL's query string: a signed Discord link's ex, is and hm, or any other signature.
_QUERY = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")


def without_links_secrets(text: str) -> str:
    """Text from outside (a vendor's refusal) with its URLs' query strings cut and its /inputs/
    tokens blanked, before it is shown to members: it may quote a fileUrl back."""
    pattern, replacement = _INPUT_TOKEN
    return pattern.sub(replacement, _QUERY.sub(r"\1", text))


class RedactingFilter(logging.Filter):
    """Blanks out the configured secrets, and the per-job secrets of known URL shapes,
    wherever a log record would carry them."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        # Shorter values would blank ordinary words.
        self._secrets = tuple(s for s in secrets if len(s) >= 6)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback is redacted too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True
