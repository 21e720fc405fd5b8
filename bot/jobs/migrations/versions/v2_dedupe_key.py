"""One generic dedupe column instead of a partial unique index per kind

Revision ID: dedupe_key
Revises: baseline

A job that must not have a twin while it lives holds a key in ``jobs.dedupe_key`` (its kind,
grid and image), and gives it back (NULL) when its kind says so; a plain UNIQUE index refuses a
second holder. Rows the old indexes covered get their key: a live upscale, an unfinished
variation or re-roll. The format is the kinds' `Dedupe.key` (bot/jobs/kinds/base.py), frozen here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bot.jobs.migrations.baseline import UNFINISHED, schema

revision = "dedupe_key"
down_revision: str | None = "baseline"
branch_labels: str | None = None
depends_on: str | None = None

jobs = sa.table(
    "jobs",
    sa.column("kind", sa.String),
    sa.column("state", sa.String),
    sa.column("parent_task_id", sa.String),
    sa.column("image_index", sa.Integer),
    sa.column("dedupe_key", sa.String),
)
OLD_INDEXES = ("uq_live_upscale", "uq_running_vary", "uq_running_reroll")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("dedupe_key", sa.String(100)))
    parent = jobs.c.parent_task_id
    per_image = sa.literal(":") + parent + ":" + sa.cast(jobs.c.image_index, sa.String)
    known = (parent.is_not(None), jobs.c.image_index.is_not(None))
    op.execute(
        jobs.update()
        .where(jobs.c.kind == "upscale", jobs.c.state != "failed", *known)
        .values(dedupe_key=sa.literal("upscale") + per_image)
    )
    op.execute(
        jobs.update()
        .where(jobs.c.kind == "vary", jobs.c.state.in_(UNFINISHED), *known)
        .values(dedupe_key=sa.literal("vary") + per_image)
    )
    op.execute(
        jobs.update()
        .where(jobs.c.kind == "reroll", jobs.c.state.in_(UNFINISHED), parent.is_not(None))
        .values(dedupe_key=sa.literal("reroll:") + parent)
    )
    op.create_index("uq_jobs_dedupe_key", "jobs", ["dedupe_key"], unique=True)
    for name in OLD_INDEXES:
        op.drop_index(name, table_name="jobs")


def downgrade() -> None:
    for index in schema().tables["jobs"].indexes:
        if index.name in OLD_INDEXES:
            index.create(op.get_bind())
    op.drop_index("uq_jobs_dedupe_key", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dedupe_key")
