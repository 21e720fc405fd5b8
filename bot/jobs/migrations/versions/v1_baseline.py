"""The schema of the last release before migrations

Revision ID: baseline
Revises:
"""

from __future__ import annotations

from alembic import op

from bot.jobs.migrations.baseline import schema

revision = "baseline"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    schema().create_all(op.get_bind())


def downgrade() -> None:
    schema().drop_all(op.get_bind())
