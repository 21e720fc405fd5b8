"""A job's twins in the store: the rows its kind's Dedupe says a new job must not have beside
it, the key it gives back on a move, and whether an insert was refused for one."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from bot.jobs.kinds import Per, all_kinds, kind_named
from bot.jobs.tables import JobState, jobs

# What a refused twin's IntegrityError names: the key's index, or one the release before
# migrations made (SQLite names the columns, PostgreSQL the index).
_TWIN_INDEXES = (
    "uq_jobs_dedupe_key",
    "jobs.dedupe_key",
    "uq_live_upscale",
    "uq_running_vary",
    "uq_running_reroll",
    "jobs.parent_task_id",
)


def twin_of(kind: str, parent_task_id: str, image_index: int | None) -> list[Any]:
    """The conditions of the job that makes a new ``kind`` job of that parent (and image) a
    duplicate: by its columns and its kind's Dedupe, so that a row a process of the release
    before migrations stored without a key is found too."""
    rule = kind_named(kind).dedupe
    if rule is None or (rule.per is Per.IMAGE and image_index is None):
        raise ValueError(f"{kind} jobs are not deduplicated")
    holding = [state.value for state in JobState if rule.holds(state)]
    conditions = [
        jobs.c.kind == kind,
        jobs.c.parent_task_id == parent_task_id,
        jobs.c.state.in_(holding),
    ]
    if rule.per is Per.IMAGE:
        conditions.append(jobs.c.image_index == image_index)
    return conditions


def key_after(to_state: JobState) -> bool | tuple[str, ...]:
    """Which jobs give their ``jobs.dedupe_key`` back on a move to ``to_state``: True, every
    job; False, none (the key is left as it is); else the jobs of those kinds."""
    if to_state is JobState.FAILED:
        # No rule holds a failed job, whatever its kind: also one no plug-in registers now.
        return True
    released = tuple(k.name for k in all_kinds() if k.dedupe and not k.dedupe.holds(to_state))
    return released or False


def twin_refused(exc: IntegrityError) -> bool:
    """Whether the insert was refused for a twin, not for another unique column."""
    said = str(exc.orig)
    return any(name in said for name in _TWIN_INDEXES)
