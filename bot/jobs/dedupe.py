"""Which jobs may not have a twin, and until when: the rule behind ``jobs.dedupe_key``.

A job of a kind listed here holds a key (its kind, grid and, per image, the image) from its
INSERT until it reaches one of its kind's releasing states, when the key becomes NULL; the
unique index on the column refuses a second job holding the same key (NULLs never collide).
An upscale keeps its key once delivered (an image is upscaled once); a variation or a re-roll
gives it back when it ends, so a new click makes another set. The format is also written by
the migration that introduced the column (bot/jobs/migrations/versions/v2_dedupe_key.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.jobs.tables import FINAL_STATES, JobKind, JobState


@dataclass(frozen=True)
class DedupeRule:
    # Whether the key names the image (one per image of a grid) or the grid alone.
    per_image: bool
    # The states in which the job no longer blocks a twin.
    released_by: frozenset[JobState]


RULES: dict[JobKind, DedupeRule] = {
    JobKind.UPSCALE: DedupeRule(per_image=True, released_by=frozenset({JobState.FAILED})),
    JobKind.VARY: DedupeRule(per_image=True, released_by=frozenset(FINAL_STATES)),
    JobKind.REROLL: DedupeRule(per_image=False, released_by=frozenset(FINAL_STATES)),
}


def dedupe_key(kind: JobKind, parent_task_id: str | None, image_index: int | None) -> str | None:
    """The key a new job holds; None for a kind without dedupe (or a job without its grid)."""
    rule = RULES.get(kind)
    if rule is None or parent_task_id is None:
        return None
    if not rule.per_image:
        return f"{kind.value}:{parent_task_id}"
    if image_index is None:
        return None
    return f"{kind.value}:{parent_task_id}:{image_index}"


def released_kinds(state: JobState) -> list[JobKind]:
    """The kinds whose jobs give their key back on reaching ``state``."""
    return [kind for kind, rule in RULES.items() if state in rule.released_by]
