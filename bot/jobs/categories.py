"""Cost categories as data: what a job counts against (a daily allowance per member) and the
default cost its cost keys follow (bot.jobs.cost_keys: what the budget learns apart). Each
category names its stored value (``allowance_uses.category``), its ``/mj limit`` option, its
setting, and its column in ``allowance_limits``. The tables, the ledger, admission, allowances
and their words read them from here; a kind of job (bot.jobs.kinds) names the category it
counts against. A new category is one entry here, an Alembic revision for its column, a field
named as its option in Rules, Allowance and LimitRow and one named as its cost_column in Budget,
its setting in bot/config.py, and its option of /mj limit in cogs/admin.py (discord.py makes a
command's options from its function's signature)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostCategory:
    name: str
    # The /mj limit option and the allowance_limits column (the same word today).
    option: str
    # The environment setting of the daily number per member, and its default.
    setting: str
    default_daily: int
    # What one job is taken to cost before readings of the credit endpoint have shown it
    # (kie.ai's and midapi.ai's list prices are at or under these).
    default_cost: int
    # The name its default cost goes by among Budget's fields and the ledger's record_credits
    # keywords (once a credit_days column: costs are rows of credit_costs per cost key now).
    cost_column: str
    # How /mj usage and refusals name it, and what one job of it is called.
    plural: str
    one: str

    @property
    def limit_column(self) -> str:
        return self.option


GENERATION = CostCategory(
    name="generation",
    option="imagines",
    setting="DAILY_IMAGINES_PER_USER",
    default_daily=20,
    default_cost=8,
    cost_column="generation_cost",
    plural="generations",
    one="generation",
)
UPSCALE = CostCategory(
    name="upscale",
    option="upscales",
    setting="DAILY_UPSCALES_PER_USER",
    default_daily=40,
    default_cost=2,
    cost_column="upscale_cost",
    plural="upscales",
    one="upscale",
)
# 🎬 Animate and ⏩ Extend: one click is one use of the allowance, whatever the batch (its cost
# key tells a batch of 4 from one video). A default cost of 16 keeps an SD video at or over what
# the vendors list, as the other defaults do.
VIDEOS = CostCategory(
    name="video",
    option="videos",
    setting="DAILY_VIDEOS_PER_USER",
    default_daily=5,
    default_cost=16,
    cost_column="video_cost",
    plural="videos",
    one="video",
)
# In the order their columns, options and lines appear.
CATEGORIES: tuple[CostCategory, ...] = (GENERATION, UPSCALE, VIDEOS)


def category_named(name: str) -> CostCategory:
    for category in CATEGORIES:
        if category.name == name:
            return category
    raise KeyError(f"no cost category {name!r}")
