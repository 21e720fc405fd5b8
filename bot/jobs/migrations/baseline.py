"""The schema as the last release before migrations made it (``metadata.create_all`` of its
bot/jobs/tables.py): revision ``baseline`` creates it, and a database that release made is
completed to it before it is stamped. Frozen: a change to the models is a new revision, never an
edit here."""

from __future__ import annotations

import sqlalchemy as sa

UNFINISHED = ("requested", "submitting", "submitted", "succeeded")


def schema() -> sa.MetaData:
    metadata = sa.MetaData()
    jobs = sa.Table(
        "jobs",
        metadata,
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_task_id", sa.String(64)),
        sa.Column("image_index", sa.Integer),
        sa.Column("upstream_task_id", sa.String(64), index=True),
        sa.Column("requester_id", sa.BigInteger, nullable=False),
        sa.Column("guild_id", sa.BigInteger),
        sa.Column("channel_id", sa.BigInteger, nullable=False),
        sa.Column("grid_message_id", sa.BigInteger),
        sa.Column("status_message_id", sa.BigInteger),
        sa.Column("result_message_id", sa.BigInteger),
        sa.Column("callback_secret", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("result_urls", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("completed_at", sa.Float),
        sa.Column("delivered_at", sa.Float),
    )
    live_upscale = sa.and_(jobs.c.kind == "upscale", jobs.c.state != "failed")
    running_vary = sa.and_(jobs.c.kind == "vary", jobs.c.state.in_(UNFINISHED))
    running_reroll = sa.and_(jobs.c.kind == "reroll", jobs.c.state.in_(UNFINISHED))
    for name, columns, where in (
        ("uq_live_upscale", (jobs.c.parent_task_id, jobs.c.image_index), live_upscale),
        ("uq_running_vary", (jobs.c.parent_task_id, jobs.c.image_index), running_vary),
        ("uq_running_reroll", (jobs.c.parent_task_id,), running_reroll),
    ):
        sa.Index(name, *columns, unique=True, sqlite_where=where, postgresql_where=where)
    sa.Index("ix_jobs_state", jobs.c.state)
    sa.Table(
        "notices",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("sent_at", sa.Float, nullable=False),
    )
    sa.Table(
        "api_facts",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("learned_at", sa.Float, nullable=False),
    )
    sa.Table(
        "submit_turns",
        metadata,
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("granted_at", sa.Float, nullable=False),
        sa.Column("answered_at", sa.Float),
    )
    sa.Table(
        "leases",
        metadata,
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("until", sa.Float, nullable=False),
    )
    sa.Table(
        "follow_ups",
        metadata,
        sa.Column("job_id", sa.String(24), primary_key=True),
        sa.Column("application_id", sa.BigInteger, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("until", sa.Float, nullable=False),
    )
    uses = sa.Table(
        "allowance_uses",
        metadata,
        sa.Column("job_id", sa.String(24), primary_key=True),
        sa.Column("guild_id", sa.BigInteger),
        sa.Column("requester_id", sa.BigInteger, nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("paid_at", sa.Float),
    )
    sa.Index("ix_uses_requester", uses.c.requester_id, uses.c.at)
    sa.Index("ix_uses_guild", uses.c.guild_id, uses.c.at)
    sa.Index("ix_uses_at", uses.c.at)
    sa.Index("ix_uses_paid", uses.c.paid_at)
    sa.Table(
        "allowance_limits",
        metadata,
        sa.Column("guild_id", sa.BigInteger, primary_key=True),
        sa.Column("target_type", sa.String(8), primary_key=True),
        sa.Column("target_id", sa.BigInteger, primary_key=True),
        sa.Column("imagines", sa.Integer),
        sa.Column("upscales", sa.Integer),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    sa.Table(
        "credit_days",
        metadata,
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("spent", sa.Integer, nullable=False),
        sa.Column("last_credits", sa.Integer, nullable=False),
        sa.Column("read_at", sa.Float, nullable=False),
        sa.Column("generation_cost", sa.Integer, nullable=False),
        sa.Column("upscale_cost", sa.Integer, nullable=False),
    )
    sa.Table(
        "servers",
        metadata,
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("served", sa.Boolean),
        sa.Column("jobs", sa.Integer),
        sa.Column("credits", sa.Integer),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.BigInteger, nullable=False),
    )
    reposts = sa.Table(
        "grid_reposts",
        metadata,
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("guild_id", sa.BigInteger),
        sa.Column("requester_id", sa.BigInteger, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    sa.Index("ix_reposts_requester", reposts.c.requester_id, reposts.c.at)
    return metadata


def complete(conn: sa.Connection) -> None:
    """Add what a database made by a release before migrations lacks of the baseline: that
    release's start made any missing table (``create_all``) and index (``checkfirst``), so an
    older one may lack some (the notices, the dedupe of variations)."""
    metadata = schema()
    metadata.create_all(conn)
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
