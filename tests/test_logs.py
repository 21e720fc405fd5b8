"""LOG_FORMAT: text lines by default, JSON lines with job and task ids as fields; both redacted."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bot.grid import reroll_custom_id
from bot.jobs.store import JobState
from bot.logs import JsonFormatter, make_formatter
from bot.redaction import RedactingFilter
from tests.harness import Harness, click, grid_task, imagine, result_for
from tests.test_config import SETTING_NAMES

TOKEN = "MTIzNDU2Nzg5MDEy.Gx7-Tk.discord-token-S3CRET-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("time", "level", "logger", "message", "job", "task")


def capture(
    formatter: logging.Formatter, *, secrets: tuple[str, ...] = (TOKEN,), name: str = "test"
) -> tuple[logging.Logger, io.StringIO]:
    """A logger writing through a handler set up as setup_logging does (filter, formatter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter(secrets))
    logger = logging.getLogger(f"tests.logs.{name}.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def entries(out: io.StringIO) -> list[dict[str, Any]]:
    lines = out.getvalue().splitlines()
    return [json.loads(line) for line in lines]


# -- the JSON formatter ---------------------------------------------------------------------------


def test_a_job_line_carries_its_job_and_task_ids() -> None:
    logger, out = capture(JsonFormatter())
    logger.info("submitted %s kind=%s", "job=0a1b2c3d4e5f task=9f8e7d6c-5b4a", "upscale")
    (entry,) = entries(out)
    assert list(entry) == list(FIELDS)
    assert entry["level"] == "INFO"
    assert entry["logger"] == logger.name
    # The message keeps the label: the JSON line reads like the text one.
    assert entry["message"] == "submitted job=0a1b2c3d4e5f task=9f8e7d6c-5b4a kind=upscale"
    assert (entry["job"], entry["task"]) == ("0a1b2c3d4e5f", "9f8e7d6c-5b4a")
    moment = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
    assert entry["time"].endswith("Z") and moment.utcoffset() is not None


def test_a_task_not_known_yet_is_null() -> None:
    logger, out = capture(JsonFormatter())
    logger.info("upscale requested job=abc123 task=- parent=p image=2")
    (entry,) = entries(out)
    assert (entry["job"], entry["task"]) == ("abc123", None)


def test_a_line_about_no_job_has_null_ids() -> None:
    logger, out = capture(JsonFormatter())
    logger.warning("listening on %s:%s", "0.0.0.0", 8080)
    (entry,) = entries(out)
    assert entry == {**entry, "level": "WARNING", "job": None, "task": None}
    assert entry["message"] == "listening on 0.0.0.0:8080"


def test_a_job_id_alone_and_a_task_id_alone_are_found() -> None:
    logger, out = capture(JsonFormatter())
    logger.error("watcher for job=%s crashed; it resumes at the next start", "deadbeef")
    logger.warning("callback refused 401 from 203.0.113.9: bad signature task=%s", "t-42")
    first, second = entries(out)
    assert (first["job"], first["task"]) == ("deadbeef", None)
    assert (second["job"], second["task"]) == (None, "t-42")


def test_extra_ids_win_over_the_text() -> None:
    logger, out = capture(JsonFormatter())
    logger.info("posted for job=other", extra={"job": "j1", "task": "t1"})
    (entry,) = entries(out)
    assert (entry["job"], entry["task"]) == ("j1", "t1")


def test_every_entry_is_one_line_whatever_the_message() -> None:
    logger, out = capture(JsonFormatter())
    logger.info('prompt "a\nb"\r\n\u2028 ✨ job=j2 task=t2\ttab')
    assert len(out.getvalue().splitlines()) == 1
    (entry,) = entries(out)
    assert entry["message"] == 'prompt "a\nb"\r\n\u2028 ✨ job=j2 task=t2\ttab'
    assert entry["job"] == "j2"


def test_an_exception_is_one_field_of_one_line() -> None:
    logger, out = capture(JsonFormatter())
    try:
        raise ValueError("bad thing")
    except ValueError:
        logger.exception("delivery failed job=j3 task=t3")
    (entry,) = entries(out)
    assert entry["level"] == "ERROR"
    assert entry["message"] == "delivery failed job=j3 task=t3"
    assert (entry["job"], entry["task"]) == ("j3", "t3")
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].rstrip().endswith("ValueError: bad thing")


def test_stack_info_is_kept() -> None:
    logger, out = capture(JsonFormatter())
    logger.info("where am I", stack_info=True)
    (entry,) = entries(out)
    assert entry["stack"].startswith("Stack (most recent call last):")


