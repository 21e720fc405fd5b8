"""A videos allowance: allowance_limits gains the videos column

Revision ID: videos_allowance
Revises: server_translation

The cost category of 🎬 Animate and ⏩ Extend (``videos``, bot.jobs.categories) has its /mj limit
number per role or member in a column of its own, as generations and upscales have. NULL is
"not set here": every row already made leaves videos to the member's other roles or the
settings, as a new row without it would.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "videos_allowance"
down_revision: str | None = "server_translation"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("allowance_limits", sa.Column("videos", sa.Integer))


def downgrade() -> None:
    # SQLite drops a column by copying the table: batch mode does that there.
    with op.batch_alter_table("allowance_limits") as batch:
        batch.drop_column("videos")
