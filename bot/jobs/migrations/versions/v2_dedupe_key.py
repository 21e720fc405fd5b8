"""One generic dedupe column instead of a partial unique index per kind

Revision ID: dedupe_key
Revises: baseline

A job that must not have a twin while it lives holds a key in ``jobs.dedupe_key`` (its kind,
grid and image), and gives it back (NULL) when its kind says so; a plain UNIQUE index refuses a
second holder. Rows the old indexes covered get their key: a live upscale, an unfinished
variation or re-roll. The format is the kinds' `Dedupe.key` (bot/jobs/kinds/base.py), frozen here.
The old partial indexes stay: a process of the release before migrations may still run beside
this version (a rolling deploy, a rollback) and store jobs without a key, which only they refuse.
Twins are looked up by their columns, on the new ``ix_jobs_parent_task_id``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bot.jobs.migrations.baseline import UNFINISHED

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
    op.create_index("ix_jobs_parent_task_id", "jobs", ["parent_task_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_parent_task_id", table_name="jobs")
    op.drop_index("uq_jobs_dedupe_key", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dedupe_key")
