"""The store's tables and the job's states (SQLAlchemy Core, one schema for SQLite and
PostgreSQL). A change here is a new revision in bot/jobs/migrations/versions."""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa

from bot.jobs.categories import CATEGORIES


class JobState(StrEnum):
    REQUESTED = "requested"
    # Set just before the paid API call: a job found here after a crash may have been charged,
    # so it is never submitted again, only waited for (callback) until its deadline.
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    DELIVERED = "delivered"
    FAILED = "failed"


FINAL_STATES = (JobState.DELIVERED, JobState.FAILED)
LIVE_STATES = tuple(s for s in JobState if s is not JobState.FAILED)
UNFINISHED_STATES = tuple(s for s in JobState if s not in FINAL_STATES)

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
    sa.Column("result_urls", sa.Text, nullable=False, default="[]"),
    sa.Column("prompt", sa.Text),
    sa.Column("options", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("deadline_at", sa.Float, nullable=False),
    sa.Column("completed_at", sa.Float),
    sa.Column("delivered_at", sa.Float),
    sa.Column("dedupe_key", sa.String(100)),
)

# A job that must not have a twin while it lives (the same button's upscale, variation or
# re-roll) holds a key here, given back (NULL) when its kind's Dedupe stops holding: the
# database refuses a second holder, so dedupe holds across coroutines, processes and replicas.
sa.Index("uq_jobs_dedupe_key", jobs.c.dedupe_key, unique=True)
# Twins are looked up by these columns (JobStore.live_twin), which finds a row with no key too.
sa.Index("ix_jobs_parent_task_id", jobs.c.parent_task_id)
# The release before migrations kept dedupe with a partial unique index per kind. They stay
# while a process of that release may still share the database (a rolling deploy, a rollback):
# it stores no key, and these still refuse its twins and ours. A later revision drops them, once
# no such process can be running (docs/scaling.md).
_UNFINISHED = [state.value for state in UNFINISHED_STATES]
for _name, _columns, _where in (
    (
        "uq_live_upscale",
        (jobs.c.parent_task_id, jobs.c.image_index),
        sa.and_(jobs.c.kind == "upscale", jobs.c.state != JobState.FAILED.value),
    ),
    (
        "uq_running_vary",
        (jobs.c.parent_task_id, jobs.c.image_index),
        sa.and_(jobs.c.kind == "vary", jobs.c.state.in_(_UNFINISHED)),
    ),
    (
        "uq_running_reroll",
        (jobs.c.parent_task_id,),
        sa.and_(jobs.c.kind == "reroll", jobs.c.state.in_(_UNFINISHED)),
    ),
):
    sa.Index(_name, *_columns, unique=True, sqlite_where=_where, postgresql_where=_where)
sa.Index("ix_jobs_state", jobs.c.state)

# When each operator notice (the low-credit warning, …) was last sent, by whichever process: a
# notice limited to one an hour must stay so across restarts and replicas sharing the database.
notices = sa.Table(
    "notices",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("sent_at", sa.Float, nullable=False),
)

# What the bot learned about the vendor's API and every process must agree on (the index base of
# generateVary): the first process to learn a fact writes it, the others read it.
api_facts = sa.Table(
    "api_facts",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(64), nullable=False),
    sa.Column("learned_at", sa.Float, nullable=False),
)


# The vendor's pace shared by every process on one PostgreSQL store (bot.jobs.pace): a row per
# paid request awaiting its answer (answered_at NULL) or answered within the last window.
submit_turns = sa.Table(
    "submit_turns",
    metadata,
    sa.Column("id", sa.String(24), primary_key=True),
    sa.Column("granted_at", sa.Float, nullable=False),
    sa.Column("answered_at", sa.Float),
)


# Which process holds what, until when (PostgreSQL, several processes): an unfinished job (the
# name is its id: the holder submits, polls, waits out and posts it) or a Discord shard (named
# by bot.shards: the holder runs its gateway session). A lease not renewed (its process died or
# hangs) lets another process take over.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(32), nullable=False),
    sa.Column("until", sa.Float, nullable=False),
)


