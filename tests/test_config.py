"""bot/config.py: settings from the environment, and the one-line failure of ``python -m bot``."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.redaction import RedactingFilter, redact_url
from bot.setting_parsers import SettingsError

# Distinctive values, so a leak is found by a plain substring search.
TOKEN = "MTIzNDU2Nzg5MDEy.Gx7-Tk.discord-token-S3CRET-0123456789"
API_KEY = "mj-api-key-S3CRET-abcdef0123456789"
HMAC_KEY = "hmac-key-S3CRET-fedcba9876543210"
DB_PASSWORD = "db-pass-S3CRET-42"
SECRETS = (TOKEN, API_KEY, HMAC_KEY, DB_PASSWORD)

MINIMAL = {"DISCORD_TOKEN": TOKEN, "MJ_API_KEY": API_KEY}
SETTING_NAMES = (
    "DISCORD_TOKEN",
    "MJ_API_KEY",
    "MJ_API_BASE_URL",
    "PUBLIC_URL",
    "HOST",
    "PORT",
    "DATABASE_URL",
    "MJ_WEBHOOK_HMAC_KEY",
    "MJ_RESULT_HOSTS",
    "MJ_WATERMARK",
    "DISCORD_GUILD_ID",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "JOB_TIMEOUT_MINUTES",
    "MAX_JOBS_PER_USER",
    "UPSCALE_ALLOWED",
    "MJ_SUBMIT_RATE",
    "MJ_VARY_INDEX_BASE",
    "MJ_EXTEND_INDEX_BASE",
    "VIDEO_QUALITY",
    "VIDEO_BATCH_SIZE",
    "QUEUE_LIMIT",
    "METRICS_ENABLED",
    "ADMIN_CHANNEL_ID",
    "LOW_CREDIT_THRESHOLD",
    "DAILY_IMAGINES_PER_USER",
    "DAILY_UPSCALES_PER_USER",
    "DAILY_VIDEOS_PER_USER",
    "DAILY_JOBS_PER_SERVER",
    "QUOTA_TIMEZONE",
    "DAILY_CREDIT_BUDGET",
    "OWNER_IDS",
    "ALLOWED_GUILD_IDS",
    "DAILY_CREDITS_PER_SERVER",
    "GRID_REPOSTS_PER_HOUR",
    "IMAGE_INPUT_DAYS",
    "IMAGE_INPUT_MAX_MB",
    "SHARD_COUNT",
    "SHARD_IDS",
    "SHARDS_PER_PROCESS",
    "SQLITE_ON_EPHEMERAL_DISK",
)
# What the platforms with a throwaway disk set; a test run on one must not be refused for it.
PLATFORM_NAMES = (
    "DYNO",
    "RAILWAY_ENVIRONMENT",
    "RAILWAY_ENVIRONMENT_NAME",
    "RAILWAY_PROJECT_ID",
    "FLY_APP_NAME",
    "RENDER",
)
# Written out here rather than imported, so a change to the defaults is noticed.
VENDOR_HOSTS = ("tempfile.aiquickdraw.com", "tempfileb.aiquickdraw.com", "tempfile.redpandaai.co")
REPO_ROOT = Path(__file__).resolve().parents[1]


def env(**changes: str) -> dict[str, str]:
    return {**MINIMAL, **changes}


# ----- defaults and parsing --------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings(MINIMAL)
    assert settings.discord_token == TOKEN
    assert settings.mj_api_key == API_KEY
    assert settings.mj_api_base_url == "https://api.midapi.ai"
    assert settings.sandbox is False
    assert settings.public_url is None
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.database_url == "sqlite:///data/bot.sqlite3"
    assert settings.webhook_hmac_key is None
    assert settings.result_hosts == VENDOR_HOSTS
    assert settings.watermark is None
    assert settings.guild_id is None
    assert settings.log_level == "INFO"
    assert settings.log_format == "text"
    assert settings.job_timeout_minutes == 15
    assert settings.job_timeout_seconds == timedelta(minutes=15).total_seconds()
    assert settings.max_jobs_per_user == 3
    assert settings.upscale_allowed == "anyone"
    assert (settings.submit_rate, settings.queue_limit) == (20, 100)
    assert settings.vary_index_base is None
    assert settings.extend_index_base is None
    assert (settings.video_quality, settings.video_batch_size) == ("sd", 1)
    assert settings.metrics_enabled is False
    assert settings.admin_channel_id is None
    assert settings.low_credit_threshold == 100
    assert settings.secrets == (TOKEN, API_KEY)


def test_every_setting_is_read() -> None:
    settings = load_settings(
        {
            "DISCORD_TOKEN": f"  {TOKEN}  ",
            "MJ_API_KEY": API_KEY,
            "MJ_API_BASE_URL": "https://api.kie.ai/",
            "PUBLIC_URL": "https://bot.example.com/mj/",
            "HOST": "127.0.0.1",
            "PORT": "9000",
            "DATABASE_URL": f"postgresql+asyncpg://bot:{DB_PASSWORD}@db.internal:5432/jobs",
            "MJ_WEBHOOK_HMAC_KEY": HMAC_KEY,
            "MJ_RESULT_HOSTS": "cdn.example.com, https://Files.Example.org/some/path",
            "MJ_WATERMARK": "my-server",
            "DISCORD_GUILD_ID": "123456789012345678",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "JOB_TIMEOUT_MINUTES": "2.5",
            "MAX_JOBS_PER_USER": "5",
            "UPSCALE_ALLOWED": "Requester",
            "MJ_SUBMIT_RATE": "10",
            "MJ_VARY_INDEX_BASE": "1",
            "MJ_EXTEND_INDEX_BASE": "0",
            "VIDEO_QUALITY": "HD",
            "VIDEO_BATCH_SIZE": "4",
            "QUEUE_LIMIT": "0",
            "METRICS_ENABLED": "true",
            "ADMIN_CHANNEL_ID": "1234567890123456789",
            "LOW_CREDIT_THRESHOLD": "0",
        }
    )
    assert settings.discord_token == TOKEN
    assert settings.mj_api_key == API_KEY
    assert settings.mj_api_base_url == "https://api.kie.ai"
    assert settings.sandbox is False
    assert settings.public_url == "https://bot.example.com/mj"
    assert (settings.host, settings.port) == ("127.0.0.1", 9000)
    assert settings.database_url == f"postgresql+asyncpg://bot:{DB_PASSWORD}@db.internal:5432/jobs"
    assert settings.webhook_hmac_key == HMAC_KEY
    assert settings.result_hosts == (*VENDOR_HOSTS, "cdn.example.com", "files.example.org")
    assert settings.watermark == "my-server"
    assert settings.guild_id == 123456789012345678
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.job_timeout_minutes == 2.5
    assert settings.job_timeout_seconds == 150
    assert settings.max_jobs_per_user == 5
    assert settings.upscale_allowed == "requester"
    assert (settings.submit_rate, settings.queue_limit) == (10, 0)
    assert settings.vary_index_base == 1
    assert settings.extend_index_base == 0
    assert (settings.video_quality, settings.video_batch_size) == ("hd", 4)
    assert settings.metrics_enabled is True
    assert settings.admin_channel_id == 1234567890123456789
    assert settings.low_credit_threshold == 0
    # The database's password too (DATABASE_URL is a PostgreSQL URL with one here).
    assert set(settings.secrets) == {TOKEN, API_KEY, HMAC_KEY, DB_PASSWORD}


@pytest.mark.parametrize("value", ["sandbox", "SANDBOX", " Sandbox "])
def test_sandbox_makes_the_api_key_optional(value: str) -> None:
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "MJ_API_BASE_URL": value})
    assert settings.sandbox is True
    assert settings.mj_api_base_url == "sandbox"
    assert settings.mj_api_key is None


def test_sandbox_still_accepts_an_api_key() -> None:
    settings = load_settings(env(MJ_API_BASE_URL="sandbox"))
    assert settings.sandbox is True
    assert settings.mj_api_key == API_KEY


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://bot.example.com/", "https://bot.example.com"),
        ("https://bot.example.com", "https://bot.example.com"),
        ("http://203.0.113.7:8080/", "http://203.0.113.7:8080"),
        ("https://example.com/prefix///", "https://example.com/prefix"),
    ],
)
def test_public_url_loses_its_trailing_slash(raw: str, expected: str) -> None:
    assert load_settings(env(PUBLIC_URL=raw)).public_url == expected


@pytest.mark.parametrize(
    "name",
    [
        "PUBLIC_URL",
        "PORT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "MJ_WATERMARK",
        "HOST",
        "ADMIN_CHANNEL_ID",
        "LOW_CREDIT_THRESHOLD",
    ],
)
def test_blank_values_count_as_unset(name: str) -> None:
    assert load_settings(env(**{name: "   "})) == load_settings(MINIMAL)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
        ("  ", False),
    ],
)
def test_metrics_enabled_values(raw: str, expected: bool) -> None:
    assert load_settings(env(METRICS_ENABLED=raw)).metrics_enabled is expected


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "localhost"])
def test_host_accepts_addresses(host: str) -> None:
    assert load_settings(env(HOST=host)).host == host


@pytest.mark.parametrize("port", ["1", "8080", "65535"])
def test_port_range(port: str) -> None:
    assert load_settings(env(PORT=port)).port == int(port)


@pytest.mark.parametrize(
    "url",
    ["sqlite:///data/bot.sqlite3", "sqlite+aiosqlite:///x.db", "postgres://u:p@h/db"],
)
def test_database_url_schemes(url: str) -> None:
    assert load_settings(env(DATABASE_URL=url)).database_url == url


def test_result_hosts_are_added_once_each() -> None:
    settings = load_settings(
        env(MJ_RESULT_HOSTS="tempfile.aiquickdraw.com,cdn.example.com,,CDN.example.com")
    )
    assert settings.result_hosts == (*VENDOR_HOSTS, "cdn.example.com")


def test_result_hosts_are_written_as_urls_name_them() -> None:
    settings = load_settings(
        env(MJ_RESULT_HOSTS="[fd00::1], https://Files.Example.org/x, 10.1.2.3")
    )
    assert settings.result_hosts[len(VENDOR_HOSTS) :] == (
        "fd00::1",
        "files.example.org",
        "10.1.2.3",
    )


# ----- bad and missing values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("DISCORD_TOKEN", {"DISCORD_TOKEN": None}),
        ("DISCORD_TOKEN", {"DISCORD_TOKEN": "   "}),
        ("DISCORD_TOKEN", {"DISCORD_TOKEN": "tooShort1"}),
        ("DISCORD_TOKEN", {"DISCORD_TOKEN": "a token pasted with spaces in it"}),
        ("MJ_API_KEY", {"MJ_API_KEY": None}),
        ("MJ_API_KEY", {"MJ_API_KEY": ""}),
        ("MJ_API_KEY", {"MJ_API_KEY": None, "MJ_API_BASE_URL": "https://api.kie.ai"}),
        ("PORT", {"PORT": "abc"}),
        ("PORT", {"PORT": "0"}),
        ("PORT", {"PORT": "70000"}),
        ("PORT", {"PORT": "-1"}),
        ("PORT", {"PORT": "80.5"}),
        ("PUBLIC_URL", {"PUBLIC_URL": "ftp://x"}),
        ("PUBLIC_URL", {"PUBLIC_URL": "example.com"}),
        ("PUBLIC_URL", {"PUBLIC_URL": "https://example.com/?debug=1"}),
        ("MJ_API_BASE_URL", {"MJ_API_BASE_URL": "not a url"}),
        ("MJ_API_BASE_URL", {"MJ_API_BASE_URL": "ftp://api.kie.ai"}),
        ("DATABASE_URL", {"DATABASE_URL": f"mysql://bot:{DB_PASSWORD}@db/jobs"}),
        ("DATABASE_URL", {"DATABASE_URL": "data/bot.sqlite3"}),
        ("DISCORD_GUILD_ID", {"DISCORD_GUILD_ID": "abc"}),
        ("DISCORD_GUILD_ID", {"DISCORD_GUILD_ID": "123"}),
        ("LOG_LEVEL", {"LOG_LEVEL": "LOUD"}),
        ("LOG_FORMAT", {"LOG_FORMAT": "xml"}),
        ("LOG_FORMAT", {"LOG_FORMAT": "logfmt"}),
        ("JOB_TIMEOUT_MINUTES", {"JOB_TIMEOUT_MINUTES": "0"}),
        ("JOB_TIMEOUT_MINUTES", {"JOB_TIMEOUT_MINUTES": "x"}),
        ("JOB_TIMEOUT_MINUTES", {"JOB_TIMEOUT_MINUTES": "1441"}),
        ("JOB_TIMEOUT_MINUTES", {"JOB_TIMEOUT_MINUTES": "nan"}),
        ("MJ_RESULT_HOSTS", {"MJ_RESULT_HOSTS": "a b"}),
        ("MJ_RESULT_HOSTS", {"MJ_RESULT_HOSTS": "ok.example.com,user@evil.example"}),
        ("HOST", {"HOST": "example.com"}),
        ("MAX_JOBS_PER_USER", {"MAX_JOBS_PER_USER": "0"}),
        ("MAX_JOBS_PER_USER", {"MAX_JOBS_PER_USER": "three"}),
        ("UPSCALE_ALLOWED", {"UPSCALE_ALLOWED": "admins"}),
        ("MJ_SUBMIT_RATE", {"MJ_SUBMIT_RATE": "0"}),
        ("MJ_SUBMIT_RATE", {"MJ_SUBMIT_RATE": "2.5"}),
        ("QUEUE_LIMIT", {"QUEUE_LIMIT": "-1"}),
        ("MJ_VARY_INDEX_BASE", {"MJ_VARY_INDEX_BASE": "2"}),
        ("MJ_VARY_INDEX_BASE", {"MJ_VARY_INDEX_BASE": "one"}),
        ("MJ_EXTEND_INDEX_BASE", {"MJ_EXTEND_INDEX_BASE": "2"}),
        ("VIDEO_QUALITY", {"VIDEO_QUALITY": "4k"}),
        ("VIDEO_BATCH_SIZE", {"VIDEO_BATCH_SIZE": "3"}),
        ("VIDEO_BATCH_SIZE", {"VIDEO_BATCH_SIZE": "0"}),
        ("VIDEO_BATCH_SIZE", {"VIDEO_BATCH_SIZE": "two"}),
        ("METRICS_ENABLED", {"METRICS_ENABLED": "maybe"}),
        ("METRICS_ENABLED", {"METRICS_ENABLED": "2"}),
        ("METRICS_ENABLED", {"METRICS_ENABLED": "enabled"}),
        ("ADMIN_CHANNEL_ID", {"ADMIN_CHANNEL_ID": "#admins"}),
        ("ADMIN_CHANNEL_ID", {"ADMIN_CHANNEL_ID": "123"}),
        ("ADMIN_CHANNEL_ID", {"ADMIN_CHANNEL_ID": "-1234567890123456789"}),
        ("ADMIN_CHANNEL_ID", {"ADMIN_CHANNEL_ID": "<#1234567890123456789>"}),
        ("LOW_CREDIT_THRESHOLD", {"LOW_CREDIT_THRESHOLD": "-1"}),
        ("LOW_CREDIT_THRESHOLD", {"LOW_CREDIT_THRESHOLD": "ten"}),
        ("LOW_CREDIT_THRESHOLD", {"LOW_CREDIT_THRESHOLD": "12.5"}),
        ("DAILY_IMAGINES_PER_USER", {"DAILY_IMAGINES_PER_USER": "-1"}),
        ("DAILY_IMAGINES_PER_USER", {"DAILY_IMAGINES_PER_USER": "twenty"}),
        ("DAILY_IMAGINES_PER_USER", {"DAILY_IMAGINES_PER_USER": "2.5"}),
        ("DAILY_UPSCALES_PER_USER", {"DAILY_UPSCALES_PER_USER": "1000001"}),
        ("DAILY_UPSCALES_PER_USER", {"DAILY_UPSCALES_PER_USER": "４０"}),
        ("DAILY_UPSCALES_PER_USER", {"DAILY_UPSCALES_PER_USER": "none"}),
        ("DAILY_VIDEOS_PER_USER", {"DAILY_VIDEOS_PER_USER": "-1"}),
        ("DAILY_VIDEOS_PER_USER", {"DAILY_VIDEOS_PER_USER": "five"}),
        ("DAILY_VIDEOS_PER_USER", {"DAILY_VIDEOS_PER_USER": "1.5"}),
        ("DAILY_VIDEOS_PER_USER", {"DAILY_VIDEOS_PER_USER": "1000001"}),
        ("DAILY_JOBS_PER_SERVER", {"DAILY_JOBS_PER_SERVER": "unlimted"}),
        ("DAILY_CREDIT_BUDGET", {"DAILY_CREDIT_BUDGET": "2,000"}),
        ("DAILY_CREDITS_PER_SERVER", {"DAILY_CREDITS_PER_SERVER": "-5"}),
        ("OWNER_IDS", {"OWNER_IDS": "12,abc"}),
        ("OWNER_IDS", {"OWNER_IDS": "<@123456789012345678>"}),
        ("ALLOWED_GUILD_IDS", {"ALLOWED_GUILD_IDS": "123456789012345678; 223456789012345678"}),
        ("GRID_REPOSTS_PER_HOUR", {"GRID_REPOSTS_PER_HOUR": "-1"}),
        ("GRID_REPOSTS_PER_HOUR", {"GRID_REPOSTS_PER_HOUR": "ten"}),
        ("IMAGE_INPUT_DAYS", {"IMAGE_INPUT_DAYS": "0"}),
        ("IMAGE_INPUT_MAX_MB", {"IMAGE_INPUT_MAX_MB": "51"}),
        ("QUOTA_TIMEZONE", {"QUOTA_TIMEZONE": "Mars/Olympus"}),
        ("QUOTA_TIMEZONE", {"QUOTA_TIMEZONE": "../../etc/passwd"}),
        ("QUOTA_TIMEZONE", {"QUOTA_TIMEZONE": "+02:00"}),
    ],
)
def test_bad_or_missing_setting_is_named(name: str, changes: dict[str, str | None]) -> None:
    settings_env = {**MINIMAL, "MJ_WEBHOOK_HMAC_KEY": HMAC_KEY, **changes}
    settings_env = {key: value for key, value in settings_env.items() if value is not None}
    with pytest.raises(SettingsError) as caught:
        load_settings(settings_env)
    message = str(caught.value)
    assert name in message
    assert "\n" not in message
    for secret in (*SECRETS, "a token pasted with spaces in it", "tooShort1"):
        assert secret not in message


# Each of these is a malformed value, yet load_settings lets a bare ValueError out of urlsplit
# (an unbalanced "[" reads as a broken IPv6 literal) or out of int() (str.isdigit accepts
# superscript digits that int() refuses). python -m bot catches only SettingsError, so the
# operator gets a traceback that names no setting instead of one clear line.
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MJ_API_BASE_URL", "https://[api.kie.ai"),
        ("PUBLIC_URL", "http://[::1"),
        ("MJ_RESULT_HOSTS", "https://[cdn.example.com"),
        ("DISCORD_GUILD_ID", "¹²³⁴⁵⁶⁷⁸⁹¹²³⁴⁵⁶⁷⁸"),
    ],
)
def test_unparseable_values_still_raise_settings_error(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(env(**{name: value}))


# ----- secrets ---------------------------------------------------------------------------------


def full_settings_env() -> dict[str, str]:
    return env(
        MJ_WEBHOOK_HMAC_KEY=HMAC_KEY,
        DATABASE_URL=f"postgresql://bot:{DB_PASSWORD}@db.example.com:5432/jobs",
    )


def test_repr_shows_no_secret() -> None:
    settings = load_settings(full_settings_env())
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        for secret in SECRETS:
            assert secret not in text
    # Still useful in a log line: the database host is shown, with its password masked.
    assert "db.example.com" in repr(settings)
    assert "***" in repr(settings)


def test_repr_never_raises_for_an_accepted_database_url() -> None:
    settings = load_settings(env(DATABASE_URL="postgresql://bot:pa[ss@db/jobs"))
    assert "pa[ss" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"postgresql://bot:{DB_PASSWORD}@db.example.com:5432/jobs",
            "postgresql://bot:***@db.example.com:5432/jobs",
        ),
        ("postgresql+asyncpg://bot:p%40ss@db/jobs", "postgresql+asyncpg://bot:***@db/jobs"),
        ("postgresql://bot@db/jobs", "postgresql://bot@db/jobs"),
        ("sqlite:///data/bot.sqlite3", "sqlite:///data/bot.sqlite3"),
    ],
)
def test_redact_url_hides_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def capture(filter_: logging.Filter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(filter_)
    logger = logging.getLogger(f"tests.config.redact.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_redacting_filter_blanks_secrets_in_messages_and_arguments() -> None:
    settings = load_settings(full_settings_env())
    logger, out = capture(RedactingFilter(settings.secrets))
    logger.info("login with %s", TOKEN)
    logger.warning(f"calling the API with key {API_KEY} and hmac {HMAC_KEY}")
    logger.info("nothing to hide: %d jobs", 3)
    lines = out.getvalue().splitlines()
    assert lines == [
        "INFO login with ***",
        "WARNING calling the API with key *** and hmac ***",
        "INFO nothing to hide: 3 jobs",
    ]


def test_redacting_filter_works_through_caplog(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RedactingFilter((TOKEN,)))
    with caplog.at_level(logging.INFO, logger="tests.config.caplog"):
        logging.getLogger("tests.config.caplog").info("token=%s!", TOKEN)
    assert caplog.messages == ["token=***!"]
    assert TOKEN not in caplog.text


def test_redacting_filter_leaves_other_records_untouched() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s", ("plain",), None)
    assert RedactingFilter((TOKEN,)).filter(record) is True
    assert (record.msg, record.args) == ("value %s", ("plain",))


def test_redacting_filter_covers_logged_exceptions() -> None:
    logger, out = capture(RedactingFilter((TOKEN,)))
    try:
        raise RuntimeError(f"login refused for {TOKEN}")
    except RuntimeError:
        logger.exception("login failed")
    assert "login failed" in out.getvalue()
    assert TOKEN not in out.getvalue()


# A callback secret as CallbackSecrets makes them, and an interaction token as Discord gives one.
CALLBACK_SECRET = "q3Vx_9-LmZpR2tYb8NwKcD4e" + "f0a1b2c3d4e5f607"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OmV4YW1wbGU.Zm9v-YmFy_YmF6"


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (
            f"POST /callbacks/midjourney/{CALLBACK_SECRET} from 10.0.0.9",
            "POST /callbacks/midjourney/*** from 10.0.0.9",
        ),
        (
            f"refused: callBackUrl=https://bot.example/callbacks/midjourney/{CALLBACK_SECRET}?x=1",
            "refused: callBackUrl=https://bot.example/callbacks/midjourney/***?x=1",
        ),
        (
            "body callBackUrl=https%3A%2F%2Fbot.example%2Fcallbacks%2Fmidjourney%2F"
            f"{CALLBACK_SECRET}&taskId=t",
            "body callBackUrl=https%3A%2F%2Fbot.example%2Fcallbacks%2Fmidjourney%2F***&taskId=t",
        ),
        (
            f"POST https://discord.com/api/v10/webhooks/1234567890/{INTERACTION_TOKEN}"
            "/messages/@original with 1 file(s) has returned 200",
            "POST https://discord.com/api/v10/webhooks/1234567890/***/messages/@original with "
            "1 file(s) has returned 200",
        ),
        (
            f"POST https://discord.com/api/v10/interactions/987654321/{INTERACTION_TOKEN}"
            "/callback has returned 204",
            "POST https://discord.com/api/v10/interactions/987654321/***/callback has returned 204",
        ),
        (
            f"url=https%3A%2F%2Fdiscord.com%2Fapi%2Fv10%2Fwebhooks%2F42%2F{INTERACTION_TOKEN}",
            "url=https%3A%2F%2Fdiscord.com%2Fapi%2Fv10%2Fwebhooks%2F42%2F***",
        ),
        (
            "cannot connect to postgresql+asyncpg://bot:an0ther-pass@db:5432/jobs",
            "cannot connect to postgresql+asyncpg://bot:***@db:5432/jobs",
        ),
    ],
    ids=[
        "callback path",
        "callback URL",
        "callback URL percent-encoded",
        "webhook token",
        "interaction callback",
        "webhook percent-encoded",
        "password of any URL",
    ],
)
def test_redacting_filter_blanks_per_job_secrets_by_their_place_in_a_url(
    line: str, kept: str
) -> None:
    logger, out = capture(RedactingFilter(()))
    logger.info("%s", line)
    try:
        raise RuntimeError(line)
    except RuntimeError:
        logger.exception("failed")
    text = out.getvalue()
    assert text.splitlines()[0] == f"INFO {kept}"
    assert f"RuntimeError: {kept}" in text
    for secret in (CALLBACK_SECRET, INTERACTION_TOKEN, "an0ther-pass"):
        assert secret not in text


def test_the_database_password_is_redacted_as_written_decoded_and_encoded() -> None:
    written = "s3cret%40db!pass"  # s3cret@db!pass, its @ percent-encoded in the URL
    settings = load_settings(env(DATABASE_URL=f"postgresql://bot:{written}@db/jobs"))
    logger, out = capture(RedactingFilter(settings.secrets))
    # asyncpg's errors and the bot's own lines may carry it in any of these forms, in or out
    # of a URL.
    logger.error("password %s refused", "s3cret@db!pass")
    logger.error("dsn part %s", written)
    logger.error("quoted again: %s", "s3cret%40db%21pass")
    text = out.getvalue()
    assert "s3cret" not in text
    assert text.splitlines() == [
        "ERROR password *** refused",
        "ERROR dsn part ***",
        "ERROR quoted again: ***",
    ]


# ----- python -m bot ---------------------------------------------------------------------------


def run_bot(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    unset = {*SETTING_NAMES, *PLATFORM_NAMES, "PGPASSWORD"}
    child_env = {key: value for key, value in os.environ.items() if key not in unset}
    child_env.update(settings)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_bot_without_token_exits_2_with_one_line(tmp_path: Path) -> None:
    assert not (tmp_path / ".env").exists()
    result = run_bot(tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DISCORD_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_python_m_bot_reads_dotenv_and_never_prints_secrets(tmp_path: Path) -> None:
    # The .env is complete but for a bad PORT, so the run stops before any network use; the
    # complaint is about PORT (not DISCORD_TOKEN), which shows the .env was read.
    (tmp_path / ".env").write_text(f"DISCORD_TOKEN={TOKEN}\nMJ_API_KEY={API_KEY}\nPORT=abc\n")
    result = run_bot(tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PORT" in lines[0]
    assert "DISCORD_TOKEN" not in lines[0]
    for secret in (TOKEN, API_KEY):
        assert secret not in result.stderr + result.stdout


def test_image_input_settings_default_to_a_week_and_ten_mb() -> None:
    settings = load_settings(MINIMAL)
    assert (settings.image_input_days, settings.image_input_max_mb) == (7, 10)
    changed = load_settings({**MINIMAL, "IMAGE_INPUT_DAYS": "30", "IMAGE_INPUT_MAX_MB": "25"})
    assert (changed.image_input_days, changed.image_input_max_mb) == (30, 25)


def test_spending_defaults_protect_a_new_owner() -> None:
    settings = load_settings(MINIMAL)
    assert settings.daily_imagines_per_user == 20
    assert settings.daily_upscales_per_user == 40
    assert settings.daily_videos_per_user == 5
    assert settings.daily_jobs_per_server is None
    assert settings.daily_credit_budget is None
    assert settings.quota_timezone == "UTC"
    assert settings.grid_reposts_per_hour == 10


def test_spending_settings_take_numbers_zero_and_unlimited() -> None:
    settings = load_settings(
        env(
            DAILY_IMAGINES_PER_USER="0",
            DAILY_UPSCALES_PER_USER="Unlimited",
            DAILY_VIDEOS_PER_USER=" 12 ",
            DAILY_JOBS_PER_SERVER=" 500 ",
            DAILY_CREDIT_BUDGET="2000",
            QUOTA_TIMEZONE="Europe/Berlin",
            GRID_REPOSTS_PER_HOUR="unlimited",
        )
    )
    assert settings.daily_imagines_per_user == 0
    assert settings.daily_upscales_per_user is None
    assert settings.daily_videos_per_user == 12
    assert settings.daily_jobs_per_server == 500
    assert settings.daily_credit_budget == 2000
    assert settings.quota_timezone == "Europe/Berlin"
    assert settings.grid_reposts_per_hour is None


def test_shard_settings_default_to_discord_s_advice_and_every_shard() -> None:
    settings = load_settings(env())
    assert (settings.shard_count, settings.shard_ids, settings.shards_per_process) == (
        None,
        None,
        None,
    )


def test_the_videos_allowance_reads_as_the_others_and_names_itself_when_bad() -> None:
    assert load_settings(env(DAILY_VIDEOS_PER_USER="0")).daily_videos_per_user == 0
    assert load_settings(env(DAILY_VIDEOS_PER_USER="unlimited")).daily_videos_per_user is None
    with pytest.raises(SettingsError) as caught:
        load_settings(env(DAILY_VIDEOS_PER_USER="five a day"))
    assert str(caught.value) == (
        "DAILY_VIDEOS_PER_USER must be a whole number from 0 to 1000000 or unlimited, "
        "not 'five a day'"
    )


def test_shard_ids_take_numbers_and_ranges() -> None:
    settings = load_settings(env(SHARD_COUNT="8", SHARD_IDS="5, 0-2,2", SHARDS_PER_PROCESS="2"))
    assert settings.shard_count == 8
    assert settings.shard_ids == (0, 1, 2, 5)
    assert settings.shards_per_process == 2


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"SHARD_COUNT": "0"}, "SHARD_COUNT"),
        ({"SHARD_COUNT": "two"}, "SHARD_COUNT"),
        ({"SHARD_IDS": "0"}, "SHARD_IDS needs SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "2"}, "SHARD_IDS"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "3-1"}, "SHARD_IDS"),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "0,x"}, "SHARD_IDS"),
        ({"SHARDS_PER_PROCESS": "0"}, "SHARDS_PER_PROCESS"),
    ],
)
def test_bad_shard_settings_are_one_line_naming_them(changes: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(env(**changes))


def test_owner_and_server_ids_are_comma_separated_lists() -> None:
    settings = load_settings(
        env(
            OWNER_IDS=" 123456789012345678 ,223456789012345678,",
            ALLOWED_GUILD_IDS="323456789012345678",
            DAILY_CREDITS_PER_SERVER="500",
        )
    )
    assert settings.owner_ids == {123456789012345678, 223456789012345678}
    assert settings.allowed_guild_ids == {323456789012345678}
    assert settings.daily_credits_per_server == 500
    assert load_settings(env()).allowed_guild_ids == frozenset()
