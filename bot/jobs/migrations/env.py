"""Alembic's environment. bot.jobs.migrations runs it with the sync side of the bot's async
connection in ``config.attributes["connection"]`` (``AsyncConnection.run_sync``), inside that
connection's transaction: there is no alembic.ini and no URL here."""

from __future__ import annotations

from alembic import context

from bot.jobs.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations through bot.jobs.migrations (python -m bot db)")
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters a table by copying it: autogenerate writes such changes as batches.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