# The way back to a job's requester privately: their interaction's follow-up webhook, alive
# until ``until`` (15 minutes). Kept here so that whichever process finishes the job can tell
# them; the token is a credential for that long, so the row goes when the job ends.
follow_ups = sa.Table(
    "follow_ups",
    metadata,
    sa.Column("job_id", sa.String(24), primary_key=True),
    sa.Column("application_id", sa.BigInteger, nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("until", sa.Float, nullable=False),
)


# One row per request that counts against a daily allowance or the credit budget, written in
# the same transaction as its job; deleted when the job fails and its use is given back.
allowance_uses = sa.Table(
    "allowance_uses",
    metadata,
    sa.Column("job_id", sa.String(24), primary_key=True),
    sa.Column("guild_id", sa.BigInteger),
    sa.Column("requester_id", sa.BigInteger, nullable=False),
    sa.Column("category", sa.String(16), nullable=False),
    # What the budget reserves it at (bot.jobs.cost_keys): its kind's cost key.
    sa.Column("cost_key", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    # When the API was known to have taken it (it may have been charged by then); NULL before.
    sa.Column("paid_at", sa.Float),
)
sa.Index("ix_uses_requester", allowance_uses.c.requester_id, allowance_uses.c.at)
sa.Index("ix_uses_guild", allowance_uses.c.guild_id, allowance_uses.c.at)
sa.Index("ix_uses_at", allowance_uses.c.at)
sa.Index("ix_uses_paid", allowance_uses.c.paid_at)

# Limits admins set with /mj limit, per server and role or member: NULL is "not set here" (the
# next rule decides), UNLIMITED_ROW is "unlimited".
allowance_limits = sa.Table(
    "allowance_limits",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True),
    sa.Column("target_type", sa.String(8), primary_key=True),
    sa.Column("target_id", sa.BigInteger, primary_key=True),
    # A number per cost category: imagines, upscales, videos.
    *(sa.Column(c.limit_column, sa.Integer) for c in CATEGORIES),
    sa.Column("updated_at", sa.Float, nullable=False),
)
UNLIMITED_ROW = -1

# The credit budget's ledger, a row per day of QUOTA_TIMEZONE: credits spent as the readings
# of the credit endpoint show them (drops add up, top-ups do not count) and the last reading.
credit_days = sa.Table(
    "credit_days",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("spent", sa.Integer, nullable=False),
    sa.Column("last_credits", sa.Integer, nullable=False),
    sa.Column("read_at", sa.Float, nullable=False),
)

# What a job of each cost key (bot.jobs.cost_keys) was seen to cost, a row per day it was
# learnt on: a day without its own row for a key goes by the last day's, else the default.
credit_costs = sa.Table(
    "credit_costs",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("cost", sa.Integer, nullable=False),
)

# The owner's door, per Discord server: whether an owner allowed it (/mj server allow: true) or
# stopped it (/mj server deny: false; NULL: the settings decide), and the daily caps an owner
# set for it (NULL: the settings'; UNLIMITED_ROW: unlimited). Only owners write here.
servers = sa.Table(
    "servers",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("served", sa.Boolean),
    sa.Column("jobs", sa.Integer),
    sa.Column("credits", sa.Integer),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.BigInteger, nullable=False),
)
# What a server's admins set for it (bot/jobs/server_settings.py); no row: every setting off.
server_settings = sa.Table(
    "server_settings",
    metadata,
    sa.Column("guild_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("translate", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.BigInteger, nullable=False),
)
# One row per re-post of a grid (/upscale without an image: a record-info call and four
# downloads), for GRID_REPOSTS_PER_HOUR (bot.jobs.reposts); a row older than the hour is dead
# and goes at its member's next re-post.
grid_reposts = sa.Table(
    "grid_reposts",
    metadata,
    sa.Column("id", sa.String(24), primary_key=True),
    sa.Column("guild_id", sa.BigInteger),
    sa.Column("requester_id", sa.BigInteger, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)
sa.Index("ix_reposts_requester", grid_reposts.c.requester_id, grid_reposts.c.at)

# Images a member attached to /imagine, kept so the API can fetch them from the bot's listener
# (PUBLIC_URL/inputs/<token>.<ext>) for IMAGE_INPUT_DAYS, from any process: the token is the
# only key, and whoever holds the link may fetch the image (bot.jobs.image_inputs).
image_inputs = sa.Table(
    "image_inputs",
    metadata,
    sa.Column("token", sa.String(64), primary_key=True),
    sa.Column("guild_id", sa.BigInteger),
    sa.Column("requester_id", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(32), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
sa.Index("ix_image_inputs_expires_at", image_inputs.c.expires_at)
