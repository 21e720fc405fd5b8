"""A job as the store gives it (``Job``), the way back to its requester (``FollowUp``), what
and the store's refusal of a twin (``DuplicateJob``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bot.jobs.tables import FINAL_STATES, JobState

# A job's option: the upload limit in bytes of the channel it was asked in, as its interaction
# told it (Discord's limit there may be above the guild's: a member's Nitro, a boost).
UPLOAD_LIMIT = "upload_limit"


@dataclass(frozen=True)
class FollowUp:
    """How to tell a job's requester something only they see: their interaction's follow-up
    webhook (the application id and the interaction token), alive until ``until`` (Unix
    seconds). The token is a credential while it lives: never in a log line, nor a repr."""

    application_id: int
    token: str = field(repr=False)
    until: float

    @property
    def alive(self) -> bool:
        return self.until > time.time()


@dataclass(frozen=True)
class Job:
    id: str
    # The name of its kind (bot.jobs.kinds.kind_named gives the kind).
    kind: str
    parent_task_id: str | None
    image_index: int | None
    upstream_task_id: str | None
    requester_id: int
    guild_id: int | None
    channel_id: int
    grid_message_id: int | None
    status_message_id: int | None
    result_message_id: int | None
    callback_secret: str = field(repr=False)
    state: JobState
    error: str | None
    result_urls: tuple[str, ...]
    prompt: str | None
    options: dict[str, str]
    created_at: float
    updated_at: float
    deadline_at: float
    completed_at: float | None
    delivered_at: float | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def label(self) -> str:
        """job and task ids for log lines."""
        return f"job={self.id} task={self.upstream_task_id or '-'}"

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Job:
        return cls.from_values(dict(row._mapping))

    @classmethod
    def from_values(cls, stored: Mapping[str, Any]) -> Job:
        """The job of a ``jobs`` row's values, as stored or about to be."""
        values = dict(stored)
        # The store's business alone (the kind's Dedupe).
        values.pop("dedupe_key", None)
        values["state"] = JobState(values["state"])
        values["result_urls"] = tuple(json.loads(values["result_urls"] or "[]"))
        values["options"] = json.loads(values["options"] or "{}")
        return cls(**values)


class DuplicateJob(Exception):
    """The same button's job is live already (an upscale) or still running (V<n>, 🔄)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"a live {job.kind} of that grid exists: {job.label}")
