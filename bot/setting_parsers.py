"""How one setting's value is read from the environment: each reader names the setting and
what it expects when the value will not do (SettingsError, one line)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UNLIMITED = "unlimited"
# Above this an allowance is a typo, not a plan: nobody means a billion a day.
ALLOWANCE_MAX = 1_000_000


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and what is expected."""


def read_text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _split(name: str, value: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise SettingsError(f"{name} is not a valid URL, got {value!r}") from None
    return parts


def http_url(name: str, value: str) -> str:
    parts = _split(name, value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"{name} must be an http(s) URL such as https://example.com, got {value!r}"
        )
    if parts.query or parts.fragment:
        raise SettingsError(f"{name} must not carry a query or fragment, got {value!r}")
    return value.rstrip("/")


def read_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = read_text(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name} must be a whole number from {low} to {high}, got {raw!r}"
        ) from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return value


def read_snowflake(env: Mapping[str, str], name: str, what: str = "server") -> int | None:
    raw = read_text(env, name)
    if raw is None:
        return None
    if not _is_snowflake(raw):
        raise SettingsError(f"{name} must be a Discord {what} id (digits only), got {raw!r}")
    return int(raw)


def _is_snowflake(raw: str) -> bool:
    return raw.isdecimal() and raw.isascii() and 15 <= len(raw) <= 21


def read_snowflakes(env: Mapping[str, str], name: str, what: str) -> frozenset[int]:
    raw = read_text(env, name)
    if raw is None:
        return frozenset()
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    bad = [part for part in parts if not _is_snowflake(part)]
    if bad:
        raise SettingsError(
            f"{name} must be Discord {what} ids (digits only) separated by commas, got {bad[0]!r}"
        )
    return frozenset(int(part) for part in parts)


def parse_allowance(name: str, value: str) -> int | None:
    """A daily allowance as an owner or admin writes it: a whole number, or "unlimited" (None).
    The one reading for the settings and for /mj limit; ValueError names ``name``."""
    text = value.strip().lower()
    if text == UNLIMITED:
        return None
    if not (text.isascii() and text.isdecimal()) or int(text) > ALLOWANCE_MAX:
        raise ValueError(
            f"{name} must be a whole number from 0 to {ALLOWANCE_MAX} or {UNLIMITED}, "
            f"not {value[:40]!r}"
        )
    return int(text)


def read_allowance(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = read_text(env, name)
    if raw is None:
        return default
    try:
        return parse_allowance(name, raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def read_timezone(env: Mapping[str, str], name: str) -> str:
    raw = read_text(env, name) or "UTC"
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise SettingsError(
            f"{name} must be an IANA time zone name such as UTC or Europe/Berlin, got {raw!r}"
        ) from None
    return raw


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def read_flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = read_text(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false (or 1/0, yes/no), got {raw!r}")


def host_name(name: str, raw: str) -> str:
    host = raw.strip().lower()
    if "://" in host:
        host = _split(name, host).hostname or ""
    # An IPv6 address is written in brackets in URLs, but a URL's host name comes without them.
    host = host.removeprefix("[").removesuffix("]")
    if not host or any(ch in host for ch in "/ @?#"):
        raise SettingsError(f"{name} must be a comma-separated list of host names, got {raw!r}")
    return host


def read_optional_int(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if read_text(env, name) is None:
        return None
    return read_int(env, name, low, low, high)