def test_secrets_are_redacted_in_message_and_exception() -> None:
    logger, out = capture(JsonFormatter())
    logger.info("login with %s job=j4 task=t4", TOKEN)
    try:
        raise RuntimeError(f"login refused for {TOKEN}")
    except RuntimeError:
        logger.exception("could not log in with %s", TOKEN)
    text = out.getvalue()
    assert TOKEN not in text
    first, second = entries(out)
    assert first["message"] == "login with *** job=j4 task=t4"
    assert first["job"] == "j4"
    assert second["message"] == "could not log in with ***"
    assert "RuntimeError: login refused for ***" in second["exception"]


def test_the_text_format_is_unchanged() -> None:
    logger, out = capture(make_formatter("text"))
    logger.info("submitted job=j5 task=t5 kind=%s", "imagine")
    line = out.getvalue().rstrip("\n")
    pattern = rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d INFO    {re.escape(logger.name)}: "
    assert re.fullmatch(pattern + r"submitted job=j5 task=t5 kind=imagine", line), line


# -- python -m bot's setup_logging ----------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import logging, os, warnings
    from bot.__main__ import setup_logging
    from bot.config import load_settings

    setup_logging(load_settings(os.environ))
    log = logging.getLogger("bot.jobs.tracker")
    log.info("submitted job=abc123 task=def456 kind=upscale")
    log.debug("not shown at INFO")
    logging.getLogger("discord.gateway").info("Shard ID None has connected to Gateway.")
    log.warning("calling with %s", os.environ["DISCORD_TOKEN"])
    try:
        raise RuntimeError("refused " + os.environ["DISCORD_TOKEN"])
    except RuntimeError:
        log.exception("failed job=abc123 task=-")
    warnings.warn("something deprecated", UserWarning)
    """
)


def run_setup_logging(**settings: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SETTING_NAMES}
    env.update({"DISCORD_TOKEN": TOKEN, "MJ_API_BASE_URL": "sandbox", **settings})
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_log_format_json_makes_setup_logging_write_json_lines() -> None:
    result = run_setup_logging(LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert TOKEN not in result.stderr
    lines = result.stderr.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line, the warning's too
    assert [(e["logger"], e["level"], e["job"], e["task"]) for e in parsed] == [
        ("bot.jobs.tracker", "INFO", "abc123", "def456"),
        ("discord.gateway", "INFO", None, None),
        ("bot.jobs.tracker", "WARNING", None, None),
        ("bot.jobs.tracker", "ERROR", "abc123", None),
        ("py.warnings", "WARNING", None, None),
    ]
    assert all(set(FIELDS) <= set(e) for e in parsed)
    assert parsed[2]["message"] == "calling with ***"
    assert "RuntimeError: refused ***" in parsed[3]["exception"]
    assert "something deprecated" in parsed[4]["message"]


def test_without_log_format_setup_logging_writes_text() -> None:
    result = run_setup_logging()
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.endswith("INFO    bot.jobs.tracker: submitted job=abc123 task=def456 kind=upscale")
    assert not first.startswith("{")


# -- the real bot: every line about a job names it ------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The bot's own loggers (bot.*, cogs.*) at INFO, written as JSON lines into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter((TOKEN,)))
    loggers = [logging.getLogger("bot"), logging.getLogger("cogs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


async def test_every_line_about_a_job_carries_its_ids(
    harness: Harness, json_log: io.StringIO
) -> None:
    double = harness.double
    alice = double.add_user("alice")
    async with harness.running() as app:
        grid = await imagine(double, alice, "a quiet harbour")
        await click(double, grid, 3, alice)
        await result_for(double, 3, alice)
        job = await app.services.tracker.store.live_twin("upscale", grid_task(grid), 2)
        assert job is not None
        reroll = await double.click(grid.id, reroll_custom_id(grid_task(grid)), alice)
        await reroll.wait_ack()
        await double.wait_for_message(lambda m: m.content.endswith("(re-roll)"))
        await app.services.tracker.wait_idle()
        done = await app.services.tracker.store.get(job.id)
        assert done is not None and done.state is JobState.DELIVERED

    logged = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert logged, "the bot logged nothing at INFO"
    about_jobs = [e for e in logged if "job=" in e["message"]]
    assert about_jobs and all(e["job"] for e in about_jobs)
    upscale = [e for e in logged if e["job"] == job.id]
    messages = " | ".join(e["message"] for e in upscale)
    assert "upscale requested" in messages and "delivered" in messages
    # Once the API has named the task, every line about the job carries its id too.
    named = [e for e in upscale if not e["message"].startswith("upscale requested")]
    assert named and all(e["task"] == job.upstream_task_id for e in named)
    # The re-roll's lines name its kind.
    rerolled = " | ".join(e["message"] for e in about_jobs if e["job"] != job.id)
    assert "reroll requested" in rerolled and "kind=reroll" in rerolled
    assert TOKEN not in json_log.getvalue()
