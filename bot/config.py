"""Settings read from the environment; a bad or missing value is one clear line."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SANDBOX = "sandbox"
DEFAULT_API_BASE_URL = "https://api.midapi.ai"
DEFAULT_DATABASE_URL = "sqlite:///data/bot.sqlite3"
# Where the vendors have been seen to serve result files (docs/reference/midjourney-api.md).
VENDOR_RESULT_HOSTS = (
    "tempfile.aiquickdraw.com",
    "tempfileb.aiquickdraw.com",
    "tempfile.redpandaai.co",
)
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
LOG_FORMATS = ("text", "json")
UPSCALE_ALLOWED = ("anyone", "requester")
UNLIMITED = "unlimited"
# Above this an allowance is a typo, not a plan: nobody means a billion a day.
ALLOWANCE_MAX = 1_000_000


# Hosts whose disk is wiped at every restart or deploy, known by a variable each sets in its
# processes' environment: a SQLite file there loses every job.
EPHEMERAL_DISK_PLATFORMS = (
    ("Heroku", ("DYNO",)),
    ("Railway", ("RAILWAY_ENVIRONMENT", "RAILWAY_ENVIRONMENT_NAME", "RAILWAY_PROJECT_ID")),
    ("Fly.io", ("FLY_APP_NAME",)),
    ("Render", ("RENDER",)),
)


# Far above what any bot needs (Discord asks for one shard per 1,000 to 2,500 servers).
MAX_SHARDS = 4096


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and what is expected."""


