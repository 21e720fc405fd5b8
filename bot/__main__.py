"""python -m bot: load .env, set up logging, build and run the bot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import aiohttp
import discord
from dotenv import load_dotenv

from bot.app import App
from bot.config import RedactingFilter, Settings, SettingsError, load_settings
from bot.logs import JSON, make_formatter

log = logging.getLogger("bot")


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
    logging.getLogger("discord.client").addFilter(
        lambda record: "voice will NOT be supported" not in record.getMessage()
    )


async def run(settings: Settings) -> int:
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
    try:
        await app.start(settings.discord_token)
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


def main() -> None:
    load_dotenv(os.path.join(os.getcwd(), ".env"))
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings)
    raise SystemExit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
