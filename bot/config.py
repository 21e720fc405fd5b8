"""Settings read from the environment; a bad or missing value is one clear line (each value's
reader is in ``bot.setting_parsers``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.redaction import password_forms, redact_url
from bot.setting_parsers import (
    SettingsError,
    host_name,
    http_url,
    read_allowance,
    read_flag,
    read_int,
    read_optional_int,
    read_snowflake,
    read_snowflakes,
    read_text,
    read_timezone,
)

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
VIDEO_QUALITIES = ("sd", "hd")
# The API's videoBatchSize.
VIDEO_BATCH_SIZES = ("1", "2", "4")


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
    # generateVideoExtend's index base, learnt the same way when None.
    extend_index_base: int | None = None
    # 🎬 Animate: sd (480p) or hd (720p), and videos per click (1, 2 or 4).
    video_quality: str = "sd"
    video_batch_size: int = 1
    queue_limit: int = 100
    metrics_enabled: bool = False
    admin_channel_id: int | None = None
    low_credit_threshold: int = 100
    # Daily allowances: None is unlimited, 0 forbids.
    daily_imagines_per_user: int | None = 20
    daily_upscales_per_user: int | None = 40
    # 🎬 Animate and ⏩ Extend: a click is one use, whatever the batch of videos it makes.
    daily_videos_per_user: int | None = 5
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
    # Images given to /imagine (bot.jobs.image_inputs): how many days they are kept and served
    # to the API, and the largest one taken, in MB.
    image_input_days: int = 7
    image_input_max_mb: int = 10
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


def load_settings(env: Mapping[str, str]) -> Settings:
    token = read_text(env, "DISCORD_TOKEN")
    if token is None:
        raise SettingsError(
            "DISCORD_TOKEN is required: the bot token from the Discord developer portal"
        )
    if any(ch.isspace() for ch in token) or len(token) < 20:
        raise SettingsError(
            "DISCORD_TOKEN does not look like a bot token (copy it again from the portal)"
        )

    base = read_text(env, "MJ_API_BASE_URL") or DEFAULT_API_BASE_URL
    if base.lower() == SANDBOX:
        base = SANDBOX
    else:
        base = http_url("MJ_API_BASE_URL", base)

    api_key = read_text(env, "MJ_API_KEY")
    if api_key is None and base != SANDBOX:
        raise SettingsError(
            "MJ_API_KEY is required: the API key from midapi.ai or kie.ai "
            "(or set MJ_API_BASE_URL=sandbox to try the bot without one)"
        )

    public_url = read_text(env, "PUBLIC_URL")
    if public_url is not None:
        public_url = http_url("PUBLIC_URL", public_url)

    host = read_text(env, "HOST") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise SettingsError(
                f"HOST must be an IP address to bind, such as 0.0.0.0, got {host!r}"
            ) from None

    database_url = read_text(env, "DATABASE_URL") or DEFAULT_DATABASE_URL
    scheme = database_url.split("://", 1)[0].lower() if "://" in database_url else ""
    if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "postgres"):
        raise SettingsError(
            "DATABASE_URL must be sqlite:///path/to/file.sqlite3 or "
            "postgresql://user:pass@host/db, "
            f"got {redact_url(database_url)!r}"
        )
    if scheme.startswith("sqlite") and not read_flag(env, "SQLITE_ON_EPHEMERAL_DISK"):
        _refuse_ephemeral_disk(env)

    extra_hosts = read_text(env, "MJ_RESULT_HOSTS")
    result_hosts = list(VENDOR_RESULT_HOSTS)
    if extra_hosts is not None:
        for raw in extra_hosts.split(","):
            if raw.strip():
                result_hosts.append(host_name("MJ_RESULT_HOSTS", raw))

    level = (read_text(env, "LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")

    log_format = (read_text(env, "LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT must be {' or '.join(LOG_FORMATS)}, got {log_format!r}")

    timeout_raw = read_text(env, "JOB_TIMEOUT_MINUTES")
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

    allowed = (read_text(env, "UPSCALE_ALLOWED") or "anyone").lower()
    if allowed not in UPSCALE_ALLOWED:
        raise SettingsError(
            f"UPSCALE_ALLOWED must be {' or '.join(UPSCALE_ALLOWED)}, got {allowed!r}"
        )

    vary_base = (read_text(env, "MJ_VARY_INDEX_BASE") or "auto").lower()
    if vary_base not in ("auto", "0", "1"):
        raise SettingsError(
            "MJ_VARY_INDEX_BASE must be auto, 0 (V1 is imageIndex 0) or 1 (V1 is imageIndex 1), "
            f"got {vary_base!r}"
        )

    extend_base = (read_text(env, "MJ_EXTEND_INDEX_BASE") or "auto").lower()
    if extend_base not in ("auto", "0", "1"):
        raise SettingsError(
            "MJ_EXTEND_INDEX_BASE must be auto, 0 (the first video is index 0) or 1 (the first "
            f"video is index 1), got {extend_base!r}"
        )
    video_quality = (read_text(env, "VIDEO_QUALITY") or "sd").lower()
    if video_quality not in VIDEO_QUALITIES:
        raise SettingsError(f"VIDEO_QUALITY must be sd (480p) or hd (720p), got {video_quality!r}")
    batch_raw = read_text(env, "VIDEO_BATCH_SIZE") or "1"
    if batch_raw not in VIDEO_BATCH_SIZES:
        raise SettingsError(
            f"VIDEO_BATCH_SIZE must be 1, 2 or 4 (videos per click), got {batch_raw!r}"
        )

    shard_count = read_optional_int(env, "SHARD_COUNT", 1, MAX_SHARDS)
    shard_ids = _shard_ids(env, shard_count)
    shards_per_process = read_optional_int(env, "SHARDS_PER_PROCESS", 1, MAX_SHARDS)

    hmac_key = read_text(env, "MJ_WEBHOOK_HMAC_KEY")
    # PGPASSWORD: asyncpg's password when the URL has none (compose.scaling.yaml).
    passwords = (*password_forms(database_url), env.get("PGPASSWORD"))
    secrets = tuple(s for s in (token, api_key, hmac_key, *passwords) if s)
    return Settings(
        discord_token=token,
        mj_api_key=api_key,
        mj_api_base_url=base,
        public_url=public_url,
        host=host,
        port=read_int(env, "PORT", 8080, 1, 65535),
        database_url=database_url,
        webhook_hmac_key=hmac_key,
        result_hosts=tuple(dict.fromkeys(result_hosts)),
        watermark=read_text(env, "MJ_WATERMARK"),
        guild_id=read_snowflake(env, "DISCORD_GUILD_ID"),
        log_level=level,
        log_format=log_format,
        job_timeout_minutes=timeout,
        max_jobs_per_user=read_int(env, "MAX_JOBS_PER_USER", 3, 1, 1000),
        upscale_allowed=allowed,
        submit_rate=read_int(env, "MJ_SUBMIT_RATE", 20, 1, 1000),
        vary_index_base=None if vary_base == "auto" else int(vary_base),
        extend_index_base=None if extend_base == "auto" else int(extend_base),
        video_quality=video_quality,
        video_batch_size=int(batch_raw),
        queue_limit=read_int(env, "QUEUE_LIMIT", 100, 0, 100_000),
        metrics_enabled=read_flag(env, "METRICS_ENABLED"),
        admin_channel_id=read_snowflake(env, "ADMIN_CHANNEL_ID", "channel"),
        low_credit_threshold=read_int(env, "LOW_CREDIT_THRESHOLD", 100, 0, 1_000_000_000),
        daily_imagines_per_user=read_allowance(env, "DAILY_IMAGINES_PER_USER", 20),
        daily_upscales_per_user=read_allowance(env, "DAILY_UPSCALES_PER_USER", 40),
        daily_videos_per_user=read_allowance(env, "DAILY_VIDEOS_PER_USER", 5),
        daily_jobs_per_server=read_allowance(env, "DAILY_JOBS_PER_SERVER", None),
        quota_timezone=read_timezone(env, "QUOTA_TIMEZONE"),
        daily_credit_budget=read_allowance(env, "DAILY_CREDIT_BUDGET", None),
        owner_ids=read_snowflakes(env, "OWNER_IDS", "user"),
        allowed_guild_ids=read_snowflakes(env, "ALLOWED_GUILD_IDS", "server"),
        daily_credits_per_server=read_allowance(env, "DAILY_CREDITS_PER_SERVER", None),
        grid_reposts_per_hour=read_allowance(env, "GRID_REPOSTS_PER_HOUR", 10),
        image_input_days=read_int(env, "IMAGE_INPUT_DAYS", 7, 1, 365),
        image_input_max_mb=read_int(env, "IMAGE_INPUT_MAX_MB", 10, 1, 50),
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


def _shard_ids(env: Mapping[str, str], shard_count: int | None) -> tuple[int, ...] | None:
    """SHARD_IDS: shard numbers and ranges, ``0,2,4-7``; they need SHARD_COUNT to mean anything."""
    raw = read_text(env, "SHARD_IDS")
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
