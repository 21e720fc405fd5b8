"""Where jobs live: atomic state transitions, dedupe enforced by a unique index, daily uses
counted in the step that stores a job (bot.jobs.admission). The tables are in bot.jobs.tables,
the engines in bot.jobs.database; counts are bot.jobs.stats', and what processes agree on
beside the jobs (leases, notices, API facts) bot.jobs.coordination's.

SQLAlchemy Core keeps SQLite (the default) and PostgreSQL (several replicas) on one code path.
Every state change is a conditional UPDATE (``WHERE state IN (...)``), so two processes or two
coroutines racing for the same job cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs.admission import (
    OverQuota,
    Quota,
    TooManyJobs,
    admission,
    admitted_insert,
    lock_keys,
    refusal,
    sums_the_day,
)
from bot.jobs.coordination import lease_row
from bot.jobs.database import SQLITE_BUSY_SECONDS, Database
from bot.jobs.job import DuplicateJob as DuplicateJob
from bot.jobs.job import FollowUp as FollowUp
from bot.jobs.job import Job as Job
from bot.jobs.kinds import button_kinds, kind_named
from bot.jobs.kinds.use import ParentUse
from bot.jobs.ledger import Ledger
from bot.jobs.statements import (
    BY_ID,
    BY_SECRET,
    BY_UPSTREAM,
    FOLLOW_UP_GONE,
    NEW_FOLLOW_UP,
    NEW_USE,
    USE_GIVEN_BACK,
    USE_HERE,
    USE_NOWHERE,
    USE_PAID,
    bound,
    rewrite,
)
from bot.jobs.tables import (
    FINAL_STATES,
    UNFINISHED_STATES,
    allowance_uses,
    follow_ups,
    jobs,
    leases,
)
from bot.jobs.tables import JobState as JobState
from bot.jobs.twins import key_after, twin_of, twin_refused

# Pooled connections a process's counted inserts may hold at once (the pool has 15): under the
# budget's lock they run one at a time anyway.
ADMITTING_CONNECTIONS = 3


class JobStore:
    def __init__(self, database: Database) -> None:
        self._database = database
        self.ledger = Ledger(database)
        # Counted inserts take turns under advisory locks (every one of them under the budget's
        # when there is one), each waiting on a pooled connection: a storm of them would leave
        # none for the writes that must not wait (a paid task's id). They queue here instead.
        self._admitting = asyncio.Semaphore(ADMITTING_CONNECTIONS)

    @property
    def database(self) -> Database:
        return self._database

    @property
    def engine(self) -> AsyncEngine:
        return self._database.engine

    @property
    def shared(self) -> bool:
        """Whether several processes may share this store (PostgreSQL; SQLite is one's own)."""
        return self._database.shared

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        sqlite_busy_seconds: float = SQLITE_BUSY_SECONDS,
        migrate: bool = True,
    ) -> JobStore:
        """A store on a database of its own (Database.open), closed with it."""
        database = await Database.open(
            database_url, sqlite_busy_seconds=sqlite_busy_seconds, migrate=migrate
        )
        return cls(database)

    async def close(self) -> None:
        """Close the store's database (the one ``open`` made, or the one it was given)."""
        await self._database.close()

    async def ping(self) -> None:
        await self._database.ping()

    async def create(
        self,
        *,
        kind: str,
        requester_id: int,
        guild_id: int | None,
        channel_id: int,
        deadline_seconds: float,
        parent_task_id: str | None = None,
        image_index: int | None = None,
        grid_message_id: int | None = None,
        status_message_id: int | None = None,
        prompt: str | None = None,
        options: dict[str, str] | None = None,
        max_unfinished: int | None = None,
        quota: Quota | None = None,
        callback_secret: str | None = None,
        lease: tuple[str, float] | None = None,
        follow_up: FollowUp | None = None,
    ) -> Job:
        """Insert a job in state ``requested``, with a random callback secret unless given.

        A second live upscale of the same image, or a second running variation of it (re-roll
        of the grid), raises DuplicateJob; with
        ``max_unfinished``, a requester who has that many unfinished jobs gets TooManyJobs; with
        ``quota``, a job that would pass a daily limit gets OverQuota, and one that is stored
        counts against it in the same transaction.
        """
        now = time.time()
        job_id = secrets.token_hex(12)
        values = {
            "id": job_id,
            "kind": str(kind),
            "parent_task_id": parent_task_id,
            "image_index": image_index,
            "upstream_task_id": None,
            "requester_id": requester_id,
            "guild_id": guild_id,
            "channel_id": channel_id,
            "grid_message_id": grid_message_id,
            "status_message_id": status_message_id,
            "result_message_id": None,
            "callback_secret": callback_secret or secrets.token_urlsafe(24),
            "state": JobState.REQUESTED.value,
            "error": None,
            "result_urls": "[]",
            "prompt": prompt,
            "options": json.dumps(options or {}),
            "created_at": now,
            "updated_at": now,
            "deadline_at": now + deadline_seconds,
            "completed_at": None,
            "delivered_at": None,
            "dedupe_key": kind_named(kind).twin_key(parent_task_id, image_index),
        }
        if quota is not None:
            quota = replace(quota, cost_key=kind_named(kind).cost_key(Job.from_values(values)))
        admitted = admission(values, max_unfinished, quota)
        insert: sa.Insert = jobs.insert()
        params = values
        if admitted is not None:
            insert = admitted_insert(admitted.shape)
            params = {**bound(values), **admitted.params}
        gate: contextlib.AbstractAsyncContextManager[Any] = (
            self._admitting if admitted is not None else contextlib.nullcontext()
        )

        def store(conn: sa.Connection) -> None:
            if admitted is not None and conn.dialect.name == "postgresql":
                # Under READ COMMITTED two inserts would each miss the other's row in their
                # counts; a lock per thing counted makes them take turns, taken in one order so
                # that two requests never wait on each other. (SQLite runs one writer at a time
                # already.)
                for key in lock_keys(requester_id, guild_id, quota):
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            if conn.execute(insert, params).rowcount != 1:
                refused = refusal(conn, values, max_unfinished, quota)
                raise refused or RuntimeError("the insert was refused by no limit")
            if lease is not None:
                # Leased in the same step: no other process ever sees it as nobody's.
                owner, ttl = lease
                conn.execute(lease_row(job_id, owner, self._database.clock() + ttl))
            if follow_up is not None:
                conn.execute(
                    NEW_FOLLOW_UP,
                    {
                        "job_id": job_id,
                        "application_id": follow_up.application_id,
                        "token": follow_up.token,
                        "until": follow_up.until,
                    },
                )
            if quota is not None:
                conn.execute(
                    NEW_USE,
                    {
                        "job_id": job_id,
                        "guild_id": guild_id,
                        "requester_id": requester_id,
                        "category": quota.category,
                        "cost_key": quota.key,
                        "at": now,
                    },
                )

        for _ in range(5):
            try:
                async with gate:
                    await self._database.write(store, long=sums_the_day(quota))
                # Every column was given: the row is these values, with nothing to read back.
                return Job.from_values(values)
            except IntegrityError as exc:
                if values["dedupe_key"] is None or not twin_refused(exc):
                    raise
                existing = await self.live_twin(kind, parent_task_id or "", image_index)
                if existing is not None:
                    raise DuplicateJob(existing) from None
                # The live one finished between our insert and the look-up: try again.
        raise RuntimeError("could not insert the job after repeated conflicts")

    async def refusal(
        self,
        *,
        requester_id: int,
        guild_id: int | None,
        max_unfinished: int | None,
        quota: Quota | None,
    ) -> TooManyJobs | OverQuota | None:
        """What ``create`` would refuse a job with for its limits right now (TooManyJobs,
        OverQuota), or None: a preview only, since other requests may come in between."""
        values = {"requester_id": requester_id, "guild_id": guild_id}
        return await self._database.read(
            lambda conn: refusal(conn, values, max_unfinished, quota), long=sums_the_day(quota)
        )

    async def get(self, job_id: str) -> Job | None:
        return await self._first(BY_ID, job_id)

    async def by_secret(self, secret: str) -> Job | None:
        return await self._first(BY_SECRET, secret)

    async def by_upstream(self, task_id: str) -> Job | None:
        return await self._first(BY_UPSTREAM, task_id)

    async def live_twin(
        self, kind: str, parent_task_id: str, image_index: int | None
    ) -> Job | None:
        """The job that makes a new ``kind`` job of that parent (and image) a duplicate."""
        return await self._one(*twin_of(kind, parent_task_id, image_index))

    async def grid_use(self, parent_task_id: str, guild_id: int | None) -> ParentUse:
        """Which buttons of a parent (a grid, an image) have a job in this server that did not
        fail (another server's jobs of a parent made outside the bot are not this server's to
        see)."""
        per_image = {k.name: k.button.per_image for k in button_kinds() if k.button is not None}
        query = USE_HERE if guild_id is not None else USE_NOWHERE
        params = {"parent": parent_task_id, "guild": guild_id, "kinds": list(per_image)}
        rows = await self._database.read(lambda conn: conn.execute(query, params).fetchall())
        return ParentUse(
            frozenset(
                (kind, int(index) if per_image[kind] and index is not None else None)
                for kind, index in rows
            )
        )

    async def unfinished(self, ids: Collection[str] | None = None) -> list[Job]:
        """Jobs neither delivered nor failed, oldest first; with ``ids``, only those."""
        query = (
            jobs.select()
            .where(jobs.c.state.in_([s.value for s in UNFINISHED_STATES]))
            .order_by(jobs.c.created_at)
        )
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        return await self._jobs(query)

    async def unfinished_keys(self, ids: Collection[str] | None = None) -> list[tuple[str, str]]:
        """(id, callback secret) of the jobs ``unfinished`` would give: enough to tell which
        need a look, without reading and building every row (the sweep's query)."""
        query = sa.select(jobs.c.id, jobs.c.callback_secret).where(
            jobs.c.state.in_([s.value for s in UNFINISHED_STATES])
        )
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        rows = await self._database.read(
            lambda conn: conn.execute(query.order_by(jobs.c.created_at)).fetchall()
        )
        return [(str(job_id), str(secret)) for job_id, secret in rows]

    async def transition(
        self,
        job_id: str,
        from_states: tuple[JobState, ...],
        to_state: JobState,
        *,
        give_back: bool = False,
        paid: bool = False,
        **fields: Any,
    ) -> Job | None:
        """Move the job to ``to_state`` if it is in one of ``from_states``; None if it was not.

        ``give_back`` returns the job's use of the daily allowances in the same step; ``paid``
        notes when the API took it (for the credit budget's reckoning).
        """
        values = _encode(fields)
        values["state"] = to_state.value
        values["updated_at"] = time.time()
        given_back = key_after(to_state)
        if given_back is True:
            values["dedupe_key"] = None
        released = given_back if isinstance(given_back, tuple) else ()
        query, params = rewrite(job_id, values, from_states, released)
        paid_at = values["updated_at"]

        def move(conn: sa.Connection) -> Job | None:
            row = conn.execute(query, params).first()
            if row is None:
                return None
            if give_back:
                conn.execute(USE_GIVEN_BACK, {"of_job": job_id})
            elif paid:
                conn.execute(USE_PAID, {"of_job": job_id, "taken_at": paid_at})
            if to_state in FINAL_STATES:
                conn.execute(FOLLOW_UP_GONE, {"of_job": job_id})
            return Job.from_row(row)

        return await self._database.write(move)

    async def taken_at(self, job_id: str) -> float | None:
        """When the API was known to have taken the job's paid request (its use's ``paid_at``);
        None before, or for a job that counts against nothing."""
        query = sa.select(allowance_uses.c.paid_at).where(allowance_uses.c.job_id == job_id)
        taken = await self._database.read(lambda conn: conn.execute(query).scalar_one_or_none())
        return None if taken is None else float(taken)

    async def update(self, job_id: str, **fields: Any) -> Job:
        """Change fields that are not the state (message ids, for instance)."""
        values = _encode(fields)
        values["updated_at"] = time.time()
        query, params = rewrite(job_id, values)
        row = await self._database.write(lambda conn: conn.execute(query, params).first())
        if row is None:
            raise LookupError(f"job {job_id} vanished")
        return Job.from_row(row)

    async def follow_up(self, job_id: str) -> FollowUp | None:
        """The job's way back to its requester, while it lives (the job is unfinished)."""
        query = sa.select(follow_ups).where(
            follow_ups.c.job_id == job_id, follow_ups.c.until > time.time()
        )
        row = await self._database.read(lambda conn: conn.execute(query).first())
        return None if row is None else FollowUp(row.application_id, row.token, row.until)

    async def sweep_follow_ups(self) -> int:
        """Delete the follow-ups whose interaction has expired (a job that outlived its
        click's 15 minutes keeps a dead token otherwise); how many."""
        query = follow_ups.delete().where(follow_ups.c.until <= time.time())
        return await self._database.write(lambda conn: conn.execute(query).rowcount)

    async def orphans(self) -> list[Job]:
        """Unfinished jobs no process holds a live lease on, oldest first."""
        query = (
            jobs.select()
            .select_from(jobs.outerjoin(leases, leases.c.name == jobs.c.id))
            .where(
                jobs.c.state.in_([s.value for s in UNFINISHED_STATES]),
                sa.or_(leases.c.name.is_(None), leases.c.until < self._database.clock()),
            )
            .order_by(jobs.c.created_at)
        )
        return await self._jobs(query)

    async def _one(self, *conditions: sa.ColumnElement[bool]) -> Job | None:
        found = await self._jobs(jobs.select().where(*conditions).limit(1))
        return found[0] if found else None

    async def _first(self, query: sa.Select[Any], value: str) -> Job | None:
        found = await self._jobs(query, {"value": value})
        return found[0] if found else None

    async def _jobs(self, query: sa.Select[Any], params: dict[str, Any] | None = None) -> list[Job]:
        # All rows fetched before any is built: a row that fails to build must not leave the
        # statement open, holding the connection's snapshot of the file.
        rows = await self._database.read(lambda conn: conn.execute(query, params).all())
        return [Job.from_row(row) for row in rows]


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    values = dict(fields)
    if "result_urls" in values:
        values["result_urls"] = json.dumps(list(values["result_urls"]))
    if "options" in values:
        values["options"] = json.dumps(values["options"])
    if "state" in values:
        raise ValueError("change the state through transition()")
    return values
