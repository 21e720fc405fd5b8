"""The statements every job's path runs (on ``jobs``, and on its follow-up and its use of the
allowances), built once with their values bound: building a statement and its cache key costs
several times what SQLite takes to run it (docs/performance.md §8), and these run on every
click and callback. Their values are bound by name: a column's new value as ``new_<column>``
(``bound``)."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from bot.jobs.tables import JobState, allowance_uses, follow_ups, jobs


def bound(values: dict[str, Any]) -> dict[str, Any]:
    """Columns' values as the parameters these statements bind them by."""
    return {f"new_{name}": value for name, value in values.items()}


# A new job's row as a SELECT of bound values, for an INSERT … SELECT under the admission's
# condition (bot.jobs.admission).
NEW_ROW_COLUMNS = [column.name for column in jobs.c]
NEW_ROW = sa.select(*(sa.bindparam(f"new_{c.name}", type_=c.type) for c in jobs.c))


def _job_by(column: sa.Column[Any]) -> sa.Select[Any]:
    """One job by a unique column, its value bound as ``value``."""
    return jobs.select().where(column == sa.bindparam("value")).limit(1)


BY_ID = _job_by(jobs.c.id)
BY_SECRET = _job_by(jobs.c.callback_secret)
BY_UPSTREAM = _job_by(jobs.c.upstream_task_id)


def _use_of(place: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """Which buttons of a parent have a job that did not fail (``JobStore.grid_use``)."""
    return sa.select(jobs.c.kind, jobs.c.image_index).where(
        jobs.c.parent_task_id == sa.bindparam("parent"),
        place,
        jobs.c.kind.in_(sa.bindparam("kinds", expanding=True)),
        jobs.c.state != JobState.FAILED.value,
    )


USE_HERE = _use_of(jobs.c.guild_id == sa.bindparam("guild"))
# A job of no server is found by IS NULL: a bound NULL compared with = matches nothing.
USE_NOWHERE = _use_of(jobs.c.guild_id.is_(None))


def rewrite(
    job_id: str,
    values: dict[str, Any],
    from_states: tuple[JobState, ...] | None = None,
    released: tuple[str, ...] = (),
) -> tuple[sa.Update, dict[str, Any]]:
    """The UPDATE of a job's ``values`` (only from ``from_states``, if given; its dedupe key
    given back if its kind is among ``released``), returning the row as written so that no
    read follows, with its parameters."""
    params = bound(values)
    params["job_id"] = job_id
    if from_states is not None:
        params["from_states"] = [s.value for s in from_states]
    if released:
        params["released"] = list(released)
    return _update_of(tuple(sorted(values)), from_states is not None, bool(released)), params


@functools.lru_cache(maxsize=64)
def _update_of(names: tuple[str, ...], guarded: bool, releasing: bool) -> sa.Update:
    # One statement per set of columns the callers change (a handful).
    where = [jobs.c.id == sa.bindparam("job_id")]
    if guarded:
        where.append(jobs.c.state.in_(sa.bindparam("from_states", expanding=True)))
    changes: dict[str, Any] = {name: sa.bindparam(f"new_{name}") for name in names}
    if releasing:
        # The job stops blocking a twin (its kind's Dedupe): its key is given back.
        released = jobs.c.kind.in_(sa.bindparam("released", expanding=True))
        changes["dedupe_key"] = sa.case((released, sa.null()), else_=jobs.c.dedupe_key)
    return jobs.update().where(*where).values(changes).returning(*jobs.c)


# A job's follow-up and its use of the allowances, by the job's id bound as ``of_job`` (an
# UPDATE may not bind a column's own name); the inserts take their rows' columns as parameters.
NEW_FOLLOW_UP = follow_ups.insert()
NEW_USE = allowance_uses.insert()
FOLLOW_UP_GONE = follow_ups.delete().where(follow_ups.c.job_id == sa.bindparam("of_job"))
USE_GIVEN_BACK = allowance_uses.delete().where(allowance_uses.c.job_id == sa.bindparam("of_job"))
# Stamped once: the first moment the API was known to have taken the job (``taken_at``).
USE_PAID = (
    allowance_uses.update()
    .where(allowance_uses.c.job_id == sa.bindparam("of_job"), allowance_uses.c.paid_at.is_(None))
    .values(paid_at=sa.bindparam("taken_at"))
)
