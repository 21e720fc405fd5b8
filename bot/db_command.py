"""``python -m bot db upgrade|current|history``: the database's schema, for operators.

It needs DATABASE_URL only (from the environment or the --env-file), not Discord's token. The
bot upgrades the schema itself as it starts; this is for looking first, or for upgrading
before the processes of a new version start. A database that cannot be opened or upgraded is
one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from bot.config import DEFAULT_DATABASE_URL
from bot.jobs import migrations
from bot.jobs.database import Database, StoreUnavailable
from bot.redaction import redact_url

ACTIONS = ("upgrade", "current", "history")


async def run_db(action: str, env: Mapping[str, str]) -> int:
    if action == "history":
        for line in migrations.history():
            print(line)
        return 0
    url = env.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if url.split("://", 1)[0].split("+", 1)[0].lower() not in ("sqlite", "postgresql", "postgres"):
        print(
            "configuration error: DATABASE_URL must be sqlite:///path/to/file.sqlite3 or "
            f"postgresql://user:pass@host/db, got {redact_url(url)!r}",
            file=sys.stderr,
        )
        return 2
    try:
        before = await _revision(await Database.open(url, migrate=False))
        if action == "current":
            print(_describe(before))
            return 0
        after = await _revision(await Database.open(url))
    except StoreUnavailable as exc:
        print(f"DATABASE_URL {redact_url(url)} cannot be opened: {exc}", file=sys.stderr)
        return 2
    print(
        f"upgraded from {before or 'nothing'} to {after}" if after != before else _describe(after)
    )
    return 0


async def _revision(database: Database) -> str | None:
    """The database's revision; the database is closed."""
    try:
        async with database.engine.connect() as conn:
            return await conn.run_sync(migrations.revision)
    finally:
        await database.close()


def _describe(revision: str | None) -> str:
    head = migrations.head()
    if revision == head:
        return f"{revision} (head)"
    if revision is None:
        return f"none (head is {head}): python -m bot db upgrade, or the bot's start, migrates it"
    if not migrations.known(revision):
        return f"{revision}, newer than this version (head is {head}): this version will not start"
    return f"{revision} (head is {head}): python -m bot db upgrade, or the bot's start, migrates it"
