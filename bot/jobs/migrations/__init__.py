"""Versioned schema changes (Alembic): run by the store as it opens and by ``python -m bot db``.

The revisions are in ``versions/``; the configuration is built here, so the installed package
is all that is needed (no alembic.ini). An upgrade runs in one transaction of one connection,
on PostgreSQL under an advisory lock: processes started together take turns, and all but the
first find the schema at head. A database made by a release before migrations (its tables, no
``alembic_version``) is completed to the baseline and stamped with it first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.migrations import baseline

log = logging.getLogger(__name__)

BASELINE = "baseline"
# The advisory lock key under which the schema is made or upgraded. The admission locks use
# Discord ids, which stay below it until about 2074; meeting one would only make a start wait.
SCHEMA_LOCK = 0x6D6A_5343_4845_4D41


class SchemaAhead(Exception):
    """The database is at a revision this version does not know: a newer version migrated it
    (this one is a rollback). Nothing is changed; the newer version must run, or take it back."""

    def __init__(self, found: str) -> None:
        super().__init__(
            f"its schema is at revision {found}, newer than this version's {head()}: run the "
            "version that migrated it (or downgrade the schema with that version's Alembic)"
        )


def known(revision: str) -> bool:
    """Whether ``revision`` is one of this version's."""
    scripts = ScriptDirectory.from_config(config())
    return any(script.revision == revision for script in scripts.walk_revisions())


def config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration, made in code; ``connection`` is the one env.py migrates."""
    made = Config()
    made.set_main_option("script_location", str(Path(__file__).parent))
    made.attributes["connection"] = connection
    return made


def head() -> str:
    """The newest revision."""
    found = ScriptDirectory.from_config(config()).get_current_head()
    assert found is not None
    return found


def revision(conn: sa.Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(conn).get_current_revision()


def history() -> list[str]:
    """Every revision, oldest first: ``<id>: <what it does>`` (its docstring's first line)."""
    scripts = ScriptDirectory.from_config(config())
    return [f"{s.revision}: {s.doc}" for s in reversed(list(scripts.walk_revisions()))]


def upgrade_connection(conn: sa.Connection) -> None:
    """Bring the database ``conn`` is on to head, in ``conn``'s transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK)))
    tables = set(sa.inspect(conn).get_table_names())
    before = revision(conn)
    if before is not None and not known(before):
        raise SchemaAhead(before)
    made = config(conn)
    if before is None and "jobs" in tables:
        baseline.complete(conn)
        command.stamp(made, BASELINE)
        before = BASELINE
    command.upgrade(made, "head")
    after = revision(conn)
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "nothing", after)


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_connection)
