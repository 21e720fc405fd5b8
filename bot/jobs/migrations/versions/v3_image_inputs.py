"""The images members attach to /imagine, served to the API from the bot's listener

Revision ID: image_inputs
Revises: dedupe_key

A new table only (``image_inputs``, bot/jobs/tables.py): an unguessable token, whose image it is,
its content type and bytes, and when it stops being served and is deleted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "image_inputs"
down_revision: str | None = "dedupe_key"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "image_inputs",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("guild_id", sa.BigInteger),
        sa.Column("requester_id", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_image_inputs_expires_at", "image_inputs", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_image_inputs_expires_at", table_name="image_inputs")
    op.drop_table("image_inputs")
