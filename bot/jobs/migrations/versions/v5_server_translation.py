"""A server's own settings, written by its admins: whether prompts are translated

Revision ID: server_translation
Revises: cost_keys

A table of its own beside ``servers``, whose rows only the bot's owners write: ``server_settings``
holds what a server's admins decide for it (``/mj translation on|off``). No row: every setting
off, so existing servers need nothing filled in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "server_translation"
down_revision: str | None = "cost_keys"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "server_settings",
        sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("translate", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_settings")
