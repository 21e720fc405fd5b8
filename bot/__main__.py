"""python -m bot: read the options and .env, set up logging, build and run the bot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import sys
import tomllib
from pathlib import Path

import aiohttp
import discord
from dotenv import load_dotenv

from bot.app import App
from bot.config import Settings, load_settings
from bot.db_command import ACTIONS, run_db
from bot.jobs.database import Database, StoreUnavailable
from bot.logs import JSON, make_formatter
from bot.redaction import RedactingFilter, redact_url
from bot.setting_parsers import SettingsError

log = logging.getLogger("bot")

DISTRIBUTION = "mj-upscale-bot"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SWITCH_INTERVAL = 0.001


def version() -> str:
    """The installed package's version; in a clone run without installing, pyproject's."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"]) + " (not installed)"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown (not installed)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description=(
            "Run the Midjourney upscale bot for Discord until stopped (SIGTERM or Ctrl-C). "
            f"Installed with pip, the same is the {DISTRIBUTION} command."
        ),
        epilog=(
            "Settings come from the environment and from a .env file (the environment wins); "
            "every one is described in README.md, section Settings, and in .env.example. "
            "A missing or malformed setting, or a database that cannot be opened, stops the "
            "bot with one line and exit code 2. To watch it work without a Discord application "
            "or an API key, run python -m examples.demo from a clone of its repository."
        ),
    )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        type=Path,
        help="read settings from this file instead of .env in the current folder",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    db = commands.add_parser(
        "db",
        help="the database's schema: db upgrade | db current | db history",
        description=(
            "The database's schema (its migrations), for operators: upgrade it to the newest "
            "revision (the bot does it too as it starts), show the revision it is at, or list "
            "every revision. Needs DATABASE_URL only, not a Discord token. A database that "
            "cannot be opened or upgraded is one line and exit code 2."
        ),
    )
    db.add_argument("action", choices=ACTIONS, help="upgrade, current or history")
    db.add_argument(
        "--env-file",
        metavar="PATH",
        type=Path,
        default=argparse.SUPPRESS,
        help="read DATABASE_URL from this file instead of .env in the current folder",
    )
    return parser.parse_args(argv)


def read_env_file(named: Path | None) -> str:
    """Load the .env file into the environment; where settings were read from, for a line that
    otherwise would not say why a setting is missing."""
    path = named if named is not None else Path.cwd() / ".env"
    if named is not None and not named.is_file():
        print(f"configuration error: --env-file {named}: no such file", file=sys.stderr)
        raise SystemExit(2)
    if not path.is_file():
        return f"no .env in {path.parent}: settings read from the environment only"
    load_dotenv(path)
    return f"settings read from the environment and {path}"


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    # LOG_FORMAT: text, or JSON lines with job and task ids as fields (bot.logs). The filter
    # runs before the formatter, so both formats are redacted.
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(RedactingFilter(settings.secrets))
    # With JSON lines, Python's warnings become log lines too rather than bare text.
    logging.captureWarnings(settings.log_format == JSON)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # discord.py's INFO lines are about its own gateway; keep them, but not its DEBUG noise,
    # nor its warning that voice libraries are missing (this bot has no voice).
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))
    # aiosqlite's DEBUG lines carry SQL parameters, callback secrets among them.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    # Alembic's INFO lines describe its context at every start; the store logs an upgrade.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("discord.client").addFilter(
        lambda record: "voice will NOT be supported" not in record.getMessage()
    )


async def run(settings: Settings, source: str) -> int:
    app = App(settings)
    loop = asyncio.get_running_loop()
    # The loop keeps only weak references to tasks: the shutdown must not be collected midway.
    stopping: list[asyncio.Task[None]] = []

    def stop(signame: str) -> None:
        log.info("%s received: stopping", signame)
        stopping.append(asyncio.ensure_future(app.close()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop, sig.name)
    # Before Discord: a database that cannot be opened is a setting to fix, told the same way
    # whether or not the token and the network work.
    try:
        await (await Database.open(settings.database_url)).close()
        log.info("%s", source)
        await app.start(settings.discord_token)
    except StoreUnavailable as exc:
        log.error("DATABASE_URL %s cannot be opened: %s", redact_url(settings.database_url), exc)
        return 2
    except discord.LoginFailure:
        log.error("Discord refused DISCORD_TOKEN: copy the bot token again from the portal")
        return 2
    except discord.PrivilegedIntentsRequired:
        log.error("Discord refused the gateway intents the bot asked for")
        return 2
    except aiohttp.ClientConnectorError as exc:
        log.error("cannot reach Discord (%s): check the network", exc.host)
        return 1
    except OSError as exc:
        log.error("cannot start the listener on %s:%s: %s", settings.host, settings.port, exc)
        return 2
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    source = read_env_file(args.env_file)
    if args.command == "db":
        raise SystemExit(asyncio.run(run_db(args.action, os.environ)))
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc} ({source})", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings)
    # The event loop shares the GIL with the threads that decode, re-encode and copy images
    # (bot.delivery.pool): each time it gives the GIL up for a system call it may wait a whole
    # switch interval to get it back. At the default 5 ms a burst of re-encodes stopped the loop
    # for up to 48 ms; at 1 ms for up to 25 ms (docs/performance.md section 8).
    sys.setswitchinterval(SWITCH_INTERVAL)
    raise SystemExit(asyncio.run(run(settings, source)))


if __name__ == "__main__":
    main()
