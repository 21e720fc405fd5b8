"""Costs learnt per cost key, apart from the allowance categories

Revision ID: cost_keys
Revises: image_inputs

What a job was seen to cost moves from a column per category of ``credit_days``
(``generation_cost``, ``upscale_cost``) to a row per (day, key) of ``credit_costs``, so that a
new key (an omni-reference generation, a video) is learnt without a column of its own; each
day's costs are carried over as the rows of the keys named as those categories. Each request
counted in ``allowance_uses`` gains the key it is reserved at (``cost_key``): until now that was
its category.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cost_keys"
down_revision: str | None = "image_inputs"
branch_labels: str | None = None
depends_on: str | None = None

# The categories' columns and their keys (bot.jobs.cost_keys), frozen here, with the costs
# taken before any reading, for a day a downgrade finds no cost of.
OLD_COLUMNS = (("generation_cost", "generation", 8), ("upscale_cost", "upscale", 2))

credit_days = sa.table(
    "credit_days",
    sa.column("day", sa.String),
    *(sa.column(column, sa.Integer) for column, _, _ in OLD_COLUMNS),
)
credit_costs = sa.table(
    "credit_costs", sa.column("day", sa.String), sa.column("key", sa.String), sa.column("cost")
)
allowance_uses = sa.table(
    "allowance_uses", sa.column("category", sa.String), sa.column("cost_key", sa.String)
)


def upgrade() -> None:
    op.create_table(
        "credit_costs",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("cost", sa.Integer, nullable=False),
    )
    for column, key, _ in OLD_COLUMNS:
        op.execute(
            credit_costs.insert().from_select(
                ["day", "key", "cost"],
                sa.select(credit_days.c.day, sa.literal(key), credit_days.c[column]),
            )
        )
    with op.batch_alter_table("credit_days") as batch:
        for column, _, _ in OLD_COLUMNS:
            batch.drop_column(column)
    op.add_column("allowance_uses", sa.Column("cost_key", sa.String(32)))
    op.execute(allowance_uses.update().values(cost_key=allowance_uses.c.category))
    with op.batch_alter_table("allowance_uses") as batch:
        batch.alter_column("cost_key", existing_type=sa.String(32), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("allowance_uses") as batch:
        batch.drop_column("cost_key")
    for column, key, default in OLD_COLUMNS:
        op.add_column("credit_days", sa.Column(column, sa.Integer))
        # The day's own cost, else the last one learnt before it.
        last = (
            sa.select(credit_costs.c.cost)
            .where(credit_costs.c.key == key, credit_costs.c.day <= credit_days.c.day)
            .order_by(credit_costs.c.day.desc())
            .limit(1)
            .scalar_subquery()
        )
        op.execute(credit_days.update().values({column: sa.func.coalesce(last, default)}))
        with op.batch_alter_table("credit_days") as batch:
            batch.alter_column(column, existing_type=sa.Integer, nullable=False)
    op.drop_table("credit_costs")