@dataclass(frozen=True)
class Settings:
    discord_token: str
    mj_api_key: str | None = None
    mj_api_base_url: str = DEFAULT_API_BASE_URL
    public_url: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    webhook_hmac_key: str | None = None
    result_hosts: tuple[str, ...] = VENDOR_RESULT_HOSTS
    watermark: str | None = None
    guild_id: int | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    job_timeout_minutes: float = 15.0
    max_jobs_per_user: int = 3
    upscale_allowed: str = "anyone"
    submit_rate: int = 20
    # generateVary's imageIndex base (0: V1 is 0, 1: V1 is 1); None learns it (bot.jobs.vary_index).
    vary_index_base: int | None = None
    queue_limit: int = 100
    metrics_enabled: bool = False
    admin_channel_id: int | None = None
    low_credit_threshold: int = 100
    # Daily allowances: None is unlimited, 0 forbids.
    daily_imagines_per_user: int | None = 20
    daily_upscales_per_user: int | None = 40
    daily_jobs_per_server: int | None = None
    quota_timezone: str = "UTC"
    daily_credit_budget: int | None = None
    # The owner's door (bot.jobs.servers): who else besides the application's owner or team may
    # change what the bot spends, the servers served without /mj server allow, and the daily
    # credits one server may spend unless an owner set otherwise (None: unlimited).
    owner_ids: frozenset[int] = frozenset()
    allowed_guild_ids: frozenset[int] = frozenset()
    daily_credits_per_server: int | None = None
    # /upscale without an image, per member per server per rolling hour: None is unlimited.
    grid_reposts_per_hour: int | None = 10
    # Gateway shards (bot.shards): None asks Discord how many; which ones this process may run
    # (None: any), and how many of them at once (None: all it may).
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None
    shards_per_process: int | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def sandbox(self) -> bool:
        return self.mj_api_base_url == SANDBOX

    @property
    def job_timeout_seconds(self) -> float:
        return self.job_timeout_minutes * 60

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug logs; the secrets must not.
        return (
            f"Settings(api={self.mj_api_base_url!r}, public_url={self.public_url!r}, "
            f"listen={self.host}:{self.port}, database={redact_url(self.database_url)!r})"
        )


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


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _split(name: str, value: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise SettingsError(f"{name} is not a valid URL, got {value!r}") from None
    return parts


def _http_url(name: str, value: str) -> str:
    parts = _split(name, value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"{name} must be an http(s) URL such as https://example.com, got {value!r}"
        )
    if parts.query or parts.fragment:
        raise SettingsError(f"{name} must not carry a query or fragment, got {value!r}")
    return value.rstrip("/")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _text(env, name)
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


def _snowflake(env: Mapping[str, str], name: str, what: str = "server") -> int | None:
    raw = _text(env, name)
    if raw is None:
        return None
    if not _is_snowflake(raw):
        raise SettingsError(f"{name} must be a Discord {what} id (digits only), got {raw!r}")
    return int(raw)


def _is_snowflake(raw: str) -> bool:
    return raw.isdecimal() and raw.isascii() and 15 <= len(raw) <= 21


def _snowflakes(env: Mapping[str, str], name: str, what: str) -> frozenset[int]:
    raw = _text(env, name)
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


def _allowance(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = _text(env, name)
    if raw is None:
        return default
    try:
        return parse_allowance(name, raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _timezone(env: Mapping[str, str], name: str) -> str:
    raw = _text(env, name) or "UTC"
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise SettingsError(
            f"{name} must be an IANA time zone name such as UTC or Europe/Berlin, got {raw!r}"
        ) from None
    return raw


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = _text(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false (or 1/0, yes/no), got {raw!r}")


def _host_name(name: str, raw: str) -> str:
    host = raw.strip().lower()
    if "://" in host:
        host = _split(name, host).hostname or ""
    # An IPv6 address is written in brackets in URLs, but a URL's host name comes without them.
    host = host.removeprefix("[").removesuffix("]")
    if not host or any(ch in host for ch in "/ @?#"):
        raise SettingsError(f"{name} must be a comma-separated list of host names, got {raw!r}")
    return host


def load_settings(env: Mapping[str, str]) -> Settings:
    token = _text(env, "DISCORD_TOKEN")
    if token is None:
        raise SettingsError(
            "DISCORD_TOKEN is required: the bot token from the Discord developer portal"
        )
    if any(ch.isspace() for ch in token) or len(token) < 20:
        raise SettingsError(
            "DISCORD_TOKEN does not look like a bot token (copy it again from the portal)"
        )

    base = _text(env, "MJ_API_BASE_URL") or DEFAULT_API_BASE_URL
    if base.lower() == SANDBOX:
        base = SANDBOX
    else:
        base = _http_url("MJ_API_BASE_URL", base)

    api_key = _text(env, "MJ_API_KEY")
    if api_key is None and base != SANDBOX:
        raise SettingsError(
            "MJ_API_KEY is required: the API key from midapi.ai or kie.ai "
            "(or set MJ_API_BASE_URL=sandbox to try the bot without one)"
        )

    public_url = _text(env, "PUBLIC_URL")
    if public_url is not None:
        public_url = _http_url("PUBLIC_URL", public_url)

    host = _text(env, "HOST") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise SettingsError(
                f"HOST must be an IP address to bind, such as 0.0.0.0, got {host!r}"
            ) from None

    database_url = _text(env, "DATABASE_URL") or DEFAULT_DATABASE_URL
    scheme = database_url.split("://", 1)[0].lower() if "://" in database_url else ""
    if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "postgres"):
        raise SettingsError(
            "DATABASE_URL must be sqlite:///path/to/file.sqlite3 or "
            "postgresql://user:pass@host/db, "
            f"got {redact_url(database_url)!r}"
        )
    if scheme.startswith("sqlite") and not _flag(env, "SQLITE_ON_EPHEMERAL_DISK"):
        _refuse_ephemeral_disk(env)

    extra_hosts = _text(env, "MJ_RESULT_HOSTS")
    result_hosts = list(VENDOR_RESULT_HOSTS)
    if extra_hosts is not None:
        for raw in extra_hosts.split(","):
            if raw.strip():
                result_hosts.append(_host_name("MJ_RESULT_HOSTS", raw))

    level = (_text(env, "LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")

    log_format = (_text(env, "LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT must be {' or '.join(LOG_FORMATS)}, got {log_format!r}")

    timeout_raw = _text(env, "JOB_TIMEOUT_MINUTES")
    timeout = 15.0
    if timeout_raw is not None:
        try:
            timeout = float(timeout_raw)
        except ValueError:
            timeout = -1.0
        if not 1 <= timeout <= 24 * 60:
            raise SettingsError(
                "JOB_TIMEOUT_MINUTES must be a number of minutes from 1 to 1440, "
                f"got {timeout_raw!r}"
            )

    allowed = (_text(env, "UPSCALE_ALLOWED") or "anyone").lower()
    if allowed not in UPSCALE_ALLOWED:
        raise SettingsError(
            f"UPSCALE_ALLOWED must be {' or '.join(UPSCALE_ALLOWED)}, got {allowed!r}"
        )

    vary_base = (_text(env, "MJ_VARY_INDEX_BASE") or "auto").lower()
    if vary_base not in ("auto", "0", "1"):
        raise SettingsError(
            "MJ_VARY_INDEX_BASE must be auto, 0 (V1 is imageIndex 0) or 1 (V1 is imageIndex 1), "
            f"got {vary_base!r}"
        )

    shard_count = _optional_int(env, "SHARD_COUNT", 1, MAX_SHARDS)
    shard_ids = _shard_ids(env, shard_count)
    shards_per_process = _optional_int(env, "SHARDS_PER_PROCESS", 1, MAX_SHARDS)

    hmac_key = _text(env, "MJ_WEBHOOK_HMAC_KEY")
    # PGPASSWORD: asyncpg's password when the URL has none (compose.scaling.yaml).
    passwords = (*_password_forms(database_url), env.get("PGPASSWORD"))
    secrets = tuple(s for s in (token, api_key, hmac_key, *passwords) if s)
    return Settings(
        discord_token=token,
        mj_api_key=api_key,
        mj_api_base_url=base,
        public_url=public_url,
        host=host,
        port=_int(env, "PORT", 8080, 1, 65535),
        database_url=database_url,
        webhook_hmac_key=hmac_key,
        result_hosts=tuple(dict.fromkeys(result_hosts)),
        watermark=_text(env, "MJ_WATERMARK"),
        guild_id=_snowflake(env, "DISCORD_GUILD_ID"),
        log_level=level,
        log_format=log_format,
        job_timeout_minutes=timeout,
        max_jobs_per_user=_int(env, "MAX_JOBS_PER_USER", 3, 1, 1000),
        upscale_allowed=allowed,
        submit_rate=_int(env, "MJ_SUBMIT_RATE", 20, 1, 1000),
        vary_index_base=None if vary_base == "auto" else int(vary_base),
        queue_limit=_int(env, "QUEUE_LIMIT", 100, 0, 100_000),
        metrics_enabled=_flag(env, "METRICS_ENABLED"),
        admin_channel_id=_snowflake(env, "ADMIN_CHANNEL_ID", "channel"),
        low_credit_threshold=_int(env, "LOW_CREDIT_THRESHOLD", 100, 0, 1_000_000_000),
        daily_imagines_per_user=_allowance(env, "DAILY_IMAGINES_PER_USER", 20),
        daily_upscales_per_user=_allowance(env, "DAILY_UPSCALES_PER_USER", 40),
        daily_jobs_per_server=_allowance(env, "DAILY_JOBS_PER_SERVER", None),
        quota_timezone=_timezone(env, "QUOTA_TIMEZONE"),
        daily_credit_budget=_allowance(env, "DAILY_CREDIT_BUDGET", None),
        owner_ids=_snowflakes(env, "OWNER_IDS", "user"),
        allowed_guild_ids=_snowflakes(env, "ALLOWED_GUILD_IDS", "server"),
        daily_credits_per_server=_allowance(env, "DAILY_CREDITS_PER_SERVER", None),
        grid_reposts_per_hour=_allowance(env, "GRID_REPOSTS_PER_HOUR", 10),
        shard_count=shard_count,
        shard_ids=shard_ids,
        shards_per_process=shards_per_process,
        secrets=secrets,
    )


def _refuse_ephemeral_disk(env: Mapping[str, str]) -> None:
    for platform, names in EPHEMERAL_DISK_PLATFORMS:
        found = next((name for name in names if env.get(name, "").strip()), None)
        if found is not None:
            raise SettingsError(
                f"DATABASE_URL is a SQLite file, but this runs on {platform} ({found} is set), "
                "whose disk is wiped at each restart: every job would be lost. Set DATABASE_URL "
                "to a PostgreSQL database, or SQLITE_ON_EPHEMERAL_DISK=true if a volume holds "
                "the file or losing jobs is intended"
            )


def _password_forms(url: str) -> tuple[str, ...]:
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


def _optional_int(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if _text(env, name) is None:
        return None
    return _int(env, name, low, low, high)


def _shard_ids(env: Mapping[str, str], shard_count: int | None) -> tuple[int, ...] | None:
    """SHARD_IDS: shard numbers and ranges, ``0,2,4-7``; they need SHARD_COUNT to mean anything."""
    raw = _text(env, "SHARD_IDS")
    if raw is None:
        return None
    if shard_count is None:
        raise SettingsError("SHARD_IDS needs SHARD_COUNT: set how many shards there are in all")
    ids: list[int] = []
    for part in raw.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            first, last = -1, -1
        if not 0 <= first <= last < shard_count:
            raise SettingsError(
                f"SHARD_IDS must be shard numbers or ranges from 0 to {shard_count - 1} "
                f"(SHARD_COUNT={shard_count}), such as 0,2-3; got {raw!r}"
            )
        ids.extend(range(first, last + 1))
    return tuple(sorted(set(ids)))


# A path separator, also percent-encoded (a URL quoted inside another, a query string).
_SEP = r"(?:/|%2[Ff])"
# One path segment, as far as it can run in a URL.
_SEGMENT = r"[^/%\s\"'<>?#&]+(?:%(?!2[Ff])[^/%\s\"'<>?#&]*)*"
# Secrets made per job or per click, which no list of settings can hold: the callback path's
# secret, Discord's webhook and interaction tokens (discord.py logs its routes at debug
# level), and any password in a URL's user info.
_PATTERNS = (
    (re.compile(rf"({_SEP}callbacks{_SEP}midjourney{_SEP}){_SEGMENT}"), r"\1***"),
    (re.compile(rf"({_SEP}webhooks{_SEP}\d+{_SEP}){_SEGMENT}"), r"\1***"),
    (re.compile(rf"({_SEP}interactions{_SEP}\d+{_SEP}){_SEGMENT}"), r"\1***"),
    (re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
)


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
